-- Writes the batch's touched orders in one statement: one array per column, one row per order.
INSERT INTO order_summary (order_id, customer, status, item_count, total_cents, lines, version, updated_at)
SELECT *
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::jsonb[], $7::bigint[],
            $8::timestamptz[])
ON CONFLICT (order_id) DO UPDATE SET
    customer    = EXCLUDED.customer,
    status      = EXCLUDED.status,
    item_count  = EXCLUDED.item_count,
    total_cents = EXCLUDED.total_cents,
    lines       = EXCLUDED.lines,
    version     = EXCLUDED.version,
    updated_at  = EXCLUDED.updated_at
