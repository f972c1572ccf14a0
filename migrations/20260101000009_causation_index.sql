-- Finding the events one command caused: an idempotent command (one whose id the caller gave)
-- looks for the events of its stream whose causation id is the command id before running again
-- (see read_caused_by.sql). Indexed on the causation id alone: few events share one, and the
-- stream is checked on those few rows.
CREATE INDEX events_causation_idx ON eventsource.events ((metadata ->> 'causation_id'));
