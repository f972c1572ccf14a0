-- Projection runners: events a projection could not handle, parked for inspection and replay.
CREATE TABLE eventsource.dead_letters (
    id              bigint      GENERATED ALWAYS AS IDENTITY,
    projection      text        NOT NULL,
    event_id        uuid        NOT NULL,
    transaction_id  xid8        NOT NULL,
    position        bigint      NOT NULL,
    category        text        NOT NULL,
    stream_id       text        NOT NULL,
    version         bigint      NOT NULL,
    event_type      text        NOT NULL,
    error           text        NOT NULL,
    attempts        integer     NOT NULL,
    parked_at       timestamptz NOT NULL DEFAULT now(),
    replayed_at     timestamptz,
    CONSTRAINT dead_letters_pkey PRIMARY KEY (id),
    CONSTRAINT dead_letters_event_key UNIQUE (projection, event_id)
);
