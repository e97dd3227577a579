"""One statement trigger per event on ``tasks``; an empty statement costs nothing.

Since 0012, every INSERT, UPDATE and DELETE of ``tasks`` ran two or three
PL/pgSQL statement triggers (``tasks_inserted`` + ``tasks_derived_inserted``;
``tasks_derived_updated`` + ``tasks_updated`` + ``tasks_updated_dependents``;
``tasks_deleted`` + ``tasks_deleted_dependents`` + ``tasks_derived_deleted``),
each a function call that scanned the transition tables again (the UPDATE ones
joined ``new_rows`` to ``old_rows`` twice). A worker's claim that finds nothing
paid all of it for no row: about 40% of its server time.

Now each event has one trigger and one function, which does in one pass what
the three did, in the order they fired (alphabetical: counters, then history,
dead letters, NOTIFY and webhooks, then the dependents):

- ``taskq_tasks_inserted()``: history row, counters delta, search document,
  NOTIFY and wake-up of the new tasks, in one statement;
- ``taskq_tasks_updated()``: returns at once when the statement changed no row
  (an idle claim, a completion of tasks already gone, a heartbeat of none).
  Else one ``FULL JOIN`` of the transition tables keeps the rows whose status,
  owner, queue or type changed (or whose id did: a row on one side only), and
  history, NOTIFY and the counters' deltas come from those rows in one
  statement. Dead letters (a row became FAILED) and webhook deliveries (a row
  with a ``callback_url`` changed status) have statements of their own, run
  only then and planned for the call's sizes (``EXECUTE``), so a claim neither
  runs nor opens their tables; then the webhook tasks are enqueued and the
  dependents of parents that ended are settled. A full join is a hash or a
  merge join whatever the cached plan's estimate (a nested loop cannot do it),
  so the function needs no ``SET enable_nestloop = off`` any more;
- ``taskq_tasks_deleted()``: history, dead letters and deliveries go, DELETED is
  announced, the waiting children are cancelled, edges, counters and search
  documents follow.

Each function runs with ``SET jit = off`` (it costs 3-6 µs a call, measured): the
plan of a trigger's query is cached for the session at the transition tables'
size of its first call, and the estimates of a join of transition tables are
wild (60,000 rows each: 18 million), so without it one big UPDATE left a plan
that JIT-compiled for 2.4 s on every later call of that session.

Nothing observable changes: the same history rows (ids in the same order), the
same notifications, deltas, documents, deliveries and settled children, for
any statement, psql's included (``tests/integration/test_task_triggers.py``
runs one workload on 0013 and on this revision and compares). One thing is
now fixed that was left to the join before: the dead letters of one statement
take their ids in task id order.

Measured (``python -m bench.trigger_cost URL --before 0013``, best of 40 on a
loaded machine): a claim that finds nothing 0.31 -> 0.19 ms of server time, a
completion of no row 0.16 -> 0.04 ms; a claim of one task and an insert of
1,000 cost what they did (their rows are the cost, not the calls). ``taskq_tasks_derived()``,
``taskq_tasks_dependents_updated()`` and ``taskq_tasks_dependents_deleted()``
go with their triggers; the TRUNCATE trigger and the row trigger
``tasks_retitled`` stay as they were.

Safe while old workers run: replacing the triggers takes a SHARE ROW EXCLUSIVE
lock on ``tasks`` for the migration's few catalog changes (writers wait
milliseconds), and old workers only write ``tasks``.

Revision ID: 0014
Revises: 0013
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

UPGRADE = r"""
DROP TRIGGER tasks_derived_inserted ON tasks;
DROP TRIGGER tasks_derived_updated ON tasks;
DROP TRIGGER tasks_derived_deleted ON tasks;
DROP TRIGGER tasks_updated_dependents ON tasks;
DROP TRIGGER tasks_deleted_dependents ON tasks;
DROP FUNCTION taskq_tasks_derived(), taskq_tasks_dependents_updated(),
    taskq_tasks_dependents_deleted();

CREATE OR REPLACE FUNCTION taskq_tasks_inserted() RETURNS trigger
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    sent bigint;
BEGIN
    -- A create whose Idempotency-Key or unique_key was taken inserted nothing.
    IF NOT EXISTS (SELECT FROM new_rows) THEN
        RETURN NULL;
    END IF;
    WITH hist AS (
        INSERT INTO task_history (task_id, user_id, from_status, to_status, attempt)
        SELECT id, user_id, NULL, status, attempts FROM new_rows ORDER BY id
        RETURNING id, task_id, user_id, to_status
    ), counted AS (
        -- One grouped row per owner, queue, type and status (a batch of one kind: one row).
        INSERT INTO task_count_deltas (user_id, queue, task_type, status, tasks, entered)
        SELECT coalesce(user_id, 0), queue, task_type, status, count(*), count(*)
          FROM new_rows
         GROUP BY 1, 2, 3, 4
    ), searchable AS (
        INSERT INTO task_search (task_id, document)
        SELECT id, to_tsvector('simple', left(title || ' ' || description, 20000))
          FROM new_rows
    ), events AS (
        SELECT pg_notify('taskq_events', json_build_object(
                   's', to_status, 'e', json_agg(json_build_array(id, task_id, user_id)))::text)
          FROM (SELECT h.*, (row_number() OVER (ORDER BY h.id) - 1) / 200 AS chunk FROM hist h) c
         GROUP BY to_status, chunk
    ), wake AS (
        SELECT pg_notify('taskq_wakeup', queue)
          FROM (SELECT DISTINCT queue FROM new_rows WHERE status IN ('PENDING', 'RETRYING')) q
    )
    SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM wake) INTO sent;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION taskq_tasks_inserted() IS
    'Per new task: a task_history row, its counters delta and search document, NOTIFY and wake-up.';

CREATE OR REPLACE FUNCTION taskq_tasks_updated() RETURNS trigger
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    sent bigint;
    failed boolean;
    hooked boolean;
    delivery_ids bigint[];
    ended_ids bigint[];
    ended_statuses text[];
BEGIN
    -- An idle worker's claim, a completion of tasks already taken back, a heartbeat of no
    -- task: no row, nothing to write or send.
    IF NOT EXISTS (SELECT FROM new_rows) THEN
        RETURN NULL;
    END IF;
    WITH moved AS MATERIALIZED (
        -- The rows whose status, owner, queue or type changed; a row whose id changed is on
        -- one side only. Rows that kept all four add nothing to the counters, and the
        -- rest below only looks at status changes.
        SELECT n.id, o.id AS old_id, n.user_id, n.queue, n.task_type,
               o.user_id AS old_user_id, o.queue AS old_queue, o.task_type AS old_task_type,
               o.status AS from_status, n.status AS to_status,
               n.attempts, n.worker_id, n.error, n.callback_url, n.has_dependents
          FROM new_rows n FULL JOIN old_rows o ON o.id = n.id
         WHERE n.id IS NULL OR o.id IS NULL OR n.status IS DISTINCT FROM o.status
            OR n.user_id IS DISTINCT FROM o.user_id OR n.queue <> o.queue
            OR n.task_type <> o.task_type
    ), changed AS (
        -- The status changes: one history row and NOTIFY each.
        SELECT * FROM moved
         WHERE id IS NOT NULL AND old_id IS NOT NULL AND to_status IS DISTINCT FROM from_status
    ), counted AS (
        -- Counters: the statement's net change per key (a batch claim of 1,000 tasks of one
        -- owner, queue and type writes two rows: PENDING -1000, PROCESSING +1000).
        INSERT INTO task_count_deltas (user_id, queue, task_type, status, tasks, entered)
        SELECT user_id, queue, task_type, status, sum(tasks), sum(entered)
          FROM (SELECT coalesce(m.old_user_id, 0) AS user_id, m.old_queue AS queue,
                       m.old_task_type AS task_type, m.from_status AS status,
                       -1 AS tasks, 0 AS entered
                  FROM moved m WHERE m.old_id IS NOT NULL
                 UNION ALL
                SELECT coalesce(m.user_id, 0), m.queue, m.task_type, m.to_status, 1,
                       CASE WHEN m.from_status IS DISTINCT FROM m.to_status THEN 1 ELSE 0 END
                  FROM moved m WHERE m.id IS NOT NULL) changes
         GROUP BY 1, 2, 3, 4
        HAVING sum(tasks) <> 0 OR sum(entered) <> 0
    ), overtaken AS (
        -- Only a transaction younger than this one can have written a task's previous
        -- transition with a later place; while none has ended, the lookups are skipped.
        SELECT pg_snapshot_xmax(pg_current_snapshot()) > pg_current_xact_id() AS younger_ended
    ), hist AS (
        -- A transaction that took its id before the one that wrote the task's previous
        -- transition (it waited for that one's row lock) keeps that one's place, so a task's
        -- transitions are in the all-tasks order as they happened. Only a row written after
        -- this transaction began can hold a later place (a row written before it began was
        -- written by a transaction that took its id first), so the lookup reads the
        -- partitions from an hour before it began (a margin for the clock), not every day kept.
        INSERT INTO task_history (task_id, user_id, from_status, to_status, attempt, worker_id,
                                  error, xact_id)
        SELECT c.id, c.user_id, c.from_status, c.to_status, c.attempts, c.worker_id,
               CASE WHEN c.to_status IN ('FAILED', 'RETRYING') THEN c.error END,
               CASE WHEN (SELECT younger_ended FROM overtaken)
                    THEN greatest(pg_current_xact_id(),
                                  (SELECT p.xact_id FROM task_history p
                                    WHERE p.task_id = c.id
                                      AND p.created_at > now() - interval '1 hour'
                                    ORDER BY p.id DESC LIMIT 1))
                    ELSE pg_current_xact_id() END
          FROM changed c ORDER BY c.id
        RETURNING id, task_id, user_id, to_status
    ), events AS (
        SELECT pg_notify('taskq_events', json_build_object(
                   's', to_status, 'e', json_agg(json_build_array(id, task_id, user_id)))::text)
          FROM (SELECT h.*, (row_number() OVER (ORDER BY h.id) - 1) / 200 AS chunk FROM hist h) c
         GROUP BY to_status, chunk
    ), wake AS (
        SELECT pg_notify('taskq_wakeup', queue)
          FROM (SELECT DISTINCT queue FROM changed WHERE to_status IN ('PENDING', 'RETRYING')) q
    ), cancels AS (
        SELECT pg_notify('taskq_cancel', id::text)
          FROM changed WHERE from_status = 'PROCESSING' AND to_status = 'CANCELLED'
    )
    SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM wake)
         + (SELECT count(*) FROM cancels),
           (SELECT bool_or(to_status = 'FAILED') FROM changed),
           (SELECT bool_or(callback_url IS NOT NULL) FROM changed),
           (SELECT array_agg(id ORDER BY id) FROM changed
             WHERE has_dependents AND to_status IN ('COMPLETED', 'FAILED', 'CANCELLED')),
           (SELECT array_agg(to_status::text ORDER BY id) FROM changed
             WHERE has_dependents AND to_status IN ('COMPLETED', 'FAILED', 'CANCELLED'))
      INTO sent, failed, hooked, ended_ids, ended_statuses;
    -- Dead letters and webhooks concern few statements: their own statements, planned for
    -- this call's sizes (EXECUTE), so the common one neither runs nor opens their tables.
    IF failed THEN
        EXECUTE 'INSERT INTO dead_letters (task_id, user_id, task_type, queue, payload, error,
                                           attempts)
                 SELECT n.id, n.user_id, n.task_type, n.queue, n.payload, n.error, n.attempts
                   FROM new_rows n JOIN old_rows o ON o.id = n.id
                  WHERE n.status = ''FAILED'' AND o.status <> ''FAILED''
                  ORDER BY n.id';
    END IF;
    IF hooked THEN
        EXECUTE 'WITH deliveries AS (
                     INSERT INTO webhook_deliveries (task_id, event, url, payload, max_attempts)
                     SELECT id, event, callback_url, snapshot, greatest(callback_max_attempts, 1)
                       FROM (SELECT n.id, n.callback_url, n.callback_max_attempts,
                                    to_jsonb(n) - ''callback_secret'' - ''callback_headers''
                                        AS snapshot, (
                                    -- The first event of the transition the task subscribed
                                    -- to (NULL callback_events: succeeded, failed, cancelled).
                                    SELECT x.name
                                      FROM unnest(taskq_webhook_events(n.status))
                                           WITH ORDINALITY AS x(name, pos)
                                     WHERE x.name = ANY(coalesce(n.callback_events,
                                               ARRAY[''task.succeeded'', ''task.failed'',
                                                     ''task.cancelled'']))
                                     ORDER BY x.pos
                                     LIMIT 1) AS event
                               FROM new_rows n JOIN old_rows o ON o.id = n.id
                              WHERE n.callback_url IS NOT NULL
                                AND n.status IS DISTINCT FROM o.status) due
                      WHERE event IS NOT NULL
                      ORDER BY id
                     RETURNING id)
                 SELECT array_agg(id ORDER BY id) FROM deliveries'
           INTO delivery_ids;
        IF delivery_ids IS NOT NULL THEN
            PERFORM taskq_enqueue_webhook_deliveries(delivery_ids);
        END IF;
    END IF;
    -- Parents that ended: release (COMPLETED) or cancel their waiting children.
    IF ended_ids IS NOT NULL THEN
        PERFORM taskq_settle_dependents(ended_ids, ended_statuses);
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION taskq_tasks_updated() IS
    'Per status change: a task_history row, dead letter on FAILED, NOTIFY, webhook deliveries, counters, settled dependents.';

CREATE OR REPLACE FUNCTION taskq_tasks_deleted() RETURNS trigger
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    sent bigint;
    deleted_ids bigint[];
    ended_ids bigint[];
    ended_statuses text[];
BEGIN
    IF NOT EXISTS (SELECT FROM old_rows) THEN
        RETURN NULL;
    END IF;
    -- Each table by an array of the ids, never a join with old_rows: the plan is cached at
    -- the first call's size, and a hash join over a scan of all the history (or all the
    -- search documents) would then be what every clean-up window of 1,000 pays.
    deleted_ids := ARRAY(SELECT o.id FROM old_rows o);
    DELETE FROM task_history WHERE task_id = ANY (deleted_ids);
    DELETE FROM dead_letters WHERE task_id = ANY (deleted_ids);
    DELETE FROM webhook_deliveries WHERE task_id = ANY (deleted_ids);
    SELECT count(pg_notify('taskq_events', json_build_object('s', 'DELETED', 'e', e)::text))
      INTO sent
      FROM (SELECT json_agg(json_build_array(NULL, id, user_id)) AS e
              FROM (SELECT o.id, o.user_id, (row_number() OVER (ORDER BY o.id) - 1) / 200 AS chunk
                      FROM old_rows o) c
             GROUP BY chunk) chunks;
    -- A deleted parent that had not completed cancels its waiting children.
    SELECT array_agg(o.id ORDER BY o.id), array_agg('DELETED'::text ORDER BY o.id)
      INTO ended_ids, ended_statuses
      FROM old_rows o WHERE o.has_dependents AND o.status <> 'COMPLETED';
    IF ended_ids IS NOT NULL THEN
        PERFORM taskq_settle_dependents(ended_ids, ended_statuses);
    END IF;
    DELETE FROM task_dependencies d USING old_rows o
     WHERE o.has_dependents AND d.parent_id = o.id;
    DELETE FROM task_dependencies d
     USING (SELECT o.id, unnest(o.depends_on) AS parent_id
              FROM old_rows o WHERE o.depends_on IS NOT NULL) c
     WHERE d.parent_id = c.parent_id AND d.task_id = c.id;
    INSERT INTO task_count_deltas (user_id, queue, task_type, status, tasks, entered)
    SELECT coalesce(user_id, 0), queue, task_type, status, -count(*), 0
      FROM old_rows
     GROUP BY 1, 2, 3, 4;
    DELETE FROM task_search WHERE task_id = ANY (deleted_ids);
    RETURN NULL;
END $$;
COMMENT ON FUNCTION taskq_tasks_deleted() IS
    'Per deleted task: its history, dead letters and deliveries go, DELETED is announced, waiting children are cancelled, counters and search follow.';
"""

# What the revisions before left, verbatim: 0001's taskq_tasks_inserted() and
# taskq_tasks_deleted(), 0010's taskq_tasks_updated() (with 0005's comment), and 0009's
# and 0012's functions and triggers.
DOWNGRADE = r"""
CREATE OR REPLACE FUNCTION taskq_tasks_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    sent bigint;
BEGIN
    WITH hist AS (
        INSERT INTO task_history (task_id, user_id, from_status, to_status, attempt)
        SELECT id, user_id, NULL, status, attempts FROM new_rows ORDER BY id
        RETURNING id, task_id, user_id, to_status
    ), events AS (
        SELECT pg_notify('taskq_events', json_build_object(
                   's', to_status, 'e', json_agg(json_build_array(id, task_id, user_id)))::text)
          FROM (SELECT h.*, (row_number() OVER (ORDER BY h.id) - 1) / 200 AS chunk FROM hist h) c
         GROUP BY to_status, chunk
    ), wake AS (
        SELECT pg_notify('taskq_wakeup', queue)
          FROM (SELECT DISTINCT queue FROM new_rows WHERE status IN ('PENDING', 'RETRYING')) q
    )
    SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM wake) INTO sent;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION taskq_tasks_inserted() IS NULL;

CREATE OR REPLACE FUNCTION taskq_tasks_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    sent bigint;
BEGIN
    DELETE FROM task_history h USING old_rows o WHERE h.task_id = o.id;
    DELETE FROM dead_letters d USING old_rows o WHERE d.task_id = o.id;
    DELETE FROM webhook_deliveries w USING old_rows o WHERE w.task_id = o.id;
    SELECT count(pg_notify('taskq_events', json_build_object('s', 'DELETED', 'e', e)::text))
      INTO sent
      FROM (SELECT json_agg(json_build_array(NULL, id, user_id)) AS e
              FROM (SELECT o.id, o.user_id, (row_number() OVER (ORDER BY o.id) - 1) / 200 AS chunk
                      FROM old_rows o) c
             GROUP BY chunk) chunks;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION taskq_tasks_deleted() IS NULL;

CREATE OR REPLACE FUNCTION taskq_tasks_updated() RETURNS trigger
LANGUAGE plpgsql SET enable_nestloop = off SET jit = off AS $$
DECLARE
    sent bigint;
    delivery_ids bigint[];
BEGIN
    WITH changed AS MATERIALIZED (
        SELECT n.id, n.user_id, n.queue, o.status AS from_status, n.status AS to_status,
               n.attempts, n.worker_id, n.error, n.task_type, n.payload, n.callback_url,
               n.callback_events, n.callback_max_attempts,
               CASE WHEN n.callback_url IS NOT NULL
                    THEN to_jsonb(n) - 'callback_secret' - 'callback_headers' END AS snapshot
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.status IS DISTINCT FROM o.status
    ), overtaken AS (
        -- Only a transaction younger than this one can have written a task's previous
        -- transition with a later place; while none has ended, the lookups are skipped.
        SELECT pg_snapshot_xmax(pg_current_snapshot()) > pg_current_xact_id() AS younger_ended
    ), hist AS (
        -- A transaction that took its id before the one that wrote the task's previous
        -- transition (it waited for that one's row lock) keeps that one's place, so a task's
        -- transitions are in the all-tasks order as they happened. Only a row written after
        -- this transaction began can hold a later place (a row written before it began was
        -- written by a transaction that took its id first), so the lookup reads the
        -- partitions from an hour before it began (a margin for the clock), not every day kept.
        INSERT INTO task_history (task_id, user_id, from_status, to_status, attempt, worker_id,
                                  error, xact_id)
        SELECT c.id, c.user_id, c.from_status, c.to_status, c.attempts, c.worker_id,
               CASE WHEN c.to_status IN ('FAILED', 'RETRYING') THEN c.error END,
               CASE WHEN (SELECT younger_ended FROM overtaken)
                    THEN greatest(pg_current_xact_id(),
                                  (SELECT p.xact_id FROM task_history p
                                    WHERE p.task_id = c.id
                                      AND p.created_at > now() - interval '1 hour'
                                    ORDER BY p.id DESC LIMIT 1))
                    ELSE pg_current_xact_id() END
          FROM changed c ORDER BY c.id
        RETURNING id, task_id, user_id, to_status
    ), dead AS (
        INSERT INTO dead_letters (task_id, user_id, task_type, queue, payload, error, attempts)
        SELECT id, user_id, task_type, queue, payload, error, attempts
          FROM changed WHERE to_status = 'FAILED'
    ), events AS (
        SELECT pg_notify('taskq_events', json_build_object(
                   's', to_status, 'e', json_agg(json_build_array(id, task_id, user_id)))::text)
          FROM (SELECT h.*, (row_number() OVER (ORDER BY h.id) - 1) / 200 AS chunk FROM hist h) c
         GROUP BY to_status, chunk
    ), wake AS (
        SELECT pg_notify('taskq_wakeup', queue)
          FROM (SELECT DISTINCT queue FROM changed WHERE to_status IN ('PENDING', 'RETRYING')) q
    ), cancels AS (
        SELECT pg_notify('taskq_cancel', id::text)
          FROM changed WHERE from_status = 'PROCESSING' AND to_status = 'CANCELLED'
    ), deliveries AS (
        INSERT INTO webhook_deliveries (task_id, event, url, payload, max_attempts)
        SELECT id, event, callback_url, snapshot, greatest(callback_max_attempts, 1)
          FROM (SELECT c.*, (
                       -- The first event of the transition the task subscribed to (NULL
                       -- callback_events: succeeded, failed, cancelled).
                       SELECT x.name
                         FROM unnest(taskq_webhook_events(c.to_status))
                              WITH ORDINALITY AS x(name, pos)
                        WHERE x.name = ANY(coalesce(c.callback_events,
                                  ARRAY['task.succeeded', 'task.failed', 'task.cancelled']))
                        ORDER BY x.pos
                        LIMIT 1) AS event
                  FROM changed c WHERE c.callback_url IS NOT NULL) due
         WHERE event IS NOT NULL
         ORDER BY id
        RETURNING id
    )
    SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM wake)
         + (SELECT count(*) FROM cancels),
           (SELECT array_agg(id ORDER BY id) FROM deliveries)
      INTO sent, delivery_ids;
    IF delivery_ids IS NOT NULL THEN
        PERFORM taskq_enqueue_webhook_deliveries(delivery_ids);
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION taskq_tasks_updated() IS
    'Per status change: a task_history row, dead letter on FAILED, NOTIFY, webhook deliveries.';

CREATE FUNCTION taskq_tasks_derived() RETURNS trigger
LANGUAGE plpgsql SET enable_nestloop = off SET jit = off AS $$
BEGIN
    -- Counters: one grouped row per key the statement changed (a batch claim of 1,000
    -- tasks of one owner, queue and type writes two: PENDING -1000, PROCESSING +1000).
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_count_deltas (user_id, queue, task_type, status, tasks, entered)
        SELECT coalesce(user_id, 0), queue, task_type, status, count(*), count(*)
          FROM new_rows
         GROUP BY 1, 2, 3, 4;
        INSERT INTO task_search (task_id, document)
        SELECT id, to_tsvector('simple', left(title || ' ' || description, 20000))
          FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO task_count_deltas (user_id, queue, task_type, status, tasks, entered)
        SELECT coalesce(user_id, 0), queue, task_type, status, -count(*), 0
          FROM old_rows
         GROUP BY 1, 2, 3, 4;
        DELETE FROM task_search s USING old_rows o WHERE s.task_id = o.id;
    ELSE
        INSERT INTO task_count_deltas (user_id, queue, task_type, status, tasks, entered)
        SELECT user_id, queue, task_type, status, sum(tasks), sum(entered)
          FROM (SELECT coalesce(o.user_id, 0) AS user_id, o.queue, o.task_type, o.status,
                       -1 AS tasks, 0 AS entered
                  FROM old_rows o
                 UNION ALL
                SELECT coalesce(n.user_id, 0), n.queue, n.task_type, n.status, 1,
                       CASE WHEN o.status IS DISTINCT FROM n.status THEN 1 ELSE 0 END
                  FROM new_rows n LEFT JOIN old_rows o ON o.id = n.id) changes
         GROUP BY 1, 2, 3, 4
        HAVING sum(tasks) <> 0 OR sum(entered) <> 0;
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION taskq_tasks_derived() IS
    'Per statement on tasks: its net change per owner, queue, type and status (task_count_deltas); the search documents of new and deleted tasks.';

CREATE FUNCTION taskq_tasks_dependents_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    candidate_ids bigint[];
    candidate_statuses text[];
    ended_ids bigint[];
    ended_statuses text[];
BEGIN
    -- Most statements end no task that has dependents: one scan of the new rows, no join.
    SELECT array_agg(n.id), array_agg(n.status::text) INTO candidate_ids, candidate_statuses
      FROM new_rows n
     WHERE n.has_dependents AND n.status IN ('COMPLETED', 'FAILED', 'CANCELLED');
    IF candidate_ids IS NULL THEN
        RETURN NULL;
    END IF;
    -- Planned for this call's sizes (EXECUTE), not a plan cached for an earlier batch.
    EXECUTE 'SELECT array_agg(c.id ORDER BY c.id), array_agg(c.status ORDER BY c.id)
               FROM unnest($1, $2) AS c(id, status)
               JOIN old_rows o ON o.id = c.id
              WHERE o.status::text <> c.status'
       INTO ended_ids, ended_statuses
      USING candidate_ids, candidate_statuses;
    IF ended_ids IS NOT NULL THEN
        PERFORM taskq_settle_dependents(ended_ids, ended_statuses);
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION taskq_tasks_dependents_updated() IS
    'After an UPDATE of tasks: settle the dependents of the parents that ended in it.';

CREATE FUNCTION taskq_tasks_dependents_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ended_ids bigint[];
    ended_statuses text[];
BEGIN
    -- A deleted parent that had not completed cancels its waiting children.
    SELECT array_agg(o.id ORDER BY o.id), array_agg('DELETED'::text ORDER BY o.id)
      INTO ended_ids, ended_statuses
      FROM old_rows o WHERE o.has_dependents AND o.status <> 'COMPLETED';
    IF ended_ids IS NOT NULL THEN
        PERFORM taskq_settle_dependents(ended_ids, ended_statuses);
    END IF;
    DELETE FROM task_dependencies d USING old_rows o
     WHERE o.has_dependents AND d.parent_id = o.id;
    DELETE FROM task_dependencies d
     USING (SELECT o.id, unnest(o.depends_on) AS parent_id
              FROM old_rows o WHERE o.depends_on IS NOT NULL) c
     WHERE d.parent_id = c.parent_id AND d.task_id = c.id;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION taskq_tasks_dependents_deleted() IS
    'After a DELETE of tasks: cancel the waiting children of unfinished parents; drop the edges.';

CREATE TRIGGER tasks_derived_inserted AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskq_tasks_derived();
CREATE TRIGGER tasks_derived_updated AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskq_tasks_derived();
CREATE TRIGGER tasks_derived_deleted AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskq_tasks_derived();
CREATE TRIGGER tasks_updated_dependents AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskq_tasks_dependents_updated();
CREATE TRIGGER tasks_deleted_dependents AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskq_tasks_dependents_deleted();
"""


def upgrade() -> None:
    """One trigger per event: the five extra ones go, three functions do their work."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Back to 0013: the functions as they were and the five triggers again."""
    op.execute(DOWNGRADE)
