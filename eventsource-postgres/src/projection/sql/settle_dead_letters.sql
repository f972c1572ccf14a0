-- Marks a projection's parked events up to a feed position as done, because a rebuild applied
-- them. $1 projection, $2/$3 the rebuilt checkpoint (transaction id, position). Positions come
-- from the events themselves (see list_dead_letters.sql).
UPDATE eventsource.dead_letters d
SET replayed_at = now()
FROM eventsource.events e
WHERE e.event_id = d.event_id
  AND d.projection = $1
  AND d.replayed_at IS NULL
  AND (e.transaction_id, e.position) <= ($2, $3)
