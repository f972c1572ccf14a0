-- What holds the feed back in Cluster mode: committed events at or above the horizon (the oldest running
-- transaction id), and the oldest transaction holding an id (a backend or a prepared transaction).
WITH horizon AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin
),
waiting AS (
    SELECT count(*) AS events_waiting
    FROM eventsource.events, horizon
    WHERE transaction_id >= horizon.xmin
),
holder AS (
    SELECT pid, datname::text AS database, xact_start AS started, state,
           left(query, 300) AS query, age(backend_xid) AS age
    FROM pg_stat_activity
    WHERE backend_xid IS NOT NULL
    UNION ALL
    SELECT NULL, database::text, prepared, 'prepared',
           'PREPARE TRANSACTION ' || quote_literal(gid), age(transaction)
    FROM pg_prepared_xacts
    ORDER BY age DESC
    LIMIT 1
)
SELECT w.events_waiting, h.pid, h.database, h.started, h.state, h.query
FROM waiting w
LEFT JOIN holder h ON true
