-- Relays publish the feed to a broker and keep their checkpoint in eventsource.checkpoints under
-- the name 'relay/<relay name>'. A message the broker refuses for good is parked here with the
-- broker's error, never skipped silently.
CREATE TABLE eventsource.relay_dead_letters (
    id              bigint      GENERATED ALWAYS AS IDENTITY,
    relay           text        NOT NULL,
    event_id        uuid        NOT NULL,
    transaction_id  xid8        NOT NULL,
    position        bigint      NOT NULL,
    category        text        NOT NULL,
    stream_id       text        NOT NULL,
    version         bigint      NOT NULL,
    event_type      text        NOT NULL,
    destination     text        NOT NULL,
    error           text        NOT NULL,
    parked_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT relay_dead_letters_pkey PRIMARY KEY (id),
    CONSTRAINT relay_dead_letters_event_key UNIQUE (relay, event_id)
);

-- The inbox: the ids of the messages whose handler committed, per inbox. The handler's writes and
-- this row commit in one transaction, so a redelivered message is recognised and acked without
-- running its handler again.
CREATE TABLE eventsource.inbox_messages (
    inbox           text        NOT NULL,
    message_id      text        NOT NULL,
    correlation_id  uuid,
    handled_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT inbox_messages_pkey PRIMARY KEY (inbox, message_id)
);
