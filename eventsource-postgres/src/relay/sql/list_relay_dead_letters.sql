-- A relay's parked messages, oldest first.
SELECT id, event_id, transaction_id::text AS transaction_id, position, category, stream_id, version,
       event_type, destination, error, parked_at
FROM eventsource.relay_dead_letters
WHERE relay = $1
ORDER BY id
