-- A projection's checkpoint, locked for the rest of the transaction (runners and dead-letter
-- replays of one projection serialize on this row).
SELECT transaction_id::text AS transaction_id, position
FROM eventsource.checkpoints
WHERE name = $1
FOR UPDATE
