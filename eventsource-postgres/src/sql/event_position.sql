-- The feed position of the event with id $1 (no row when no such event is stored).
SELECT transaction_id, position
FROM eventsource.events
WHERE event_id = $1
