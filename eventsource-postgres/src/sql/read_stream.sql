-- A stream in version order, from version $3 on. The rows are decoded as they arrive, so
-- memory stays bounded however long the stream is.
SELECT position, transaction_id, event_id, category, stream_id, version,
       event_type, schema_version, payload, metadata, recorded_at
FROM eventsource.events
WHERE category = $1 AND stream_id = $2 AND version >= $3
ORDER BY version
