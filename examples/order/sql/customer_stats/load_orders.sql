-- The per-order state of orders $1.
SELECT order_id, customer, status, line_totals
FROM customer_stats_orders
WHERE order_id = ANY($1::text[])
