-- The newest committed event's feed position.
SELECT transaction_id::text AS transaction_id, position
FROM eventsource.events
ORDER BY transaction_id DESC, position DESC
LIMIT 1
