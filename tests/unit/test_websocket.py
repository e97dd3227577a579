"""The SSE → WebSocket framing of app.websocket, on frames as app.events renders them."""

from app.events import Change, render_deleted, render_event
from app.websocket import sse_messages

ROW = {
    "id": 7,
    "task_id": 3,
    "to_status": "COMPLETED",
    "from_status": "PROCESSING",
    "attempt": 1,
    "created_at": None,
    "result": {"ok": True},
}


def test_each_event_becomes_its_data_with_event_name_and_resume_id():
    frames = [
        b"retry: 3000\n: connected\n\n",
        render_event(ROW).text,
        b": keep-alive\n\n",
        render_event(ROW, (41, 7)).text + render_deleted(Change(None, 3, 1, "DELETED")).text,
    ]
    got = list(sse_messages(iter(frames)))
    assert got[0] is None and got[2] is None
    assert got[1]["status"] == "COMPLETED" and got[1]["result"] == {"ok": True}
    assert (got[1]["event"], got[1]["last_event_id"], got[1]["event_id"]) == ("completed", "7", 7)
    assert got[3]["last_event_id"] == "41-7"
    assert got[4] == {"id": 3, "status": "DELETED", "event": "deleted"}  # no id: no resume point
    assert len(got) == 5
