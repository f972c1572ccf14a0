-- Records that inbox $1 handles message $2, as the first statement of the handler's
-- transaction. No row is inserted when the message was handled before; a concurrent delivery of
-- the same message waits here until the first one's transaction ends.
INSERT INTO eventsource.inbox_messages (inbox, message_id, correlation_id)
VALUES ($1, $2, $3)
ON CONFLICT (inbox, message_id) DO NOTHING
