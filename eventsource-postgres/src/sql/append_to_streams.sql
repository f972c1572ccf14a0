-- Appends to several streams in one statement (one transaction), if every stream's current
-- version lies in its accepted range; otherwise appends nothing at all.
--
-- Per stream, in the order given (k = 1, 2, ...): $1 categories, $2 stream ids, $3/$4 lowest/
-- highest accepted current versions.
-- Per event, grouped by stream and in each stream's order: $5 the stream's k, $6 event ids,
-- $7 type names, $8 schema versions, $9 payloads (JSON text), $10 metadata (JSON text), $11 the
-- event's number within its stream's events (1, 2, ...).
-- $12 'on' when the store notifies subscribers itself after the commit (see append.sql).
--
-- Returns, for each stream in order, one row per appended event (`version`, `position`,
-- `transaction_id`), or a single row with NULL `version` when nothing was appended (an
-- expectation failed, or the stream had no events); `previous_version` is the version the
-- statement saw.
--
-- As in append.sql, the insert is the transaction's first write (the feed's ordering relies on
-- it), a writer that raced on a version gets a unique violation on events_stream_version_key,
-- and `ORDER BY e.ord` makes positions follow the order given, so each stream's positions follow
-- its versions. All rows share the transaction's id: the feed delivers them in one place.
WITH streams AS (
    SELECT s.k, s.category, s.stream_id, s.low, s.high,
           COALESCE((SELECT MAX(v.version) FROM eventsource.events v
                     WHERE v.category = s.category AND v.stream_id = s.stream_id), 0) AS version
    FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[])
             WITH ORDINALITY AS s(category, stream_id, low, high, k)
),
checked AS (
    SELECT bool_and(version BETWEEN low AND high) AS all_accepted,
           set_config('eventsource.notify_after_commit', $12, true) AS notify_flag
    FROM streams
),
appended AS (
    INSERT INTO eventsource.events
        (event_id, category, stream_id, version, event_type, schema_version, payload, metadata)
    SELECT e.event_id, s.category, s.stream_id, s.version + e.n, e.event_type, e.schema_version,
           e.payload::jsonb, e.metadata::jsonb
    FROM checked c
         CROSS JOIN UNNEST($5::bigint[], $6::uuid[], $7::text[], $8::int[], $9::text[],
                           $10::text[], $11::bigint[])
             WITH ORDINALITY AS e(k, event_id, event_type, schema_version, payload, metadata, n, ord)
         JOIN streams s ON s.k = e.k
    WHERE c.all_accepted AND c.notify_flag IS NOT NULL
    ORDER BY e.ord
    RETURNING category, stream_id, version, position, transaction_id
)
SELECT s.k, s.version AS previous_version, a.version, a.position, a.transaction_id
FROM streams s
LEFT JOIN appended a ON a.category = s.category AND a.stream_id = s.stream_id
