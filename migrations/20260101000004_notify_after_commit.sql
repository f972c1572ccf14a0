-- Appends that notify in their own transaction commit one at a time: a transaction that ran
-- NOTIFY takes a database-wide lock at commit and keeps it until the commit is durable.
--
-- The store's own autocommit appends therefore set `eventsource.notify_after_commit` for their
-- transaction (in the append statement) and notify afterwards, coalesced, from a connection of
-- their own. Every other insert (an append inside a caller's transaction, plain SQL) is still
-- notified here, at its commit.
CREATE OR REPLACE FUNCTION eventsource.notify_appended() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('eventsource.notify_after_commit', true) = 'on' THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('eventsource_events', '');
    RETURN NULL;
END;
$$;
