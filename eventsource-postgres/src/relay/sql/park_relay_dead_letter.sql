-- Parks a message the broker refused for good (or the mapping could not map). Parking the same
-- event again (after a restart from an older checkpoint) keeps the first row.
INSERT INTO eventsource.relay_dead_letters
    (relay, event_id, transaction_id, position, category, stream_id, version, event_type,
     destination, error)
VALUES ($1, $2, $3::text::xid8, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (relay, event_id) DO NOTHING
