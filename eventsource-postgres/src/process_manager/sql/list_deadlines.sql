-- The deadlines of a process manager (pending and parked), earliest first.
SELECT instance, name, id, due_at, error, parked_at
FROM eventsource.process_manager_deadlines
WHERE manager = $1
ORDER BY due_at, instance, name
