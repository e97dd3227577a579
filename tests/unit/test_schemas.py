"""Request and response schemas (no database)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from marshmallow import ValidationError

from app import schemas
from app.auth import password_problems
from taskq.representation import task_to_json
from tests.helpers import task_row


def test_task_create_defaults_and_aliases():
    data = schemas.TaskCreateSchema().load(
        {"name": "n", "scheduled_time": "2030-01-01T00:00:00", "priority": "LOW"}
    )
    assert data["title"] == "n" and "name" not in data
    assert data["scheduled_at"] == datetime(2030, 1, 1, tzinfo=UTC)
    assert (data["priority"], data["task_type"], data["queue"], data["payload"]) == (
        1,
        "process",
        "default",
        {},
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "title"),
        ({"title": "t", "task_type": "missing"}, "task_type"),
        ({"title": "t", "task_type": "compute", "payload": {}}, "payload"),
        ({"title": "t", "payload": {"x": float("nan")}}, "payload"),
        ({"title": "t", "metadata": {"\x00": 1}}, "metadata"),
        ({"title": "t", "priority": 3.5}, "priority"),
    ],
)
def test_task_create_errors(body, field):
    with pytest.raises(ValidationError) as caught:
        schemas.TaskCreateSchema().load(body)
    assert field in caught.value.messages


def test_register_alias_and_mismatch():
    body = {"username": "ann", "email": "a@example.com", "password": "p1", "password_confirm": "p1"}
    assert schemas.RegisterSchema().load(body)["password2"] == "p1"
    with pytest.raises(ValidationError) as caught:
        schemas.RegisterSchema().load({**body, "password_confirm": "p2"})
    assert "password2" in caught.value.messages


def test_list_query_status_and_date_bounds():
    query = schemas.TaskListQuerySchema().load(
        {"status": "pending, Failed", "start_date": "2024-03-01", "end_date": "2024-03-01"}
    )
    assert query["status"] == ["PENDING", "FAILED"]
    assert query["start_date"] == datetime(2024, 3, 1, tzinfo=UTC)
    assert query["end_date"] == datetime(2024, 3, 2, tzinfo=UTC)
    assert query["page"] == 1


def test_task_representation_matches_the_documented_schema():
    task = task_to_json(task_row(owner_username="ann", owner_email="a@example.com"))
    assert schemas.TaskSchema().validate(task) == {}
    assert set(task) == set(schemas.TaskSchema().fields)


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        ("Sturdy-Lamp-42", []),
        ("short", ["too short"]),
        ("1234567890", ["entirely numeric", "too common"]),
        ("Password123", ["too common"]),
        ("annabelle99", ["similar to the username"]),
    ],
)
def test_password_problems(password, expected):
    problems = password_problems(password, username="annabelle", email="x@example.com")
    assert len(problems) == len(expected)
    for problem, fragment in zip(problems, expected, strict=True):
        assert fragment in problem
