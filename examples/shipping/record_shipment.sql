-- Records a shipment: the order, its tracking number, and the correlation id that links it to
-- the command that confirmed the order.
INSERT INTO shipping.shipments (order_id, tracking_number, correlation_id, message_id)
VALUES ($1, $2, $3, $4)
