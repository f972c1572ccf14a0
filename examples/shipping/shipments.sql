-- The shipping service's own table: one shipment per confirmed order.
CREATE SCHEMA IF NOT EXISTS shipping;
CREATE TABLE IF NOT EXISTS shipping.shipments (
    order_id         text        NOT NULL,
    tracking_number  text        NOT NULL,
    correlation_id   uuid,
    message_id       text        NOT NULL,
    shipped_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT shipments_pkey PRIMARY KEY (order_id)
);
