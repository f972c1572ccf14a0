-- The events of one stream caused by one command (metadata causation id $3, as text), in
-- version order. Found through events_causation_idx, so it costs the same however long the
-- stream is.
SELECT position, transaction_id, event_id, category, stream_id, version,
       event_type, schema_version, payload, metadata, recorded_at
FROM eventsource.events
WHERE (metadata ->> 'causation_id') = $3 AND category = $1 AND stream_id = $2
ORDER BY version
