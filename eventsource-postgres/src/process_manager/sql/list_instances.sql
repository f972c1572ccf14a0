-- Every instance of a process manager, oldest first.
SELECT instance, state, correlation_id, completed, started_at, updated_at
FROM eventsource.process_manager_instances
WHERE manager = $1
ORDER BY started_at, instance
