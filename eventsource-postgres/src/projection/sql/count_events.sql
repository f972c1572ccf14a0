-- Events in categories $1 and of types $2 (NULL: all) up to feed position ($3, $4) inclusive
-- ($3 NULL: all of them).
SELECT count(*) AS events
FROM eventsource.events
WHERE ($1::text[] IS NULL OR category = ANY($1))
  AND ($2::text[] IS NULL OR event_type = ANY($2))
  AND ($3::text IS NULL OR (transaction_id, position) <= ($3::text::xid8, $4))
