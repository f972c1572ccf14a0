-- Aggregate snapshots: the latest saved state of a stream, so loads fold only the events after
-- it. A cache of a fold of immutable events: deleting rows here is always safe.
CREATE TABLE eventsource.snapshots (
    category       text        NOT NULL,
    stream_id      text        NOT NULL,
    version        bigint      NOT NULL,
    state_version  bigint      NOT NULL,
    state          jsonb       NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT snapshots_pkey PRIMARY KEY (category, stream_id),
    CONSTRAINT snapshots_version_check CHECK (version >= 1)
);
