-- name: metrics_queue_stats
-- Depth, running and oldest due age per queue for /metrics, from the operators' view.
SELECT queue, waiting, due, running,
       coalesce(extract(epoch FROM oldest_due_age), 0)::float8 AS oldest_due_seconds
  FROM queue_stats;

-- name: metrics_webhook_deliveries
-- Webhook deliveries per status (pending, delivered, failed) for /metrics.
SELECT status, count(*) AS deliveries FROM webhook_deliveries GROUP BY status;

-- name: metrics_table_health
-- Live and dead tuples and bytes per taskq table (history partitions summed), from the table_health view.
SELECT table_name, partitions, live_tuples, dead_tuples, table_bytes, index_bytes
  FROM table_health;

-- name: metrics_queue_controls
-- Per queue: paused, live workers serving it, unserved (tasks wait, no worker), for /metrics.
SELECT queue, paused::int AS paused, workers, unserved::int AS unserved FROM queue_controls;
