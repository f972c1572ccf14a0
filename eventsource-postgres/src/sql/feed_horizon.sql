-- The feed's horizon in Writers mode (step 1 of a feed read): the smallest transaction id that
-- may still commit events, computed from the transactions that can write to eventsource.events
-- in this database rather than from every transaction of the server.
--
-- `bound` is the xmax of this statement's snapshot, taken before pg_locks is read: every id
-- below it was assigned before this statement began. The writers are the transactions holding a
-- lock on eventsource.events in this database that allows writing (RowExclusiveLock or
-- stronger; waiting requests count too, which only lowers the horizon); their transaction id is
-- the smallest `transactionid` lock of the same virtual transaction (every transaction holding
-- an id holds an ExclusiveLock on it, a prepared one too, with pid NULL; a subtransaction's id
-- is larger than its top-level id, which is the one stored with events). A writer without an id
-- yet gets one later, at or above `bound`, and is left out.
--
-- pg_locks reports 32-bit ids. Each is widened to xid8 by its signed 32-bit distance from
-- `bound` (running transactions are within 2^31 of each other: PostgreSQL's wraparound guard),
-- so ids above `bound` widen above it and do not lower the horizon.
--
-- Returns `horizon` = least(bound, oldest writer's id) and that writer's backend pid (NULL for a
-- prepared transaction) and 32-bit id (both NULL when no writer is below `bound`).
--
-- The feed's events are read by a separate, later statement: see feed_horizon.rs for why the
-- order matters.
WITH bound AS (
    SELECT pg_snapshot_xmax(pg_current_snapshot()) AS xid,
           pg_snapshot_xmax(pg_current_snapshot())::text::numeric AS n
),
locks AS MATERIALIZED (
    -- One read of the lock table (each mention of pg_locks would read it again).
    SELECT l.locktype, l.database, l.relation, l.mode, l.granted, l.virtualtransaction,
           l.transactionid, l.pid
    FROM pg_locks l
    WHERE l.locktype IN ('relation', 'transactionid')
),
writers AS (
    SELECT DISTINCT l.virtualtransaction
    FROM locks l
    WHERE l.locktype = 'relation'
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.relation = 'eventsource.events'::regclass
      AND l.mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock',
                     'AccessExclusiveLock')
),
writer_ids AS (
    SELECT t.pid, t.transactionid,
           b.n + ((t.transactionid::text::numeric - mod(b.n, 4294967296) + 6442450944)
                  % 4294967296) - 2147483648 AS widened
    FROM writers w
    JOIN locks t ON t.virtualtransaction = w.virtualtransaction
                AND t.locktype = 'transactionid'
                AND t.mode = 'ExclusiveLock'
                AND t.granted
    CROSS JOIN bound b
),
oldest AS (
    SELECT w.pid, w.transactionid, w.widened
    FROM writer_ids w, bound b
    WHERE w.widened < b.n
    ORDER BY w.widened
    LIMIT 1
)
SELECT COALESCE(o.widened::text::xid8, b.xid) AS horizon,
       o.pid AS writer_pid,
       o.transactionid::text::bigint AS writer_xid
FROM bound b
LEFT JOIN oldest o ON true
