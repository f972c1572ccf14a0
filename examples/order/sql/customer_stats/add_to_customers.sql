-- Adds the batch's changes to the customers' figures (a new customer starts from them), one
-- statement for all customers.
INSERT INTO customer_stats (customer, orders, revenue_cents)
SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[])
ON CONFLICT (customer) DO UPDATE SET
    orders        = customer_stats.orders + EXCLUDED.orders,
    revenue_cents = customer_stats.revenue_cents + EXCLUDED.revenue_cents
