-- One bounded batch of the global feed after ($1 transaction id, $2 position).
--
-- Only events whose transaction id is below the horizon $6 are read: every transaction below it
-- that can write events has ended, so no event can later appear before them. $6 comes from a
-- separate, earlier statement (feed_horizon.sql, Writers mode; see feed_horizon.rs); NULL means
-- the oldest transaction still running on the server (this snapshot's xmin, Cluster mode).
-- Events are examined in (transaction_id, position) order, at most $3 of them, one row per
-- examined event, so the reader counts what it examined and continues after the last row,
-- whether or not that event passed the filter.
--
-- `wanted` tells whether an event passes the filter (categories $4 and types $5; NULL: all). The
-- other columns are sent only for wanted events: the row of a skipped event carries just its
-- place in the feed, so a filtered reader moves past it without transferring its data.
--
-- The reader keeps the batch's byte budget itself: it counts the bytes it receives and stops
-- before the event that would pass it, and then closes the connection rather than receive the
-- rest (a running sum here would cost every read a window aggregate, and stored sizes of
-- compressed payloads understate what arrives).
--
-- The inner query is a keyset scan of events_feed_idx in index order (no sort, no
-- materialization); it computes `wanted` once per row, and its LIMIT keeps the planner from
-- merging it into the outer query (which would evaluate the filter once per column). The outer
-- ORDER BY repeats the inner order, which the planner knows it already has: it costs no sort.
SELECT x.position, x.transaction_id, x.wanted,
       CASE WHEN x.wanted THEN x.event_id END AS event_id,
       CASE WHEN x.wanted THEN x.category END AS category,
       CASE WHEN x.wanted THEN x.stream_id END AS stream_id,
       CASE WHEN x.wanted THEN x.version END AS version,
       CASE WHEN x.wanted THEN x.event_type END AS event_type,
       CASE WHEN x.wanted THEN x.schema_version END AS schema_version,
       CASE WHEN x.wanted THEN x.payload END AS payload,
       CASE WHEN x.wanted THEN x.metadata END AS metadata,
       CASE WHEN x.wanted THEN x.recorded_at END AS recorded_at
FROM (
    SELECT e.position, e.transaction_id, e.event_id, e.category, e.stream_id, e.version,
           e.event_type, e.schema_version, e.payload, e.metadata, e.recorded_at,
           ($4::text[] IS NULL OR e.category = ANY ($4::text[]))
               AND ($5::text[] IS NULL OR e.event_type = ANY ($5::text[])) AS wanted
    FROM eventsource.events e
    WHERE (e.transaction_id, e.position) > ($1::xid8, $2::bigint)
      AND e.transaction_id < COALESCE($6::xid8, pg_snapshot_xmin(pg_current_snapshot()))
    ORDER BY e.transaction_id, e.position
    LIMIT $3
) x
ORDER BY x.transaction_id, x.position
