-- The newest transaction id stored with an event, and the next id this cluster will assign.
SELECT (SELECT transaction_id FROM eventsource.events
        ORDER BY transaction_id DESC LIMIT 1)::text AS newest_stored,
       pg_snapshot_xmax(pg_current_snapshot())::text AS next_transaction
