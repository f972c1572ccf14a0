-- A relay's checkpoint (no row before its first batch: it starts at the beginning of the feed).
SELECT transaction_id::text AS transaction_id, position
FROM eventsource.checkpoints
WHERE name = $1
