-- The current version of one stream (0 when it has no events).
SELECT COALESCE(MAX(version), 0) AS version
FROM eventsource.events
WHERE category = $1 AND stream_id = $2
