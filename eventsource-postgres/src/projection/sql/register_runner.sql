-- Records, on the lock connection of the runner that just became active, who it is and the
-- projection's filter. $1 name, $2 categories, $3 event types (NULL: all), $4 instance.
INSERT INTO eventsource.projection_runners
    (name, categories, event_types, instance, backend_pid, active_since)
VALUES ($1, $2, $3, $4, pg_backend_pid(), now())
ON CONFLICT (name) DO UPDATE
SET categories = EXCLUDED.categories, event_types = EXCLUDED.event_types,
    instance = EXCLUDED.instance, backend_pid = EXCLUDED.backend_pid,
    active_since = EXCLUDED.active_since
