-- How far a reader saved under checkpoint $1 is behind: events after its checkpoint in
-- categories $2 and of types $3 (NULL: all), and the oldest one's time.
WITH checkpoint AS (
    SELECT COALESCE((SELECT transaction_id FROM eventsource.checkpoints WHERE name = $1), '0'::xid8) AS transaction_id,
           COALESCE((SELECT position FROM eventsource.checkpoints WHERE name = $1), 0) AS position,
           EXISTS (SELECT 1 FROM eventsource.checkpoints WHERE name = $1) AS exists
)
SELECT c.exists, c.transaction_id::text AS transaction_id, c.position,
       count(e.position) AS events_behind, min(e.recorded_at) AS oldest_pending
FROM checkpoint c
LEFT JOIN eventsource.events e
       ON (e.transaction_id, e.position) > (c.transaction_id, c.position)
      AND ($2::text[] IS NULL OR e.category = ANY($2))
      AND ($3::text[] IS NULL OR e.event_type = ANY($3))
GROUP BY c.exists, c.transaction_id, c.position
