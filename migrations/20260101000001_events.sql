-- The event log: one row per event, append-only.
--
-- position        the insert position (identity): unique, increasing in insert order, NOT in
--                 commit order.
-- transaction_id  the writing transaction's id. The global feed reads in
--                 (transaction_id, position) order and only below the oldest running
--                 transaction id, so it never skips an event that commits late.
CREATE TABLE eventsource.events (
    position        bigint      GENERATED ALWAYS AS IDENTITY,
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id        uuid        NOT NULL,
    category        text        NOT NULL,
    stream_id       text        NOT NULL,
    version         bigint      NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}',
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_pkey PRIMARY KEY (position),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (category, stream_id, version),
    CONSTRAINT events_version_check CHECK (version >= 1),
    CONSTRAINT events_schema_version_check CHECK (schema_version >= 1),
    CONSTRAINT events_category_check CHECK (category <> ''),
    CONSTRAINT events_stream_id_check CHECK (stream_id <> '')
);

CREATE INDEX events_feed_idx ON eventsource.events (transaction_id, position);

-- Events are facts: UPDATE, DELETE and TRUNCATE are refused. The one administrative path is a
-- transaction that first runs `SET LOCAL eventsource.allow_event_changes = 'on'` (see
-- docs/administration.md); nothing in the framework's normal operation uses it.
CREATE FUNCTION eventsource.refuse_event_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('eventsource.allow_event_changes', true) = 'on' THEN
        IF TG_OP = 'DELETE' THEN
            RETURN OLD;
        END IF;
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'eventsource.events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Events are immutable facts. For an administrative repair, run SET LOCAL eventsource.allow_event_changes = ''on'' in the same transaction first.';
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON eventsource.events
    FOR EACH ROW EXECUTE FUNCTION eventsource.refuse_event_changes();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON eventsource.events
    FOR EACH STATEMENT EXECUTE FUNCTION eventsource.refuse_event_changes();
