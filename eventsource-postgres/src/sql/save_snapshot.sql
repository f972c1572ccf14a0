-- Keeps a stream's snapshot unless the one kept is of a later version (racing writers keep the
-- newest). $1 category, $2 stream id, $3 version, $4 state version, $5 state.
INSERT INTO eventsource.snapshots (category, stream_id, version, state_version, state)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (category, stream_id) DO UPDATE
SET version = EXCLUDED.version,
    state_version = EXCLUDED.state_version,
    state = EXCLUDED.state,
    taken_at = now()
WHERE eventsource.snapshots.version <= EXCLUDED.version
