-- The order_summary read model: one row per order. Created with an unqualified name: the runner
-- points search_path at the projection's schema, a rebuild at its shadow schema.
CREATE TABLE order_summary (
    order_id     text        NOT NULL,
    customer     text        NOT NULL,
    status       text        NOT NULL,  -- open, confirmed, shipped, cancelled
    item_count   bigint      NOT NULL,  -- units on the order: the sum of the lines' quantities
    total_cents  bigint      NOT NULL,  -- the sum of quantity * unit price over the lines
    lines        jsonb       NOT NULL,  -- {"<sku>": {"quantity": q, "unit_price_cents": p}}, the
                                        -- per-line state that ItemAdded and ItemRemoved change
    version      bigint      NOT NULL,  -- the stream version of the last event applied
    updated_at   timestamptz NOT NULL,  -- when that event was recorded
    CONSTRAINT order_summary_pkey PRIMARY KEY (order_id)
);
