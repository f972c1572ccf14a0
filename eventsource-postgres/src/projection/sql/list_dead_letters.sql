-- A projection's parked events that were not replayed yet, oldest first (in feed order).
-- Positions come from the events themselves, which stay right after a restore repair
-- re-stamps them (the copies kept when the event was parked do not).
SELECT d.id, d.event_id, e.transaction_id::text AS transaction_id, e.position, d.category,
       d.stream_id, d.version, d.event_type, d.error, d.attempts, d.parked_at
FROM eventsource.dead_letters d
JOIN eventsource.events e ON e.event_id = d.event_id
WHERE d.projection = $1 AND d.replayed_at IS NULL
ORDER BY e.transaction_id, e.position
