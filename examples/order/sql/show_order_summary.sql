-- What a reader of order_summary sees for orders $1, oldest change first.
SELECT order_id, customer, status, item_count, total_cents, version, updated_at
FROM order_summary
WHERE order_id = ANY($1::text[])
ORDER BY updated_at, order_id
