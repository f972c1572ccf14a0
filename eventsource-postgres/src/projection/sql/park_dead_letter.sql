-- Parks an event a projection could not handle.
INSERT INTO eventsource.dead_letters
    (projection, event_id, transaction_id, position, category, stream_id, version, event_type, error, attempts)
VALUES ($1, $2, $3::text::xid8, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (projection, event_id) DO UPDATE
SET error = EXCLUDED.error, attempts = EXCLUDED.attempts, parked_at = now(), replayed_at = NULL
