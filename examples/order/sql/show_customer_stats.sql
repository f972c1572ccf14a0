-- What a reader of customer_stats sees for customers $1.
SELECT customer, orders, revenue_cents
FROM customer_stats
WHERE customer = ANY($1::text[])
ORDER BY customer
