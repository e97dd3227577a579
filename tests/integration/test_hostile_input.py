"""Hostile input found by fuzzing every route: each a 4xx in the contract's shape, storing nothing.

What tests/integration/test_errors.py and test_properties.py cover is not repeated here.
"""

from __future__ import annotations

import pytest

from tests.helpers import API, account, assert_error, insert_tasks

# Behind TASKQ_PROXY_HOPS a client's X-Forwarded-Prefix becomes the app's root path, which
# starts every link a list gives (next, previous): one that is not a path glued itself to
# the host ("http://localhost::1/...": a 500 building the link, or a link to another host).
NOT_A_PATH = ["::1", "h:abc", "a:b/c", "p", ".evil.example", "[::1]:99999"]


@pytest.mark.parametrize("prefix", NOT_A_PATH)
def test_forwarded_prefix_that_is_not_a_path_is_400(make_app, database_url, db, prefix):
    app = make_app(TASKQ_PROXY_HOPS=1)
    client = app.test_client()
    ann = account(app, database_url, "ann")
    user_id = db.execute("SELECT id FROM users").fetchone()["id"]
    insert_tasks(db, 2, user_id=user_id)
    headers = {**ann, "X-Forwarded-Prefix": prefix}
    listed = client.get(f"{API}/tasks?page_size=1", headers=headers)
    assert_error(listed, 400, "X-Forwarded-Prefix")
    created = client.post(f"{API}/tasks", json={"title": "t"}, headers=headers)
    assert_error(created, 400, "X-Forwarded-Prefix")
    assert db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"] == 2


def test_forwarded_prefix_that_is_a_path_starts_the_links(make_app, database_url, db):
    app = make_app(TASKQ_PROXY_HOPS=1)
    client = app.test_client()
    ann = account(app, database_url, "ann")
    user_id = db.execute("SELECT id FROM users").fetchone()["id"]
    insert_tasks(db, 2, user_id=user_id)
    for prefix, root in [("/taskq", "http://localhost/taskq"), ("/a:b/", "http://localhost/a:b")]:
        headers = {**ann, "X-Forwarded-Prefix": prefix}
        listed = client.get(f"{API}/tasks?page_size=1", headers=headers)
        assert listed.status_code == 200, listed.get_json()
        assert listed.get_json()["next"] == f"{root}{API}/tasks?page_size=1&page=2"
