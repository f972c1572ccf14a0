-- Creates or updates an instance (in the transaction that moves the checkpoint or removes the
-- deadline that fired). The correlation id is the one of the event that started the instance and
-- never changes.
INSERT INTO eventsource.process_manager_instances (manager, instance, state, correlation_id, completed)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (manager, instance) DO UPDATE
SET state = EXCLUDED.state, completed = EXCLUDED.completed, updated_at = now()
