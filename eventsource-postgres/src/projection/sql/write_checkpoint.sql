-- Creates or moves a projection's checkpoint.
INSERT INTO eventsource.checkpoints (name, transaction_id, position, updated_at)
VALUES ($1, $2::text::xid8, $3, now())
ON CONFLICT (name) DO UPDATE
SET transaction_id = EXCLUDED.transaction_id, position = EXCLUDED.position, updated_at = now()
