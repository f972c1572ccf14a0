-- Whether inbox $1 has handled message $2.
SELECT EXISTS (SELECT 1 FROM eventsource.inbox_messages WHERE inbox = $1 AND message_id = $2)
