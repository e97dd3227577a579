"""Steering with real processes: ``taskq api`` (gunicorn, 2 processes) and ``taskq worker``s.

Unique keys under 50 concurrent creates and on the batch path, snooze, progress
on the event streams, dependencies released by two workers finishing many
parents at once, batches of children made while their parents finish, and the
cancel cascade; and a seed 002 client's create, run by
a ``positional=True`` function, end to end.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
import pytest
import requests
from psycopg.rows import dict_row

from bench.sse_latency import local_token_factory
from tests.helpers import api_server, sse_events, wait_for
from tests.worker_helpers import start_worker, stop_worker
from tests.worker_tasks import LEDGER_DDL

pytestmark = pytest.mark.slow

SECRET = "steering-acceptance-secret-0123456789abcdef"
IMPORTS = {"TASKQ_IMPORTS": "tests.worker_tasks"}
API = "/api/v1"


@dataclass
class Server:
    url: str
    database_url: str

    def headers(self, username: str) -> dict[str, str]:
        token = local_token_factory(self.database_url, SECRET, username)()
        return {"Authorization": f"Bearer {token}"}

    def sql(self, statement: str, params=()) -> list[dict]:
        with psycopg.connect(self.database_url, autocommit=True, row_factory=dict_row) as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    def post(self, path: str, headers: dict, **body) -> requests.Response:
        return requests.post(f"{self.url}{API}{path}", json=body, headers=headers, timeout=30)

    def task(self, task_id: int) -> dict:
        return self.sql("SELECT * FROM tasks WHERE id = %s", (task_id,))[0]

    def history(self, task_id: int) -> list[tuple]:
        rows = self.sql(
            "SELECT from_status::text AS f, to_status::text AS t, attempt, error"
            " FROM task_history WHERE task_id = %s ORDER BY id",
            (task_id,),
        )
        return [(r["f"], r["t"], r["attempt"], r["error"]) for r in rows]


@pytest.fixture(scope="module")
def server(pg_server_url: str, template_database: str) -> Iterator[Server]:
    with api_server(
        pg_server_url, template_database, "taskq_steer", SECRET, 2,
        TASKQ_SSE_KEEPALIVE="0.5", **IMPORTS,
    ) as (url, database_url):  # fmt: skip
        live = Server(url, database_url)
        live.sql(LEDGER_DDL)
        yield live


@pytest.fixture
def workers(server: Server) -> Iterator[list]:
    """Two worker processes (two children each) on the server's database."""
    procs = [start_worker(server.database_url, "--concurrency", "2", **IMPORTS) for _ in range(2)]
    yield procs
    outputs = [stop_worker(proc) for proc in procs]
    for code, out in outputs:
        assert code == 0, out
        assert "deadlock" not in out.lower(), out


def finished(server: Server, ids: list[int]) -> bool:
    rows = server.sql(
        "SELECT count(*) AS n FROM tasks WHERE id = ANY(%s)"
        " AND status IN ('COMPLETED', 'FAILED', 'CANCELLED')",
        (ids,),
    )
    return rows[0]["n"] == len(ids)


# ------------------------------------------------------------------ unique keys


def test_fifty_concurrent_creates_with_one_unique_key_make_one_task(server: Server) -> None:
    headers = server.headers("uniq-ann")
    barrier = threading.Barrier(50)

    def create(_: int) -> requests.Response:
        barrier.wait()
        return server.post("/tasks", headers, title="once", task_type="noop", unique_key="k-50")

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(create, range(50)))
    codes = Counter(a.status_code for a in answers)
    assert codes == {201: 1, 200: 49}, codes
    ids = {a.json()["task"]["id"] for a in answers}
    assert len(ids) == 1
    stored = server.sql("SELECT id FROM tasks WHERE unique_key = 'k-50'")
    assert [r["id"] for r in stored] == list(ids)

    # Unique while unfinished: once it ended, the key makes a new task.
    (first,) = ids
    server.sql("UPDATE tasks SET status = 'COMPLETED' WHERE id = %s", (first,))
    again = server.post("/tasks", headers, title="twice", task_type="noop", unique_key="k-50")
    assert again.status_code == 201 and again.json()["task"]["id"] != first
    # Another user's key is theirs alone.
    other = server.post("/tasks", server.headers("uniq-bob"), title="b", task_type="noop",
                        unique_key="k-50")  # fmt: skip
    assert other.status_code == 201


def test_a_window_key_holds_whatever_the_status(server: Server) -> None:
    headers = server.headers("uniq-win")
    body = {"title": "w", "task_type": "noop", "unique_key": "hourly", "unique_for": 86400}
    first = server.post("/tasks", headers, **body)
    assert first.status_code == 201
    task_id = first.json()["task"]["id"]
    server.sql("UPDATE tasks SET status = 'COMPLETED' WHERE id = %s", (task_id,))
    again = server.post("/tasks", headers, **body)
    assert again.status_code == 200 and again.json()["task"]["id"] == task_id
    assert again.json()["task"]["status"] == "COMPLETED"


def test_batches_and_single_creates_racing_on_keys_make_one_task_per_key(server: Server) -> None:
    headers = server.headers("uniq-batch")
    keys = [f"b-{n}" for n in range(10)]
    batch = [{"title": k, "task_type": "noop", "unique_key": k} for k in keys * 2]
    barrier = threading.Barrier(16)

    def send(n: int) -> requests.Response:
        barrier.wait()
        if n % 2:
            return server.post("/tasks", headers, title="single", task_type="noop",
                               unique_key=keys[n % 10])  # fmt: skip
        return server.post("/tasks/batch", headers, tasks=batch)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, range(16)))
    assert all(a.status_code in (200, 201) for a in answers), [a.text for a in answers]
    counts = server.sql(
        "SELECT unique_key, count(*) AS n FROM tasks t JOIN users u ON u.id = t.user_id"
        " WHERE u.username = 'uniq-batch' GROUP BY 1 ORDER BY 1"
    )
    assert {r["unique_key"]: r["n"] for r in counts} == dict.fromkeys(keys, 1)
    held = {r["unique_key"]: r["id"] for r in server.sql(
        "SELECT unique_key, id FROM tasks WHERE unique_key LIKE 'b-%%'")}  # fmt: skip
    for answer in answers:
        body = answer.json()
        tasks = body["tasks"] if "tasks" in body else [body["task"]]
        assert all(t["id"] == held[t["unique_key"]] for t in tasks)
        if "tasks" in body:  # a batch's second half always met its first half's keys
            assert set(range(10, 20)) <= set(body["existing"])


# ------------------------------------------------------------------------ snooze


@pytest.mark.parametrize("raise_it", [False, True])
def test_snooze_runs_again_later_without_spending_an_attempt(
    server: Server, workers: list, raise_it: bool
) -> None:
    headers = server.headers("snoozer")
    created = server.post("/tasks", headers, title="s", task_type="snoozer", max_retries=0,
                          payload={"times": 2, "seconds": 0.2, "raise_it": raise_it})  # fmt: skip
    task_id = created.json()["task"]["id"]
    wait_for(lambda: finished(server, [task_id]), 60, "the snoozed task to finish")
    task = server.task(task_id)
    assert task["status"] == "COMPLETED", task
    assert task["attempts"] == 1 and task["snoozes"] == 2
    assert task["result"] == {"runs": 3, "attempt": 1}
    history = server.history(task_id)
    assert [(f, t) for f, t, _, _ in history] == [
        (None, "PENDING"),
        ("PENDING", "PROCESSING"),
        ("PROCESSING", "RETRYING"),
        ("RETRYING", "PROCESSING"),
        ("PROCESSING", "RETRYING"),
        ("RETRYING", "PROCESSING"),
        ("PROCESSING", "COMPLETED"),
    ]
    snoozes = [h for h in history if h[1] == "RETRYING"]
    assert all(h[2] == 0 and h[3].startswith("Snoozed for 0.2 s") for h in snoozes), snoozes


# ---------------------------------------------------------------------- progress


def test_progress_reaches_the_task_stream_and_the_all_tasks_stream(
    server: Server, workers: list
) -> None:
    headers = server.headers("progress-ann")
    everything = requests.get(f"{server.url}{API}/events", headers=headers, stream=True,
                              timeout=(5, 30))  # fmt: skip
    created = server.post("/tasks", headers, title="p", task_type="reporter",
                          payload={"reports": 150, "pause": 0.02})  # fmt: skip
    task_id = created.json()["task"]["id"]
    path = f"{server.url}{API}/tasks/{task_id}/events"
    stream = requests.get(path, headers=headers, stream=True, timeout=(5, 30))
    seen, reopened = [], None
    for event in sse_events(stream):  # the task stream ends with the task
        seen.append(event)
        if event["event"] == "progress" and reopened is None:
            # A reconnect mid-run (after the last transition seen) starts with the value now.
            last = [e["id"] for e in seen if "id" in e][-1]
            again = requests.get(path, headers={**headers, "Last-Event-ID": last}, stream=True,
                                 timeout=(5, 30))  # fmt: skip
            reopened = next(sse_events(again))
            again.close()
    stream.close()
    assert reopened["event"] == "progress" and "id" not in reopened, reopened
    progress = [json.loads(e["data"]) for e in seen if e["event"] == "progress"]
    assert progress, seen
    assert all("id" not in e for e in seen if e["event"] == "progress")  # no Last-Event-ID moves
    assert progress[-1]["progress"] == 100.0 and progress[-1]["message"] == "step 150"
    values = [p["progress"] for p in progress]
    assert values == sorted(values)
    statuses = [e["event"] for e in seen if e["event"] != "progress"]
    assert statuses[-1] == "completed"
    # Rate-limited: the 150 reports took at least 3 s; at most 4 writes a second land, plus
    # the last one (a busy machine only writes fewer).
    task = server.task(task_id)
    ran = (task["completed_at"] - task["started_at"]).total_seconds()
    assert len(progress) <= ran / 0.25 + 3, (len(progress), ran)
    assert task["progress"] == 100.0 and task["progress_message"] == "step 150"

    got = []
    for event in sse_events(everything):
        got.append(event)
        if event["event"] == "completed" and json.loads(event["data"])["id"] == task_id:
            break
    everything.close()
    mine = [json.loads(e["data"]) for e in got if e["event"] == "progress"]
    assert mine and mine[-1] == {**progress[-1]}


# ------------------------------------------------------------------ dependencies


def test_two_workers_finishing_many_parents_at_once_release_their_children(
    server: Server,
) -> None:
    headers = server.headers("deps-ann")
    later = "2100-01-01T00:00:00Z"  # not due until both workers are up (then due at once)
    tasks = [{"title": f"p{n}", "task_type": "noop", "scheduled_at": later} for n in range(100)]
    batch = server.post("/tasks/batch", headers, tasks=tasks)
    parents = [t["id"] for t in batch.json()["tasks"]]
    children = []
    for n in range(4):  # every child waits for all 100 parents: each finishing batch locks all
        answer = server.post("/tasks", headers, title=f"c{n}", task_type="noop",
                             depends_on=parents)  # fmt: skip
        assert answer.status_code == 201, answer.text
        assert answer.json()["task"]["status"] == "WAITING"
        assert answer.json()["task"]["pending_parents"] == 100
        children.append(answer.json()["task"]["id"])
    grandchild = server.post("/tasks", headers, title="g", task_type="noop",
                             depends_on=children).json()["task"]["id"]  # fmt: skip
    procs = [start_worker(server.database_url, "--concurrency", "4", TASKQ_BATCH_SIZE="10",
                          **IMPORTS) for _ in range(2)]  # fmt: skip
    try:
        registered = "SELECT count(*) AS n FROM workers"
        wait_for(lambda: server.sql(registered)[0]["n"] >= 8, 60, "8 worker children")
        server.sql("UPDATE tasks SET scheduled_at = NULL, run_at = now() WHERE id = ANY(%s)",
                   (parents,))  # fmt: skip
        server.sql("SELECT pg_notify('taskq_wakeup', 'default')")
        wait_for(lambda: finished(server, [*parents, *children, grandchild]), 90, "all done")
    finally:
        outputs = [stop_worker(proc) for proc in procs]
    for code, out in outputs:
        assert code == 0 and "deadlock" not in out.lower(), out
    rows = server.sql(
        "SELECT id, status::text AS s, pending_parents, started_at FROM tasks WHERE id = ANY(%s)",
        ([*children, grandchild],),
    )
    assert {r["s"] for r in rows} == {"COMPLETED"} and {r["pending_parents"] for r in rows} == {0}
    workers_seen = server.sql(
        "SELECT count(DISTINCT worker_id) AS n FROM task_history WHERE task_id = ANY(%s)"
        " AND to_status = 'COMPLETED'",
        (parents,),
    )
    assert workers_seen[0]["n"] >= 2  # the parents really finished on different workers
    # History times are clock_timestamp() (tasks' timestamps are their transaction's start):
    # no child started before the last parent completed.
    last_parent = server.sql(
        "SELECT max(created_at) AS at FROM task_history WHERE task_id = ANY(%s)"
        " AND to_status = 'COMPLETED'",
        (parents,),
    )[0]["at"]
    first_start = server.sql(
        "SELECT min(created_at) AS at FROM task_history WHERE task_id = ANY(%s)"
        " AND to_status = 'PROCESSING'",
        ([*children, grandchild],),
    )[0]["at"]
    assert first_start >= last_parent
    for child in children:
        assert [(f, t) for f, t, _, _ in server.history(child)] == [
            (None, "WAITING"),
            ("WAITING", "PENDING"),
            ("PENDING", "PROCESSING"),
            ("PROCESSING", "COMPLETED"),
        ]


def test_batches_of_children_created_while_two_workers_finish_their_parents(
    server: Server, workers: list
) -> None:
    headers = server.headers("deps-batch")
    running = [{"title": f"a{n}", "task_type": "ledger", "payload": {"sleep": 0.02}}
               for n in range(100)]  # fmt: skip
    held = [{"title": f"b{n}", "task_type": "noop", "scheduled_at": "2100-01-01T00:00:00Z"}
            for n in range(100)]  # fmt: skip
    made = server.post("/tasks/batch", headers, tasks=running + held).json()["tasks"]
    parents = [t["id"] for t in made]
    done = "SELECT count(*) AS n FROM tasks WHERE id = ANY(%s) AND status = 'COMPLETED'"
    wait_for(lambda: server.sql(done, (parents,))[0]["n"] >= 20, 60, "parents finishing")

    def children(n: int) -> requests.Response:  # 10 children of 1-5 parents each, a batch
        picks = [sorted({parents[(n * 37 + k * 53 + j * 11) % 200] for j in range(1 + k % 5)})
                 for k in range(10)]  # fmt: skip
        batch = [{"title": f"c{n}.{k}", "task_type": "noop", "depends_on": p}
                 for k, p in enumerate(picks)]  # fmt: skip
        return server.post("/tasks/batch", headers, tasks=batch)

    with ThreadPoolExecutor(4) as pool:  # while the workers finish the first 100 parents
        answers = list(pool.map(children, range(40)))
    assert {a.status_code for a in answers} == {201}, [a.text for a in answers]
    made = sorted((t for a in answers for t in a.json()["tasks"]), key=lambda t: t["id"])
    states = Counter(task["status"] for task in made)
    assert set(states) <= {"WAITING", "PENDING"} and states["WAITING"] > 0, states
    server.sql("UPDATE tasks SET scheduled_at = NULL, run_at = now() WHERE id = ANY(%s)",
               (parents[100:],))  # fmt: skip
    server.sql("SELECT pg_notify('taskq_wakeup', 'default')")
    ids = [task["id"] for task in made]
    wait_for(lambda: finished(server, [*parents, *ids]), 90, "every child run")
    rows = server.sql(
        "SELECT t.id, t.status::text AS s, t.pending_parents AS n,"
        " (SELECT min(created_at) FROM task_history h WHERE h.task_id = t.id"
        "   AND h.to_status = 'PROCESSING') AS started,"
        " (SELECT max(h.created_at) FROM task_dependencies d JOIN task_history h"
        "   ON h.task_id = d.parent_id AND h.to_status = 'COMPLETED'"
        "   WHERE d.task_id = t.id) AS last_parent,"
        " (SELECT count(*) FROM task_dependencies d WHERE d.task_id = t.id) AS edges"
        " FROM tasks t WHERE t.id = ANY(%s) ORDER BY t.id",
        (ids,),
    )
    for row, task in zip(rows, made, strict=True):
        assert (row["s"], row["n"], row["edges"]) == ("COMPLETED", 0, len(task["depends_on"]))
        assert row["started"] >= row["last_parent"], row  # never before its last parent
        steps = [(f, t) for f, t, _, _ in server.history(row["id"])]
        release = [(None, "WAITING"), ("WAITING", "PENDING")]
        assert steps == [*(release if task["status"] == "WAITING" else [(None, "PENDING")]),
                         ("PENDING", "PROCESSING"), ("PROCESSING", "COMPLETED")]  # fmt: skip
    print("children created WAITING / PENDING:", states["WAITING"], states["PENDING"])


def test_a_failed_parent_cancels_its_dependents_and_theirs(server: Server, workers: list) -> None:
    headers = server.headers("deps-fail")
    ok = server.post("/tasks", headers, title="ok", task_type="ledger",
                     payload={"sleep": 1.5}).json()["task"]["id"]  # fmt: skip
    bad = server.post("/tasks", headers, title="bad", task_type="fail",
                      max_retries=0).json()["task"]["id"]  # fmt: skip
    child = server.post("/tasks", headers, title="c", task_type="noop",
                        depends_on=[ok, bad]).json()["task"]["id"]  # fmt: skip
    grandchild = server.post("/tasks", headers, title="g", task_type="noop",
                             depends_on=[child]).json()["task"]["id"]  # fmt: skip
    wait_for(lambda: finished(server, [ok, bad, child, grandchild]), 60, "the cascade")
    assert server.task(bad)["status"] == "FAILED"
    assert server.task(ok)["status"] == "COMPLETED"
    for task_id, parent, how in ((child, bad, "FAILED"), (grandchild, child, "CANCELLED")):
        task = server.task(task_id)
        assert task["status"] == "CANCELLED"
        assert task["error"] == f"Cancelled: parent task {parent} ended {how}."
        assert [(f, t) for f, t, _, _ in server.history(task_id)] == [
            (None, "WAITING"),
            ("WAITING", "CANCELLED"),
        ]


# ------------------------------------------------ seed 002's request, end to end


def test_a_seed_002_create_runs_its_positional_function_and_reads_as_success(
    server: Server, workers: list
) -> None:
    """Seed 002's body over HTTP, a ``positional=True`` function in a real worker, and the
    seed's status name in a filter: what a seed 002 client does, start to finish."""
    headers = server.headers("seed2")
    body = {"task_name": "add_numbers", "args": [10, 20], "kwargs": {"scale": 2},
            "queue_name": "default"}  # fmt: skip
    created = requests.post(f"{server.url}{API}/tasks/", json=body, headers=headers, timeout=30)
    assert created.status_code == 201, created.text
    task_id = created.json()["task"]["id"]
    wait_for(lambda: finished(server, [task_id]), 60, "the seed 002 task to finish")
    done = requests.get(f"{server.url}{API}/tasks/{task_id}", headers=headers, timeout=30).json()
    assert (done["task"]["status"], done["task"]["result"]) == ("COMPLETED", 60), done
    listed = requests.get(
        f"{server.url}{API}/tasks", params={"status": "success"}, headers=headers, timeout=30
    ).json()
    assert [t["id"] for t in listed["results"]] == [task_id], listed
