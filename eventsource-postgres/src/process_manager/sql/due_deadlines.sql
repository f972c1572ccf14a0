-- The deadlines of a process manager that are due (database time), earliest first.
SELECT instance, name, id
FROM eventsource.process_manager_deadlines
WHERE manager = $1 AND parked_at IS NULL AND due_at <= now()
ORDER BY due_at, instance, name
LIMIT $2
