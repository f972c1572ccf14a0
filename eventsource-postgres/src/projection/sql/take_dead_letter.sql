-- One parked event with its stored event, locked for its replay.
SELECT d.id, e.position, e.transaction_id::text AS transaction_id, e.event_id, e.category,
       e.stream_id, e.version, e.event_type, e.schema_version, e.payload, e.metadata, e.recorded_at
FROM eventsource.dead_letters d
JOIN eventsource.events e ON e.event_id = d.event_id
WHERE d.id = $1 AND d.projection = $2 AND d.replayed_at IS NULL
FOR UPDATE OF d
