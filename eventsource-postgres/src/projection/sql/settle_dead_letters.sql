-- Marks a projection's parked events up to a feed position as done, because a rebuild applied
-- them. $1 projection, $2/$3 the rebuilt checkpoint (transaction id, position).
UPDATE eventsource.dead_letters
SET replayed_at = now()
WHERE projection = $1
  AND replayed_at IS NULL
  AND (transaction_id, position) <= ($2, $3)
