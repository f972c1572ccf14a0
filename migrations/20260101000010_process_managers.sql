-- Process managers (sagas). Each one keeps its checkpoint in eventsource.checkpoints under the name
-- 'process-manager/<name>', and parks events it could not handle in eventsource.dead_letters under
-- the same name.

-- One row per instance: its state (the manager's State as JSON), the correlation id of the event
-- that started it (carried by every command it issues), and whether it is complete. The row is
-- written in the transaction that moves the manager's checkpoint (or removes the deadline that
-- fired), so the state and the position in the feed never disagree.
CREATE TABLE eventsource.process_manager_instances (
    manager         text        NOT NULL,
    instance        text        NOT NULL,
    state           jsonb       NOT NULL,
    correlation_id  uuid        NOT NULL,
    completed       boolean     NOT NULL DEFAULT false,
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT process_manager_instances_pkey PRIMARY KEY (manager, instance)
);

-- Pending deadlines. Set and cancelled in the instance's transaction; a deadline fires in a
-- transaction that deletes its row, so it fires once. The id is deterministic (manager, instance,
-- the trigger that set it, name): the commands its firing issues get ids derived from it. A
-- deadline whose commands kept failing is parked (error and parked_at set) instead of firing again.
CREATE TABLE eventsource.process_manager_deadlines (
    manager         text        NOT NULL,
    instance        text        NOT NULL,
    name            text        NOT NULL,
    id              uuid        NOT NULL,
    due_at          timestamptz NOT NULL,
    error           text,
    parked_at       timestamptz,
    CONSTRAINT process_manager_deadlines_pkey PRIMARY KEY (manager, instance, name)
);

CREATE INDEX process_manager_deadlines_due ON eventsource.process_manager_deadlines (manager, due_at)
    WHERE parked_at IS NULL;
