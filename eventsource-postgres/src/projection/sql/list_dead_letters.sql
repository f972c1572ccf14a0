-- A projection's parked events that were not replayed yet, oldest first (in feed order).
SELECT d.id, d.event_id, d.transaction_id::text AS transaction_id, d.position, d.category,
       d.stream_id, d.version, d.event_type, d.error, d.attempts, d.parked_at
FROM eventsource.dead_letters d
WHERE d.projection = $1 AND d.replayed_at IS NULL
ORDER BY d.transaction_id, d.position
