-- Points the transaction's search_path at $2 (for the projection's unqualified table names) and
-- reads checkpoint $1, locked for the rest of the transaction: one round trip per batch.
SELECT set_config('search_path', $2, true) AS search_path,
       (SELECT transaction_id::text FROM eventsource.checkpoints WHERE name = $1 FOR UPDATE)
           AS transaction_id,
       (SELECT position FROM eventsource.checkpoints WHERE name = $1 FOR UPDATE) AS position
