-- What holds the feed back in Writers mode, after feed_horizon.sql found horizon $1 and the
-- oldest writer of eventsource.events in this database that sets it: backend $2 (NULL for a
-- prepared transaction) with 32-bit transaction id $3.
--
-- `events_waiting` counts the committed events at or above the horizon. The holder is named
-- from pg_stat_activity, or a prepared transaction by its gid; it may have ended since the
-- horizon was computed (then no row describes it).
WITH waiting AS (
    SELECT count(*) AS events_waiting
    FROM eventsource.events
    WHERE transaction_id >= $1::xid8
),
holder AS (
    SELECT pid, datname::text AS database, xact_start AS started, state,
           left(query, 300) AS query
    FROM pg_stat_activity
    WHERE $2::int IS NOT NULL AND pid = $2::int
    UNION ALL
    SELECT NULL, database::text, prepared, 'prepared',
           'PREPARE TRANSACTION ' || quote_literal(gid)
    FROM pg_prepared_xacts
    WHERE $2::int IS NULL AND transaction = $3::bigint::text::xid
    LIMIT 1
)
SELECT w.events_waiting, h.pid, h.database, h.started, h.state, h.query
FROM waiting w
LEFT JOIN holder h ON true
