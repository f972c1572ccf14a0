-- Cancels every deadline of a completed instance.
DELETE FROM eventsource.process_manager_deadlines
WHERE manager = $1 AND instance = $2
