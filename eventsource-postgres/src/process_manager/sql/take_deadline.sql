-- Removes a deadline that fires, in the transaction that stores what its firing decided: if the
-- transaction commits, the deadline has fired, once. No row: it was moved or cancelled meanwhile.
DELETE FROM eventsource.process_manager_deadlines
WHERE manager = $1 AND instance = $2 AND name = $3 AND id = $4
