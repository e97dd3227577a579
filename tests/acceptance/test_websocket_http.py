"""WebSocket streams over real sockets against ``taskq api`` (gunicorn, gevent, 2 processes),
with a real WebSocket client (websocket-client)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg
import pytest
import requests
import websocket
from prometheus_client.parser import text_string_to_metric_families

from bench.sse_latency import local_token_factory
from tests.helpers import api_server, chromium_browser, wait_for

pytestmark = pytest.mark.slow

SECRET = "ws-acceptance-secret-0123456789abcdef"


class Server:
    def __init__(self, url: str, database_url: str) -> None:
        self.url = url
        self.ws_url = "ws://" + urlsplit(url).netloc
        self.database_url = database_url

    def token(self, username: str) -> str:
        return local_token_factory(self.database_url, SECRET, username)()

    def stream_token(self, access: str) -> str:
        response = requests.post(
            f"{self.url}/api/v1/events/token",
            headers={"Authorization": f"Bearer {access}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return response.json()["token"]

    def sql(self, statement: str, params=()) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    def new_task(self, username: str) -> int:
        return self.sql(
            "INSERT INTO tasks (user_id, title) SELECT id, 't' FROM users "
            "WHERE lower(username) = lower(%s) RETURNING id",
            (username,),
        )[0][0]

    def set_status(self, task_id: int, status: str) -> None:
        self.sql("UPDATE tasks SET status = %s WHERE id = %s", (status, task_id))


@pytest.fixture(scope="module")
def server(pg_server_url: str, template_database: str) -> Iterator[Server]:
    with api_server(
        pg_server_url, template_database, "taskq_ws", SECRET, 2, TASKQ_SSE_KEEPALIVE="0.5"
    ) as (url, database_url):
        yield Server(url, database_url)


OPENED: list[websocket.WebSocket] = []


@pytest.fixture(autouse=True)
def _shut_sockets() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().shutdown()


def connect(server: Server, path: str, header=(), **query: str) -> websocket.WebSocket:
    url = f"{server.ws_url}{path}?" + "&".join(f"{k}={v}" for k, v in query.items())
    ws = websocket.create_connection(url, timeout=10, header=list(header))
    OPENED.append(ws)
    return ws


CLOSE_CODES: dict[int, int] = {}  # id(ws) -> the code of the close frame the server sent


def messages(ws: websocket.WebSocket) -> Iterator[dict]:
    """The JSON messages of ``ws`` until the server closes it (its code in CLOSE_CODES)."""
    while True:
        opcode, data = ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            CLOSE_CODES[id(ws)] = int.from_bytes(data[:2], "big")
            return
        yield json.loads(data)


def close_code(ws: websocket.WebSocket) -> int:
    return CLOSE_CODES[id(ws)]


def refusal(server: Server, path: str, **query: str) -> int:
    with pytest.raises(websocket.WebSocketBadStatusException) as caught:
        connect(server, path, **query)
    return caught.value.status_code


def test_a_task_stream_sends_its_history_and_transitions_and_closes_when_finished(server):
    token = server.stream_token(server.token("ann"))
    task_id = server.new_task("ann")
    ws = connect(server, f"/ws/tasks/{task_id}/", token=token)
    stream = messages(ws)
    first = next(stream)
    assert first["status"] == "PENDING" and first["id"] == task_id
    assert first["event"] == "pending" and first["last_event_id"] == str(first["event_id"])
    flow = ["PROCESSING", "RETRYING", "PROCESSING", "COMPLETED"]
    for status in flow:
        server.set_status(task_id, status)
    received = []
    for message in stream:
        received.append(message)
    assert [m["status"] for m in received] == flow
    ids = [m["event_id"] for m in received]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and ids[0] > first["event_id"]
    assert "result" in received[-1]  # the SSE data, as it is
    assert ws.getstatus() == 101 and close_code(ws) == 1000


def test_resume_with_last_event_id_has_no_gap_and_no_duplicate(server):
    access = server.token("ann")
    task_id = server.new_task("ann")
    ws = connect(server, f"/ws/tasks/{task_id}/", token=server.stream_token(access))
    stream = messages(ws)
    seen = [next(stream)]
    server.set_status(task_id, "PROCESSING")
    seen.append(next(stream))
    ws.close()
    server.set_status(task_id, "RETRYING")  # while nobody listens
    server.set_status(task_id, "PROCESSING")
    ws = connect(
        server,
        f"/ws/tasks/{task_id}/",
        token=server.stream_token(access),
        last_event_id=seen[-1]["last_event_id"],
    )
    stream = messages(ws)
    seen.append(next(stream))
    seen.append(next(stream))
    server.set_status(task_id, "FAILED")
    seen.extend(stream)
    assert [m["status"] for m in seen] == [
        "PENDING",
        "PROCESSING",
        "RETRYING",
        "PROCESSING",
        "FAILED",
    ]
    history = [row[0] for row in server.sql(
        "SELECT id FROM task_history WHERE task_id = %s ORDER BY id", (task_id,)
    )]  # fmt: skip
    assert [m["event_id"] for m in seen] == history


def test_the_all_tasks_stream_carries_only_the_callers_tasks(server):
    ws = connect(server, "/ws/tasks/", token=server.stream_token(server.token("ann")))
    server.token("bob")
    bobs = server.new_task("bob")
    anns = server.new_task("ann")
    server.set_status(bobs, "PROCESSING")
    server.set_status(anns, "PROCESSING")
    stream = messages(ws)
    got = []
    while len(got) < 2:  # ann's earlier tasks' last events may still arrive: not bob's
        message = next(stream)
        assert message["id"] != bobs
        if message["id"] == anns:
            got.append(message)
    assert [(m["id"], m["status"]) for m in got] == [(anns, "PENDING"), (anns, "PROCESSING")]
    assert all("-" in m["last_event_id"] for m in got)  # a place in the all-tasks order
    ws.close()
    # resuming from the first place gives the second again, then goes live
    ws = connect(
        server,
        "/ws/tasks/",
        token=server.stream_token(server.token("ann")),
        last_event_id=got[0]["last_event_id"],
    )
    assert next(messages(ws))["last_event_id"] == got[1]["last_event_id"]
    ws.close()


def test_refused_before_the_upgrade(server):
    ann = server.token("ann")
    server.token("bob")
    bobs = server.new_task("bob")
    anns = server.new_task("ann")
    token = server.stream_token(ann)
    assert refusal(server, f"/ws/tasks/{bobs}/", token=token) == 404  # another user's task
    assert refusal(server, f"/ws/tasks/{anns}/", token="not-a-token") == 401
    assert (
        refusal(server, f"/ws/tasks/{anns}/", token=ann) == 401
    )  # an access token is no stream token
    assert refusal(server, f"/ws/tasks/{anns}/") == 401
    assert refusal(server, "/ws/tasks/", token="x.y.z") == 401
    assert refusal(server, f"/ws/tasks/{anns}/", token=token, last_event_id="nope") == 400
    plain = requests.get(f"{server.url}/ws/tasks/{anns}/?token={token}", timeout=10)
    assert plain.status_code == 426 and plain.json()["error"]


def test_a_bearer_header_is_accepted_and_logout_closes_the_socket(server):
    access = server.token("carl")
    task_id = server.new_task("carl")
    ws = connect(server, f"/ws/tasks/{task_id}/", header=[f"Authorization: Bearer {access}"])
    stream = messages(ws)
    assert next(stream)["status"] == "PENDING"
    out = requests.post(
        f"{server.url}/api/v1/auth/logout",
        headers={"Authorization": f"Bearer {access}"},
        timeout=10,
    )
    assert out.status_code == 200, out.text
    assert list(stream) == []  # the stream guard ended it
    assert close_code(ws) == 1001


def streams_open(server: Server) -> float:
    scrape = requests.get(f"{server.url}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(scrape)
        for sample in family.samples
        if sample.name == "taskq_sse_streams_open"
    )


def test_a_client_that_leaves_ends_its_stream_on_the_server(server):
    token = server.stream_token(server.token("dora"))
    before = streams_open(server)
    sockets = [connect(server, "/ws/tasks/", token=token) for _ in range(3)]
    assert wait_for(lambda: streams_open(server) == before + 3, 20)
    sockets[0].close()  # a close frame
    sockets[1].shutdown()  # the TCP connection dropped, no close frame
    assert wait_for(lambda: streams_open(server) == before + 1, 20)
    task_id = server.new_task("dora")
    assert next(messages(sockets[2]))["id"] == task_id  # the one left still hears


OPEN_SOCKET_JS = """url => new Promise(resolve => {
    window.got = [];
    window.wsClosed = null;
    const ws = new WebSocket(url);
    ws.onmessage = e => window.got.push(JSON.parse(e.data));
    ws.onclose = e => { window.wsClosed = e.code; resolve("closed"); };
    ws.onopen = () => resolve("open");
})"""


def test_chromium_follows_a_task_over_a_websocket(server):
    access = server.token("erin")
    server.token("bob")
    task_id = server.new_task("erin")
    others = server.new_task("bob")
    with chromium_browser() as browser:
        page = browser.new_page()
        page.goto(f"{server.url}/healthz")
        base = f"{server.ws_url}/ws/tasks"
        refused = page.evaluate(
            OPEN_SOCKET_JS, f"{base}/{others}/?token={server.stream_token(access)}"
        )
        assert refused == "closed" and page.evaluate("window.wsClosed") == 1006  # handshake failed
        opened = page.evaluate(
            OPEN_SOCKET_JS, f"{base}/{task_id}/?token={server.stream_token(access)}"
        )
        assert opened == "open"
        page.wait_for_function("window.got.length === 1")
        for status in ("PROCESSING", "COMPLETED"):
            server.set_status(task_id, status)
        page.wait_for_function("window.wsClosed !== null")
        got = page.evaluate("window.got")
        assert [m["status"] for m in got] == ["PENDING", "PROCESSING", "COMPLETED"]
        assert {m["id"] for m in got} == {task_id} and page.evaluate("window.wsClosed") == 1000
