-- The newest committed event's feed position.
--
-- Selects and orders by the `xid8` column itself: an output alias of its text form named
-- `transaction_id` would shadow the column in ORDER BY and compare ids as text ('9' > '10').
SELECT transaction_id, position
FROM eventsource.events
ORDER BY transaction_id DESC, position DESC
LIMIT 1
