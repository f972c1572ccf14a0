-- Seconds until the next deadline of a process manager is due (NULL when none is pending).
SELECT EXTRACT(EPOCH FROM (min(due_at) - now()))::float8 AS due_in
FROM eventsource.process_manager_deadlines
WHERE manager = $1 AND parked_at IS NULL
