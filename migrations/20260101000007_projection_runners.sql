-- The active runner of each projection, as it registered itself when it took the projection's
-- lock, and the projection's feed filter: what another process needs to tell who runs a
-- projection, since when, and how far behind it is, without the projection's code.
--
-- A row outlives its runner; it names the active runner only while `backend_pid` still holds
-- the projection's advisory lock (checked against pg_locks when read).
CREATE TABLE eventsource.projection_runners (
    name          text        NOT NULL,
    categories    text[],
    event_types   text[],
    instance      text        NOT NULL,
    backend_pid   integer     NOT NULL,
    active_since  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT projection_runners_pkey PRIMARY KEY (name)
);
