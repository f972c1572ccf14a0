-- Cancels one deadline of an instance (no error if there is none).
DELETE FROM eventsource.process_manager_deadlines
WHERE manager = $1 AND instance = $2 AND name = $3
