-- The customer_stats read model, with unqualified names (the runner sets search_path):
--   customer_stats         one row per customer: orders placed and revenue;
--   customer_stats_orders  the projection's own state per order, which the customer figures are
--                          derived from (a projection reads only its own tables).
CREATE TABLE customer_stats (
    customer       text   NOT NULL,
    orders         bigint NOT NULL,  -- orders placed, whatever became of them
    revenue_cents  bigint NOT NULL,  -- the totals of the customer's orders that are confirmed or
                                     -- shipped (a cancelled order counts for nothing)
    CONSTRAINT customer_stats_pkey PRIMARY KEY (customer)
);

CREATE TABLE customer_stats_orders (
    order_id     text   NOT NULL,
    customer     text   NOT NULL,
    status       text   NOT NULL,  -- open, confirmed, shipped, cancelled
    line_totals  jsonb  NOT NULL,  -- {"<sku>": cents of that line}: what ItemRemoved takes off
    total_cents  bigint NOT NULL,  -- the sum of line_totals
    CONSTRAINT customer_stats_orders_pkey PRIMARY KEY (order_id)
);
