-- One bounded batch of the global feed after ($1 transaction id, $2 position).
--
-- Only events whose transaction id is below the horizon $7 are read: every transaction below it
-- that can write events has ended, so no event can later appear before them. $7 comes from a
-- separate, earlier statement (feed_horizon.sql, Writers mode; see feed_horizon.rs); NULL means
-- the oldest transaction still running on the server (this snapshot's xmin, Cluster mode).
-- Events are examined in (transaction_id, position) order, at most $3 of them, one row per
-- examined event, so the reader counts what it examined and continues after the last row,
-- whether or not that event passed the filter.
--
-- `wanted` tells whether an event passes the filter (categories $4 and types $5; NULL: all).
-- `cut` marks the events past the byte budget $6: those after which the wanted events' stored
-- payload and metadata sizes (pg_column_size, which reads no TOAST data) add up to $6 or more.
-- The first event is never cut. The other columns are sent only for wanted events before the
-- cut: the row of any other event carries just its place in the feed, so a reader moves past
-- it, or stops at it, without transferring its data. (Stored sizes of compressed values
-- understate what is sent; the reader also counts the bytes it receives and stops there.)
--
-- The inner query is a keyset scan of events_feed_idx in index order (no sort, no
-- materialization); it computes `wanted` once per row, and its LIMIT keeps the planner from
-- merging it into the outer queries (which would evaluate the filter once per column). The
-- running sum streams over that order, and the outer ORDER BY repeats it, which the planner
-- knows it already has: neither costs a sort.
SELECT x.position, x.transaction_id, x.wanted, x.cut,
       CASE WHEN x.wanted AND NOT x.cut THEN x.event_id END AS event_id,
       CASE WHEN x.wanted AND NOT x.cut THEN x.category END AS category,
       CASE WHEN x.wanted AND NOT x.cut THEN x.stream_id END AS stream_id,
       CASE WHEN x.wanted AND NOT x.cut THEN x.version END AS version,
       CASE WHEN x.wanted AND NOT x.cut THEN x.event_type END AS event_type,
       CASE WHEN x.wanted AND NOT x.cut THEN x.schema_version END AS schema_version,
       CASE WHEN x.wanted AND NOT x.cut THEN x.payload END AS payload,
       CASE WHEN x.wanted AND NOT x.cut THEN x.metadata END AS metadata,
       CASE WHEN x.wanted AND NOT x.cut THEN x.recorded_at END AS recorded_at
FROM (
    SELECT y.*,
           sum(y.bytes) OVER (ORDER BY y.transaction_id, y.position ROWS UNBOUNDED PRECEDING)
               - y.bytes >= $6 AS cut
    FROM (
        SELECT z.*, CASE WHEN z.wanted
                         THEN pg_column_size(z.payload) + pg_column_size(z.metadata)
                         ELSE 0 END AS bytes
        FROM (
            SELECT e.position, e.transaction_id, e.event_id, e.category, e.stream_id,
                   e.version, e.event_type, e.schema_version, e.payload, e.metadata,
                   e.recorded_at,
                   ($4::text[] IS NULL OR e.category = ANY ($4::text[]))
                       AND ($5::text[] IS NULL OR e.event_type = ANY ($5::text[])) AS wanted
            FROM eventsource.events e
            WHERE (e.transaction_id, e.position) > ($1::xid8, $2::bigint)
              AND e.transaction_id < COALESCE($7::xid8, pg_snapshot_xmin(pg_current_snapshot()))
            ORDER BY e.transaction_id, e.position
            LIMIT $3
        ) z
    ) y
) x
ORDER BY x.transaction_id, x.position
