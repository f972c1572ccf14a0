-- The summaries of orders $1, as the projection folds them.
SELECT order_id, customer, status, lines, version, updated_at
FROM order_summary
WHERE order_id = ANY($1::text[])
