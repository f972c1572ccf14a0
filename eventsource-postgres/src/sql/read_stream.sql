-- One page of a stream, in version order, from version $3 on, at most $4 events.
SELECT position, transaction_id, event_id, category, stream_id, version,
       event_type, schema_version, payload, metadata, recorded_at
FROM eventsource.events
WHERE category = $1 AND stream_id = $2 AND version >= $3
ORDER BY version
LIMIT $4
