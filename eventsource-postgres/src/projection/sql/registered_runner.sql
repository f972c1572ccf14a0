-- The registration of projection $1, and whether its backend still holds the projection's
-- runner lock (an advisory lock on the 64-bit key hashtextextended($2, 0), which pg_locks
-- shows as classid = high 32 bits, objid = low 32 bits, objsubid = 1).
SELECT r.categories, r.event_types, r.instance, r.backend_pid, r.active_since,
       EXISTS (
           SELECT 1
           FROM pg_locks l
           WHERE l.locktype = 'advisory' AND l.granted AND l.pid = r.backend_pid
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND l.classid = ((k.key >> 32) & 4294967295)::oid
             AND l.objid = (k.key & 4294967295)::oid
             AND l.objsubid = 1
       ) AS holding
FROM eventsource.projection_runners r
CROSS JOIN (SELECT hashtextextended($2, 0) AS key) k
WHERE r.name = $1
