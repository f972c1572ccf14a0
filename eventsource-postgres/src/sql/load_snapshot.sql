-- The snapshot kept for one stream. $1 category, $2 stream id.
SELECT version, state_version, state
FROM eventsource.snapshots
WHERE category = $1 AND stream_id = $2
