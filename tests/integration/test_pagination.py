"""Keyset cursors on every list, the page-number form beside them, and what ``count`` is."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlsplit

import pytest

from app import tasks as app_tasks
from tests.helpers import API, assert_error, create, insert_tasks, set_status

ORDERINGS = [
    None,
    "-priority",
    "scheduled_at",
    "-scheduled_at,title",
    "status,-created_at",
    "title,priority",
    "-started_at,-id",
]


@pytest.fixture
def ann_tasks(client, make_account, db):
    """ann with 23 tasks: repeated titles and priorities, some scheduled, some started."""
    ann = make_account("ann")
    batch = []
    for i in range(23):
        task = {"title": f"t{i % 4}", "priority": i % 3}
        if i % 5 == 0:
            task["scheduled_at"] = f"2099-01-{1 + i % 3:02d}T00:00:00Z"
        batch.append(task)
    response = client.post(f"{API}/tasks/batch", json=batch, headers=ann.headers)
    ids = [t["id"] for t in response.get_json()["tasks"]]
    for task_id in ids[::4]:
        set_status(db, task_id, "PROCESSING", started_at="2030-01-01T00:00:00Z")
    return ann


def walk(client, account, path: str, size: int, **query) -> list[int]:
    """Every id of a list, page after page by next_cursor (and its next link agreeing)."""
    cursor = None
    seen = []
    while True:
        asked = {**query, "page_size": size, **({"cursor": cursor} if cursor else {})}
        response = client.get(path, query_string=asked, headers=account.headers)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert len(body["results"]) <= size
        seen += [row["id"] for row in body["results"]]
        if cursor is not None and "next" in body:  # asked by cursor: the link follows it
            link = parse_qs(urlsplit(body["next"]).query) if body["next"] else {}
            assert link.get("cursor") == ([body["next_cursor"]] if body["next_cursor"] else None)
            assert "page" not in link and body["previous"] is None
        cursor = body["next_cursor"]
        if cursor is None:
            return seen


@pytest.mark.parametrize("ordering", ORDERINGS)
def test_cursor_pages_are_the_whole_ordered_list(client, ann_tasks, ordering):
    query = {"ordering": ordering} if ordering else {}
    whole = client.get(f"{API}/tasks", query_string={**query, "page_size": 100},
                       headers=ann_tasks.headers).get_json()  # fmt: skip
    assert whole["count"] == 23 and whole["count_exact"] and whole["next_cursor"] is None
    expected = [t["id"] for t in whole["results"]]
    for size in (1, 4, 7):
        assert walk(client, ann_tasks, f"{API}/tasks", size, **query) == expected


def test_page_numbers_still_work_and_give_a_cursor(client, ann_tasks):
    first = client.get(f"{API}/tasks?page_size=10", headers=ann_tasks.headers).get_json()
    second = client.get(f"{API}/tasks?page_size=10&page=2", headers=ann_tasks.headers).get_json()
    by_cursor = client.get(
        f"{API}/tasks",
        query_string={"page_size": 10, "cursor": first["next_cursor"]},
        headers=ann_tasks.headers,
    ).get_json()
    assert by_cursor["results"] == second["results"]
    assert by_cursor["previous"] is None and "page=2" in first["next"]
    assert "cursor=" in by_cursor["next"] and "page=" not in by_cursor["next"]
    third = client.get(f"{API}/tasks?page_size=10&page=3", headers=ann_tasks.headers).get_json()
    assert len(third["results"]) == 3 and third["next"] is None and third["next_cursor"] is None


def test_the_admin_list_pages_by_cursor_over_every_user(client, make_account, ann_tasks):
    root = make_account("root", admin=True)
    bob = make_account("bob")
    create(client, bob, title="bob's")
    ids = walk(client, root, f"{API}/admin/tasks", 5, ordering="-priority")
    assert len(ids) == len(set(ids)) == 24


def test_a_bad_cursor_is_a_400_naming_it(client, make_account, ann_tasks):
    root = make_account("root", admin=True)
    page = client.get(f"{API}/tasks?page_size=2", headers=ann_tasks.headers).get_json()
    cursor = page["next_cursor"]
    body, signature = cursor.split(".")
    forged = base64.urlsafe_b64encode(b'[["-id"],[999999]]').rstrip(b"=").decode()
    for bad in ("x", "a.b.c", "!!.??", f"{forged}.{signature}", f"{body}.{signature[:-2]}AA"):
        response = client.get(f"{API}/tasks", query_string={"cursor": bad},
                              headers=ann_tasks.headers)  # fmt: skip
        assert_error(response, 400, "cursor")
    # A cursor belongs to its list: the admin list and the dead letters refuse the user's.
    assert_error(client.get(f"{API}/admin/tasks?cursor={cursor}", headers=root.headers), 400)
    response = client.get(f"{API}/dead-letters?cursor={cursor}", headers=ann_tasks.headers)
    assert_error(response, 400, "cursor")


def test_dead_letters_page_by_cursor(client, make_account, db):
    ann = make_account("ann")
    for _ in range(7):
        set_status(db, create(client, ann)["id"], "FAILED")
    whole = client.get(f"{API}/dead-letters?page_size=100", headers=ann.headers).get_json()
    assert whole["count"] == 7 and whole["count_exact"]
    assert walk(client, ann, f"{API}/dead-letters", 3) == [d["id"] for d in whole["results"]]


def test_webhook_deliveries_page_by_cursor(client, make_account, db):
    ann = make_account("ann")
    task = create(client, ann, callback_url="https://hooks.example.com/x",
                  callback_events=["task.started", "task.succeeded", "task.failed"])  # fmt: skip
    for status in ("PROCESSING", "FAILED", "PENDING", "PROCESSING", "COMPLETED"):
        set_status(db, task["id"], status)
    path = f"{API}/tasks/{task['id']}/webhook-deliveries"
    whole = client.get(path, headers=ann.headers).get_json()
    assert whole["count"] == 4 and whole["count_exact"] and whole["next_cursor"] is None
    assert walk(client, ann, path, 3) == [d["id"] for d in whole["results"]]
    assert_error(client.get(f"{path}?cursor=nope", headers=ann.headers), 400, "cursor")


def test_count_is_exact_from_counters_else_a_bound(app, client, make_account, db):
    ann = make_account("ann")
    insert_tasks(db, 8, user_id=ann.id, tags=["red"], task_type="echo")
    app.config["TASKQ_COUNT_LIMIT"] = 5

    def count(**query):
        body = client.get(f"{API}/tasks", query_string=query, headers=ann.headers).get_json()
        return body["count"], body["count_exact"]

    assert count() == count(status="pending", task_type="echo") == (8, True)
    assert count(tag="red") == (5, False)  # counting stopped at TASKQ_COUNT_LIMIT
    assert count(tag="blue") == (0, True)
    body = client.get(f"{API}/tasks?tag=red&page_size=3&page=2", headers=ann.headers).get_json()
    assert len(body["results"]) == 3 and body["next"] and "page=1" in body["previous"]


@pytest.mark.parametrize("walk_factor", [100, 1])
def test_a_search_pages_the_same_by_walk_or_index_and_counts_what_it_read(
    client, make_account, monkeypatch, walk_factor
):
    # Factor 100 walks the list's order (a frequent word fills its page in the walk);
    # factor 1 walks too few tasks to fill one, so the GIN index's matches serve the page.
    monkeypatch.setattr(app_tasks, "SEARCH_WALK_FACTOR", walk_factor)
    ann = make_account("ann")
    batch = [{"title": f"t{i}" + (" needle" if i % 3 == 0 else ""), "priority": i % 4}
             for i in range(30)]  # fmt: skip
    created = client.post(f"{API}/tasks/batch", json=batch, headers=ann.headers).get_json()
    needles = [t["id"] for t in created["tasks"] if "needle" in t["title"]]
    create(client, make_account("bob"), title="needle of bob")
    newest_first = sorted(needles, reverse=True)
    assert walk(client, ann, f"{API}/tasks", 3, search="needle") == newest_first
    by_priority = walk(client, ann, f"{API}/tasks", 4, search="needle", ordering="-priority")
    assert sorted(by_priority) == sorted(needles) and len(by_priority) == len(needles)

    def page(number: int) -> dict:
        query = {"search": "needle", "page_size": 4, "page": number}
        return client.get(f"{API}/tasks", query_string=query, headers=ann.headers).get_json()

    # By the walk (a frequent word) the count is what the page read (itself, the rows
    # before it and the look-ahead row): a lower bound, exact once a page from the top
    # reaches the last match. By the index (few matches) they are counted, exactly.
    first = page(1)
    assert [t["id"] for t in first["results"]] == newest_first[:4]
    by_index = walk_factor == 1
    assert (first["count"], first["count_exact"]) == ((10, True) if by_index else (5, False))
    last = page(3)
    assert [t["id"] for t in last["results"]] == newest_first[8:]
    assert (last["count"], last["count_exact"]) == (10, True)
    beyond = page(5)  # nothing to walk to: the index answers, and counts
    assert beyond["results"] == [] and (beyond["count"], beyond["count_exact"]) == (10, True)
    rare = client.get(f"{API}/tasks?search=t27", headers=ann.headers).get_json()
    assert [t["title"] for t in rare["results"]] == ["t27 needle"]
    assert (rare["count"], rare["count_exact"]) == (1, True)
