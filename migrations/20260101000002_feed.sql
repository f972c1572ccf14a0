-- Live feed support: a wake-up notification per appending statement, saved feed positions, and
-- the repair for a database restored into another cluster.

-- Subscribers LISTEN on this channel. PostgreSQL delivers a notification at commit (never for a
-- rolled-back append) and folds repeats within one transaction; the payload is empty because
-- subscribers re-read the feed rather than trust a message.
CREATE FUNCTION eventsource.notify_appended() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('eventsource_events', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON eventsource.events
    FOR EACH STATEMENT EXECUTE FUNCTION eventsource.notify_appended();

-- Saved feed positions (projection checkpoints). `name` identifies the reader.
CREATE TABLE eventsource.checkpoints (
    name            text        NOT NULL,
    transaction_id  xid8        NOT NULL,
    position        bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT checkpoints_pkey PRIMARY KEY (name)
);

-- After a dump is restored into another cluster, the new cluster's transaction ids may be lower
-- than the ids stored with the events, and new events would sort before old ones. This repair
-- re-stamps the stored events with small ids that keep the feed order every saved position
-- relies on:
--   * the saved positions are the checkpoints table plus `external_positions` (positions your
--     own code saved elsewhere, as 'transaction_id/position' text);
--   * events between two consecutive saved positions share one new id (1, 2, 3, ...), so each
--     saved position becomes ('group id', max bigint) and still has exactly the same events
--     before it;
--   * within a group, events keep their insert (position) order, which keeps every stream's
--     versions in order.
-- Returns each saved position with its replacement; checkpoints are updated in place, external
-- positions must be replaced by the caller. Run it once, while no writer or subscriber runs.
CREATE FUNCTION eventsource.repair_restored_feed(external_positions text[] DEFAULT '{}')
RETURNS TABLE (old_position text, new_position text)
LANGUAGE plpgsql AS $$
DECLARE
    horizon xid8 := pg_snapshot_xmin(pg_current_snapshot());
    boundary_count bigint;
BEGIN
    LOCK TABLE eventsource.events IN EXCLUSIVE MODE;
    LOCK TABLE eventsource.checkpoints IN EXCLUSIVE MODE;

    CREATE TEMPORARY TABLE repair_boundaries ON COMMIT DROP AS
    SELECT DISTINCT b.transaction_id, b.position
    FROM (
        SELECT c.transaction_id, c.position FROM eventsource.checkpoints c
        UNION
        SELECT split_part(p, '/', 1)::xid8, split_part(p, '/', 2)::bigint
        FROM unnest(external_positions) p
    ) b;

    SELECT count(*) INTO boundary_count FROM repair_boundaries;
    IF boundary_count + 2 >= horizon::text::bigint THEN
        RAISE EXCEPTION 'too many saved positions (%) for this cluster''s transaction ids (%)', boundary_count, horizon;
    END IF;

    CREATE TEMPORARY TABLE repair_groups ON COMMIT DROP AS
    SELECT b.transaction_id, b.position,
           row_number() OVER (ORDER BY b.transaction_id, b.position) AS group_id
    FROM repair_boundaries b;

    PERFORM set_config('eventsource.allow_event_changes', 'on', true);
    -- An event's new id: 1 + how many saved positions lie before it.
    UPDATE eventsource.events e
    SET transaction_id = (1 + (
        SELECT count(*) FROM repair_groups g
        WHERE (g.transaction_id, g.position) < (e.transaction_id, e.position)
    ))::text::xid8;
    PERFORM set_config('eventsource.allow_event_changes', 'off', true);

    RETURN QUERY
    SELECT g.transaction_id::text || '/' || g.position, g.group_id || '/' || 9223372036854775807
    FROM repair_groups g
    ORDER BY g.group_id;

    UPDATE eventsource.checkpoints c
    SET transaction_id = g.group_id::text::xid8, position = 9223372036854775807, updated_at = now()
    FROM repair_groups g
    WHERE (g.transaction_id, g.position) = (c.transaction_id, c.position);
END;
$$;
