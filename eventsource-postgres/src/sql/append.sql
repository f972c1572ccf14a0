-- Appends a batch of events to one stream in one statement, if the stream's current version
-- lies in [$3, $4] (the expected version as a range).
--
-- $1 category, $2 stream id, $3/$4 lowest/highest accepted current version,
-- $5 event ids, $6 type names, $7 schema versions, $8 payloads (JSON text), $9 metadata (JSON text),
-- $10 'on' when the store notifies subscribers itself after this statement's transaction commits
-- (autocommit appends), 'off' to let the events table's trigger notify at commit.
--
-- Returns one row per appended event (`version`, `position`, `transaction_id`), or a single row
-- with NULL `version` when the expectation failed (or there was nothing to append);
-- `previous_version` is the version the statement saw. The rows come in no particular order
-- (the reader orders them by version; a sort here would cost more than that).
--
-- Two writers that both see version n race on events_stream_version_key: the loser gets a
-- unique violation, never a gap. `ORDER BY e.n` makes positions follow versions within the
-- statement (the feed orders one transaction's events by position); the planner keeps the
-- ordinality order of UNNEST, so it costs no sort.
--
-- The setting is made transaction-local in `current_version`, which the insert reads (and whose
-- `notify_flag` it tests) before it writes a row, so the statement trigger sees it.
WITH current_version AS (
    SELECT COALESCE(MAX(version), 0) AS version,
           set_config('eventsource.notify_after_commit', $10, true) AS notify_flag
    FROM eventsource.events
    WHERE category = $1 AND stream_id = $2
),
appended AS (
    INSERT INTO eventsource.events
        (event_id, category, stream_id, version, event_type, schema_version, payload, metadata)
    SELECT e.event_id, $1, $2, c.version + e.n, e.event_type, e.schema_version,
           e.payload::jsonb, e.metadata::jsonb
    FROM current_version c,
         UNNEST($5::uuid[], $6::text[], $7::int[], $8::text[], $9::text[])
             WITH ORDINALITY AS e(event_id, event_type, schema_version, payload, metadata, n)
    WHERE c.version BETWEEN $3 AND $4 AND c.notify_flag IS NOT NULL
    ORDER BY e.n
    RETURNING version, position, transaction_id
)
SELECT c.version AS previous_version, a.version, a.position, a.transaction_id
FROM current_version c
LEFT JOIN appended a ON true
