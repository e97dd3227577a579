"""The all-tasks stream ``GET /api/v1/events`` over the real notifier: exact under writers
that commit out of history-id order, live and on resume, in one stable order."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from app.events import fetch_events, get_notifier
from sql import queries
from tests.helpers import (
    API,
    commit_transition,
    counted_in,
    held_transition,
    insert_tasks,
    last_history_id,
    wait_for,
)


@pytest.fixture
def stream_app(app):
    """The API with keep-alives every 0.1 s, so a reader of a quiet stream gets a turn."""
    app.config["TASKQ_SSE_KEEPALIVE"] = 0.1
    return app


def new_tasks(database_url: str, user_id: int, n: int) -> list[int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "INSERT INTO tasks (user_id, title) SELECT %s, 't' || n FROM generate_series(1, %s) n"
            " RETURNING id",
            (user_id, n),
        ).fetchall()
    return sorted(row[0] for row in rows)


class Stream:
    """An open SSE response of the test client, read event by event."""

    def __init__(self, client, path: str, headers: dict[str, str]) -> None:
        self.response = client.get(path, headers=headers, buffered=False)
        assert self.response.status_code == 200, self.response.get_data()
        self.chunks = iter(self.response.response)
        assert b": connected" in next(self.chunks)  # subscribed, replay done

    def read_until(self, done: Callable[[dict], bool], timeout: float = 30) -> list[dict]:
        """Events (``id``, ``event``, parsed ``data``) up to the first one ``done`` accepts."""
        deadline = time.monotonic() + timeout
        got: list[dict] = []
        for chunk in self.chunks:
            for block in chunk.decode().split("\n\n"):
                fields = dict(
                    line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
                )
                if "data" in fields:
                    got.append({**fields, "data": json.loads(fields["data"])})
                    if done(got[-1]):
                        return got
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching event after {timeout}s; got {got}")
        raise AssertionError(f"the stream ended; got {got}")

    def close(self) -> None:
        self.response.close()


def place(event_id: str) -> tuple[int, int]:
    """``<xact_id>-<history id>`` as a tuple that sorts like the stream's order."""
    xact_id, history_id = event_id.split("-")
    return int(xact_id), int(history_id)


def event_ids(events: list[dict]) -> list[int]:
    return [e["data"]["event_id"] for e in events]


def is_event(history_id: int) -> Callable[[dict], bool]:
    return lambda e: e["data"]["event_id"] == history_id


@pytest.fixture
def streams(stream_app) -> Iterator[list[Stream]]:
    """Streams a test opens, closed after it."""
    opened: list[Stream] = []
    yield opened
    for stream in opened:
        stream.close()


def open_stream(client, streams: list[Stream], account, **headers: str) -> Stream:
    stream = Stream(client, f"{API}/events", {**account.headers, **headers})
    streams.append(stream)
    return stream


def open_synced(client, streams: list[Stream], account, database_url: str) -> tuple[Stream, dict]:
    """A fresh stream read up to a transition of its own: earlier rows that only now became
    final (behind anybody's open transaction on the server) are behind it. That event too."""
    stream = open_stream(client, streams, account)
    [marker] = new_tasks(database_url, account.id, 1)
    synced = stream.read_until(is_event(commit_transition(database_url, marker, "CANCELLED")))
    return stream, synced[-1]


def test_an_out_of_order_commit_reaches_the_live_stream_and_a_resume_exactly_once(
    stream_app, client, make_account, database_url, streams
):
    ann = make_account("ann")
    first_task, second_task, marker = new_tasks(database_url, ann.id, 3)
    live, seen = open_synced(client, streams, ann, database_url)
    notifier = get_notifier(stream_app)

    batches = notifier.batches
    with held_transition(database_url, first_task, "PROCESSING") as first:
        second = commit_transition(database_url, second_task, "PROCESSING")
        wait_for(lambda: notifier.batches > batches, 10, "the notifier to hear the later commit")
        # A client that lost its connection comes back while the first writer is still open.
        resumed = open_stream(client, streams, ann, **{"Last-Event-ID": seen["id"]})
    assert first < second  # the lower id committed last
    end = commit_transition(database_url, marker, "COMPLETED")

    for stream in (live, resumed):
        got = stream.read_until(is_event(end))
        assert event_ids(got) == [first, second, end]  # no gap, no duplicate
        places = [place(e["id"]) for e in got]
        assert places == sorted(places) and places[0] > place(seen["id"])
        assert [e["data"]["id"] for e in got] == [first_task, second_task, marker]


def test_a_row_behind_a_transaction_that_ends_without_a_word_still_arrives(
    stream_app, client, make_account, database_url, streams
):
    ann = make_account("ann")
    [task] = new_tasks(database_url, ann.id, 1)
    live, _ = open_synced(client, streams, ann, database_url)
    notifier = get_notifier(stream_app)
    batches = notifier.batches
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT pg_current_xact_id()")  # holds an id, writes nothing
        waiting = commit_transition(database_url, task, "PROCESSING")
        wait_for(lambda: notifier.batches > batches, 10, "the notifier to hear the commit")
        holder.rollback()  # no notification follows: the re-check timer must deliver it
    assert event_ids(live.read_until(is_event(waiting))) == [waiting]


def test_a_task_keeps_its_order_when_an_older_transaction_writes_its_next_transition(
    stream_app, client, make_account, database_url, streams
):
    ann = make_account("ann")
    task, other = new_tasks(database_url, ann.id, 2)
    live, _ = open_synced(client, streams, ann, database_url)
    with psycopg.connect(database_url) as older:
        older.execute("UPDATE tasks SET title = 'x' WHERE id = %s", (other,))  # takes its id
        processing = commit_transition(database_url, task, "PROCESSING")  # a newer id, first
        older.execute("UPDATE tasks SET status = 'CANCELLED' WHERE id = %s", (task,))
        cancelled = older.execute(
            "SELECT max(id) FROM task_history WHERE task_id = %s", (task,)
        ).fetchone()[0]
    got = live.read_until(is_event(cancelled))
    assert event_ids(got) == [processing, cancelled]
    replayed = open_stream(client, streams, ann, **{"Last-Event-ID": "0-0"})
    got = replayed.read_until(is_event(cancelled))
    assert [(e["data"]["id"], e["event"]) for e in got if e["data"]["id"] == task] == [
        (task, "pending"),
        (task, "processing"),
        (task, "cancelled"),
    ]


def stats(client, account) -> tuple[dict[str, int], str]:
    """GET /tasks/stats: the counts by status and the snapshot they were read in."""
    response = client.get(f"{API}/tasks/stats", headers=account.headers)
    assert response.status_code == 200, response.get_data()
    body = response.get_json()
    return {row["status"]: row["count"] for row in body["stats"]}, body["snapshot"]


def test_an_event_held_back_after_a_read_that_counted_it_is_marked_counted_by_its_snapshot(
    stream_app, client, make_account, database_url, streams
):
    """The seam of the dashboard's counts: a transition commits, a read counts it, and only
    then does the stream deliver it (it waited behind an older open transaction)."""
    ann = make_account("ann")
    [task] = new_tasks(database_url, ann.id, 1)
    live, _ = open_synced(client, streams, ann, database_url)
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT pg_current_xact_id()")  # older than what follows: holds it back
        processing = commit_transition(database_url, task, "PROCESSING")
        counts, snapshot = stats(client, ann)
        assert counts["PROCESSING"] == 1 and counts["PENDING"] == 0  # the read counts it
        listed = client.get(f"{API}/tasks", headers=ann.headers).get_json()
        assert {row["id"]: row["status"] for row in listed["results"]}[task] == "PROCESSING"
        holder.rollback()
    [held] = live.read_until(is_event(processing))  # delivered after the read
    assert held["data"]["place_is_writer"] is True
    assert counted_in(snapshot, held) is True  # so a client adding events skips it
    assert counted_in(listed["snapshot"], held) is True  # and a list's row already shows it
    empty = client.get(f"{API}/tasks", headers=ann.headers, query_string={"queue": "none"})
    assert empty.get_json()["results"] == [] and empty.get_json()["snapshot"] is None
    later = commit_transition(database_url, task, "CANCELLED")
    [after] = live.read_until(is_event(later))
    assert counted_in(snapshot, after) is False  # a transition after the read is added
    assert counted_in(stats(client, ann)[1], after) is True


def test_a_transition_under_its_tasks_previous_place_says_the_snapshot_cannot_tell(
    stream_app, client, make_account, database_url, streams
):
    """An older transaction writes a task's next transition under the place of the newer
    one before it: its id names a transaction that did not write it, so a snapshot that
    sees that transaction says nothing about this one (place_is_writer false)."""
    ann = make_account("ann")
    task, other = new_tasks(database_url, ann.id, 2)
    live, _ = open_synced(client, streams, ann, database_url)
    with psycopg.connect(database_url) as older:
        older.execute("UPDATE tasks SET title = 'x' WHERE id = %s", (other,))  # takes its id
        processing = commit_transition(database_url, task, "PROCESSING")
        older.execute("UPDATE tasks SET status = 'CANCELLED' WHERE id = %s", (task,))
        cancelled = last_history_id(older, task)
        counts, snapshot = stats(client, ann)
        assert counts["PROCESSING"] == 1  # the cancel is not in the read yet
    got = live.read_until(is_event(cancelled))
    assert event_ids(got) == [processing, cancelled]
    assert place(got[0]["id"])[0] == place(got[1]["id"])[0]  # the same place's xact
    assert counted_in(snapshot, got[0]) is True
    assert got[1]["data"]["place_is_writer"] is False
    assert counted_in(snapshot, got[1]) is None  # not "counted": the read did not see it


def test_many_rows_at_once_page_through_the_cursor_in_order(
    stream_app, client, make_account, database_url, streams, monkeypatch
):
    monkeypatch.setattr("app.events.REPLAY_PAGE", 3)
    ann, bob = make_account("ann"), make_account("bob")
    tasks = new_tasks(database_url, ann.id, 4) + new_tasks(database_url, bob.id, 4)
    live, _ = open_synced(client, streams, ann, database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE tasks SET status = 'PROCESSING' WHERE id = ANY(%s)", (tasks,))
        ann_rows = conn.execute(
            "SELECT id FROM task_history WHERE user_id = %s AND to_status = 'PROCESSING'"
            " ORDER BY id",
            (ann.id,),
        ).fetchall()
    expected = [row[0] for row in ann_rows]
    assert event_ids(live.read_until(is_event(expected[-1]))) == expected
    resumed = open_stream(client, streams, ann, **{"Last-Event-ID": "0-0"})
    got = resumed.read_until(is_event(expected[-1]))
    assert [e["event"] for e in got] == ["pending"] * 5 + ["cancelled"] + ["processing"] * 4


def test_a_history_id_resumes_from_its_place_and_a_gone_one_is_refused(
    stream_app, client, make_account, database_url, streams
):
    ann = make_account("ann")
    gone, kept = new_tasks(database_url, ann.id, 2)
    after = commit_transition(database_url, kept, "PROCESSING")
    last = commit_transition(database_url, kept, "COMPLETED")
    resumed = open_stream(client, streams, ann, **{"Last-Event-ID": str(after)})
    assert event_ids(resumed.read_until(is_event(last))) == [last]

    gone_id = commit_transition(database_url, gone, "CANCELLED")
    assert client.delete(f"{API}/tasks/{gone}", headers=ann.headers).status_code == 200
    response = client.get(f"{API}/events", headers={**ann.headers, "Last-Event-ID": str(gone_id)})
    assert response.status_code == 400
    body = response.get_json()
    assert (
        set(body) == {"error", "field_errors"}
        and "deleted" in body["field_errors"]["Last-Event-ID"][0]
    )


BAD_LAST_EVENT_IDS = [
    ("/events", "abc"),
    ("/events", "1-2-3"),
    ("/events", "-5"),
    ("/events", "\u0661\u0662"),  # Arabic-Indic digits: int() takes them, we do not
    ("/events", "99999999999999999999"),
    ("/events", "1-99999999999999999999"),
    ("/tasks/{task}/events", "5-6"),  # a task stream resumes from a history id only
]


def test_a_bad_last_event_id_is_a_400(stream_app, client, make_account, database_url):
    ann = make_account("ann")
    [task] = new_tasks(database_url, ann.id, 1)
    for path, value in BAD_LAST_EVENT_IDS:
        url = API + path.format(task=task)
        for response in (
            client.get(url, headers={**ann.headers, "Last-Event-ID": value}),
            client.get(url, headers=ann.headers, query_string={"last_event_id": value}),
        ):
            assert response.status_code == 400, (path, value)
            assert set(response.get_json()) == {"error", "field_errors"}
            assert "Last-Event-ID" in response.get_json()["field_errors"]


def test_the_resume_point_that_does_not_count_is_checked_too(stream_app, client, make_account):
    # The header wins, but a bad query beside it is refused, as the document says of both.
    ann = make_account("ann")
    for value in ("\u0661", "5-6-7", "99999999999999999999"):
        response = client.get(
            f"{API}/events",
            headers={**ann.headers, "Last-Event-ID": "0-0"},
            query_string={"last_event_id": value},
        )
        assert response.status_code == 400, value
        assert set(response.get_json()["field_errors"]) == {"Last-Event-ID"}, value


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("ready_events", {"user_ids": [1], "everyone": False, "announced": [1, 2], "limit": 1000}),
        ("ready_events", {"user_ids": [], "everyone": True, "announced": [1, 2], "limit": 1000}),
        ("user_events_since", {"user_id": 1, "limit": 1000}),
        ("all_events_since", {"limit": 1000}),
        ("events_start", {}),
    ],
)
def test_the_all_tasks_queries_walk_the_place_index(database_url, db, name, params):
    db.execute("INSERT INTO tasks (user_id, title) SELECT NULL, 't' FROM generate_series(1, 20000)")
    db.execute("ANALYZE task_history")
    position = db.execute(
        "SELECT xact_id, id FROM task_history ORDER BY id OFFSET 15000 LIMIT 1"
    ).fetchone()
    params = {**params, "xact_id": position["xact_id"], "after": position["id"]}
    with psycopg.connect(database_url) as conn, psycopg.ClientCursor(conn) as cur:
        cur.execute("EXPLAIN " + queries[name], params)
        plan = "\n".join(row[0] for row in cur.fetchall())
    # Partitions (migration 0010): each is walked through its part of the place index;
    # only the empty ones (the days ahead, the default) may be read whole, for nothing.
    scans = re.findall(r"Seq Scan on (\S+) .*cost=[\d.]+\.\.([\d.]+)", plan)
    assert all(float(cost) == 0 for _, cost in scans), plan
    assert "_xact_id_id_idx on " in plan, plan


def test_announced_rows_are_found_around_now_and_in_older_partitions_too(db):
    # fetch_events looks in the hour around now first (pruning every other day kept), then
    # for the rest in every partition: a row written long before its announcement (a long
    # transaction) is still found, and a deleted task's rows are simply not there.
    ids = insert_tasks(db, 3)
    gone = insert_tasks(db, 1)
    written = db.execute(
        "SELECT id, task_id FROM task_history WHERE task_id = ANY(%s)", (ids + gone,)
    ).fetchall()
    history = {row["task_id"]: row["id"] for row in written}
    db.execute(
        "UPDATE task_history SET created_at = now() - interval '2 days' WHERE id = %s",
        (history[ids[0]],),
    )
    db.execute("DELETE FROM tasks WHERE id = %s", (gone[0],))
    rows = fetch_events(db, [history[i] for i in ids + gone])
    assert sorted(rows) == sorted(history[i] for i in ids)
    assert {row["task_id"] for row in rows.values()} == set(ids)
