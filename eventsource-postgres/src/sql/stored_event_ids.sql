-- Where the given event ids are stored (for deciding whether an append is a retry).
SELECT event_id, category, stream_id, version, position, transaction_id
FROM eventsource.events
WHERE event_id = ANY($1::uuid[])
