-- Writes the batch's touched orders in one statement.
INSERT INTO customer_stats_orders (order_id, customer, status, line_totals, total_cents)
SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::bigint[])
ON CONFLICT (order_id) DO UPDATE SET
    customer    = EXCLUDED.customer,
    status      = EXCLUDED.status,
    line_totals = EXCLUDED.line_totals,
    total_cents = EXCLUDED.total_cents
