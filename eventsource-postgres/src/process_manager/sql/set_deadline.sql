-- Sets (or moves) a deadline, due after $5 seconds of database time; a parked one is set afresh.
INSERT INTO eventsource.process_manager_deadlines (manager, instance, name, id, due_at)
VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
ON CONFLICT (manager, instance, name) DO UPDATE
SET id = EXCLUDED.id, due_at = EXCLUDED.due_at, error = NULL, parked_at = NULL
