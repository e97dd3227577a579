"""The WebSocket endpoints' refusals in-process (the real sockets: tests/acceptance)."""

from __future__ import annotations

from app.events import get_notifier
from tests.helpers import API, assert_error, create

UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


def test_refusals_come_before_the_upgrade_and_leave_no_subscription(app, client, make_account):
    ann = make_account("ann")
    task = create(client, ann)
    token = client.post(f"{API}/events/token", headers=ann.headers).get_json()["token"]
    path = f"/ws/tasks/{task['id']}/"
    assert_error(client.get(f"{path}?token={token}"), 426)  # no upgrade asked
    assert_error(client.get(path, headers=UPGRADE), 401)  # no token
    assert_error(client.get(path, headers={**UPGRADE, "Cookie": "x=1"}), 401)
    assert_error(client.get(f"/ws/tasks/999999/?token={token}", headers=UPGRADE), 404)
    assert_error(client.get(f"{path}?token={token}&last_event_id=x", headers=UPGRADE), 400)
    # A handshake the server cannot complete (the test client has no socket to take): 400,
    # and the subscription it had made is gone again.
    assert_error(client.get(f"{path}?token={token}", headers=UPGRADE), 400)
    assert_error(client.get(f"/ws/tasks/?token={token}", headers=UPGRADE), 400)
    notifier = get_notifier(app)
    assert notifier._by_task == {} and notifier._by_user == {}
