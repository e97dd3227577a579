"""Server-sent events over real HTTP against ``taskq api`` (gunicorn, gevent, 2 processes)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import psycopg
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.sse_latency import StreamSet, local_token_factory
from tests.helpers import (
    api_server,
    commit_transition,
    held_transition,
    sse_events,
    wait_for,
)

pytestmark = pytest.mark.slow

SECRET = "sse-acceptance-secret-0123456789abcdef"


@dataclass
class Server:
    url: str
    database_url: str

    def token(self, username: str) -> str:
        return local_token_factory(self.database_url, SECRET, username)()

    def user_id(self, username: str) -> int:
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(
                "SELECT id FROM users WHERE lower(username) = lower(%s)", (username,)
            ).fetchone()[0]

    def sql(self, statement: str, params=()) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []


def running_server(pg_server_url: str, template_database: str, workers: int) -> Iterator[Server]:
    """``taskq api`` with ``workers`` processes on a database of its own."""
    with api_server(
        pg_server_url, template_database, "taskq_sse", SECRET, workers, TASKQ_SSE_KEEPALIVE="0.5"
    ) as (url, database_url):
        yield Server(url, database_url)


@pytest.fixture(scope="module")
def server(pg_server_url: str, template_database: str) -> Iterator[Server]:
    yield from running_server(pg_server_url, template_database, workers=2)


@pytest.fixture(scope="module")
def single_server(pg_server_url: str, template_database: str) -> Iterator[Server]:
    """One API process: a task stream there shows what its notifier has heard."""
    yield from running_server(pg_server_url, template_database, workers=1)


def open_stream(server: Server, path: str, token: str, **headers: str) -> requests.Response:
    response = requests.get(
        f"{server.url}{path}",
        headers={"Authorization": f"Bearer {token}", **headers},
        stream=True,
        timeout=(5, 10),
    )
    assert response.status_code == 200, response.text
    return response


def new_task(server: Server, username: str) -> int:
    return server.sql(
        "INSERT INTO tasks (user_id, title) VALUES (%s, 't') RETURNING id",
        (server.user_id(username),),
    )[0][0]


def set_status(server: Server, task_id: int, status: str) -> None:
    server.sql("UPDATE tasks SET status = %s WHERE id = %s", (status, task_id))


def test_events_arrive_in_order_and_the_stream_closes_when_finished(server):
    token = server.token("ann")
    task_id = new_task(server, "ann")
    response = open_stream(server, f"/api/v1/tasks/{task_id}/events", token)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.headers["Cache-Control"] == "no-cache"
    stream = sse_events(response)
    assert next(stream)["event"] == "pending"  # the history so far
    flow = ["PROCESSING", "RETRYING", "PROCESSING", "COMPLETED"]
    for status in flow:
        set_status(server, task_id, status)
    received = list(stream)  # ends: the server closes after COMPLETED
    assert [e["event"] for e in received] == [s.lower() for s in flow]
    ids = [int(e["id"]) for e in received]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_resume_after_a_dropped_connection_without_gap_or_duplicate(server):
    token = server.token("ann")
    task_id = new_task(server, "ann")
    first = open_stream(server, f"/api/v1/tasks/{task_id}/events", token)
    stream = sse_events(first)
    seen = [next(stream)]
    set_status(server, task_id, "PROCESSING")
    seen.append(next(stream))
    first.close()  # the connection drops
    set_status(server, task_id, "RETRYING")
    set_status(server, task_id, "PROCESSING")

    # EventSource style: a stream token in the URL, and the last id as a query parameter.
    stream_token = requests.post(
        f"{server.url}/api/v1/events/token", headers={"Authorization": f"Bearer {token}"}
    ).json()["token"]
    second = requests.get(
        f"{server.url}/api/v1/tasks/{task_id}/events",
        params={"token": stream_token, "last_event_id": seen[-1]["id"]},
        stream=True,
        timeout=(5, 10),
    )
    assert second.status_code == 200
    resumed = sse_events(second)
    replayed = [next(resumed), next(resumed)]
    set_status(server, task_id, "COMPLETED")
    replayed += list(resumed)
    assert [e["event"] for e in seen + replayed] == [
        "pending",
        "processing",
        "retrying",
        "processing",
        "completed",
    ]
    all_ids = [int(e["id"]) for e in seen + replayed]
    assert all_ids == sorted(set(all_ids))


def test_a_late_subscriber_gets_the_history_then_204_once_seen(server):
    token = server.token("ann")
    task_id = new_task(server, "ann")
    for status in ("PROCESSING", "FAILED"):
        set_status(server, task_id, status)
    received = list(sse_events(open_stream(server, f"/api/v1/tasks/{task_id}/events", token)))
    assert [e["event"] for e in received] == ["pending", "processing", "failed"]
    again = requests.get(
        f"{server.url}/api/v1/tasks/{task_id}/events",
        headers={"Authorization": f"Bearer {token}", "Last-Event-ID": received[-1]["id"]},
        timeout=5,
    )
    assert again.status_code == 204  # EventSource stops reconnecting


def transitions(received: list[dict[str, str]]) -> list[dict[str, str]]:
    """The events of an all-tasks stream but the creations: a fresh stream starts at the end of
    the final places, so a creation committed just before it opened may still arrive."""
    return [e for e in received if e["event"] != "pending"]


def test_200_concurrent_streams_each_receive_their_events(server):
    token = server.token("bob")
    user_id = server.user_id("bob")
    task_ids = [
        row[0]
        for row in server.sql(
            "INSERT INTO tasks (user_id, title) SELECT %s, 'c' || n FROM generate_series(1, 200) n "
            "RETURNING id",
            (user_id,),
        )
    ]
    parts = urlsplit(server.url)
    auth = {"Authorization": f"Bearer {token}"}
    paths = [(f"/api/v1/tasks/{t}/events", auth) for t in task_ids] + [("/api/v1/events", auth)]
    streams = StreamSet(parts.hostname, parts.port, paths).start()
    try:
        assert wait_for(lambda: all(streams.events[i] for i in range(200)), 30)
        scrape = requests.get(f"{server.url}/metrics", timeout=5).text
        open_now = {
            s.name: s.value
            for family in text_string_to_metric_families(scrape)
            for s in family.samples
        }["taskq_sse_streams_open"]
        assert open_now == 201  # summed over both gunicorn processes
        server.sql("UPDATE tasks SET status = 'PROCESSING' WHERE id = ANY(%s)", (task_ids,))
        server.sql("UPDATE tasks SET status = 'COMPLETED' WHERE id = ANY(%s)", (task_ids,))
        assert wait_for(lambda: len(streams.closed) >= 200, 30)
        assert wait_for(lambda: len(transitions(streams.events[200])) == 400, 30)
    finally:
        streams.close()
    for index, task_id in enumerate(task_ids):
        got = streams.events[index]
        assert [e["event"] for e in got] == ["pending", "processing", "completed"], index
        assert {f'"id":{task_id},' in e["data"] for e in got} == {True}
    user_stream = transitions(streams.events[200])
    assert sorted(e["event"] for e in user_stream) == ["completed"] * 200 + ["processing"] * 200
    assert {streams.status[i] for i in range(201)} == {200}


def test_keep_alive_comments_and_retry(server):
    token = server.token("ann")
    response = requests.get(
        f"{server.url}/api/v1/events",
        headers={"Authorization": f"Bearer {token}"},
        stream=True,
        timeout=(5, 5),
    )
    lines = response.iter_lines(decode_unicode=True)
    first = [next(lines) for _ in range(3)]
    assert first[0].startswith("retry: ")
    assert wait_for(lambda: next(lines) == ": keep-alive", 3)
    response.close()


def test_error_bodies(server):
    token = server.token("ann")
    server.token("carl")  # creates carl
    other_task = new_task(server, "carl")
    checks = [
        (requests.get(f"{server.url}/api/v1/events", timeout=5), 401),
        # A long-lived access token is never accepted in a URL.
        (requests.get(f"{server.url}/api/v1/events", params={"token": token}, timeout=5), 401),
        (
            requests.get(
                f"{server.url}/api/v1/tasks/{other_task}/events",
                headers={"Authorization": f"Bearer {token}"},
                timeout=5,
            ),
            404,
        ),
        (
            requests.get(
                f"{server.url}/api/v1/events",
                headers={"Authorization": f"Bearer {token}", "Last-Event-ID": "abc"},
                timeout=5,
            ),
            400,
        ),
        (requests.post(f"{server.url}/api/v1/events/token", timeout=5), 401),
    ]
    for response, status in checks:
        assert response.status_code == status, response.text
        assert set(response.json()) == {"error", "field_errors"}


def read_until(stream: Iterator[dict[str, str]], history_id: int) -> list[dict]:
    """Events of ``stream`` (data parsed) up to the one of ``history_id``."""
    got = []
    for event in stream:
        got.append({**event, "data": json.loads(event["data"])})
        if got[-1]["data"]["event_id"] == history_id:
            return got
    raise AssertionError(f"the stream ended before event {history_id}: {got}")


@pytest.mark.parametrize("which", ["single_server", "server"])
def test_out_of_order_commits_reach_every_all_tasks_stream_and_a_resume_exactly_once(
    request, which
):
    server = request.getfixturevalue(which)
    username = f"dora_{which}"
    token = server.token(username)
    first_task, second_task, marker = (new_task(server, username) for _ in range(3))
    follow = sse_events(open_stream(server, f"/api/v1/tasks/{second_task}/events", token))
    assert next(follow)["event"] == "pending"
    live = [sse_events(open_stream(server, "/api/v1/events", token)) for _ in range(4)]
    # Each stream read up to a transition of its own: what was not yet final when it
    # opened (behind anybody's open transaction) is behind it.
    start = commit_transition(server.database_url, marker, "PROCESSING")
    seen = [read_until(stream, start)[-1]["id"] for stream in live]
    assert len(set(seen)) == 1

    with held_transition(server.database_url, first_task, "PROCESSING") as first:
        second = commit_transition(server.database_url, second_task, "PROCESSING")
        # The task stream has it: that process's notifier heard the later commit first.
        assert json.loads(next(follow)["data"])["event_id"] == second
        resumed = sse_events(
            open_stream(server, "/api/v1/events", token, **{"Last-Event-ID": seen[0]})
        )
    assert first < second
    end = commit_transition(server.database_url, marker, "COMPLETED")

    for stream in [*live, resumed]:
        got = read_until(stream, end)
        assert [e["data"]["event_id"] for e in got] == [first, second, end]
        places = [tuple(int(part) for part in e["id"].split("-")) for e in got]
        assert places == sorted(places)


def test_the_admin_stream_carries_every_users_transitions_and_only_admins_open_it(server):
    root, ann = server.token("root"), server.token("ann")
    server.token("bob")
    server.sql("UPDATE users SET is_admin = true WHERE username = 'root'")
    ann_task, bob_task = new_task(server, "ann"), new_task(server, "bob")
    stream = sse_events(open_stream(server, "/api/v1/admin/events", root))
    set_status(server, ann_task, "PROCESSING")
    set_status(server, bob_task, "PROCESSING")
    # A stream opened without Last-Event-ID starts where its process's notifier is: under
    # load that can be before the two creations (final only once every older transaction
    # in the cluster has ended), so they may come first.
    processing = (event for event in stream if event["event"] == "processing")
    first, second = next(processing), next(processing)
    assert f'"id":{ann_task},' in first["data"]
    assert f'"id":{bob_task},' in second["data"]
    # Resuming replays what was missed, like the other streams.
    set_status(server, ann_task, "COMPLETED")
    resumed = requests.get(
        f"{server.url}/api/v1/admin/events",
        headers={"Authorization": f"Bearer {root}", "Last-Event-ID": second["id"]},
        stream=True,
        timeout=(5, 10),
    )
    assert resumed.status_code == 200
    replayed = next(sse_events(resumed))
    assert replayed["event"] == "completed" and f'"id":{ann_task},' in replayed["data"]
    resumed.close()
    # A user is refused, with a bearer token or a stream token.
    refused = requests.get(
        f"{server.url}/api/v1/admin/events", headers={"Authorization": f"Bearer {ann}"}, timeout=5
    )
    assert refused.status_code == 403 and refused.json()["error"] == "Admins only."
    stream_token = requests.post(
        f"{server.url}/api/v1/events/token", headers={"Authorization": f"Bearer {ann}"}, timeout=5
    ).json()["token"]
    by_token = requests.get(
        f"{server.url}/api/v1/admin/events", params={"token": stream_token}, timeout=5
    )
    assert by_token.status_code == 403
    assert requests.get(f"{server.url}/api/v1/admin/events", timeout=5).status_code == 401
