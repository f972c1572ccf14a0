-- One instance of a process manager: its state, correlation id and completion.
SELECT state, correlation_id, completed
FROM eventsource.process_manager_instances
WHERE manager = $1 AND instance = $2
