-- Parks a deadline whose commands kept failing: kept with the error, no longer fired.
UPDATE eventsource.process_manager_deadlines
SET error = $5, parked_at = now()
WHERE manager = $1 AND instance = $2 AND name = $3 AND id = $4
