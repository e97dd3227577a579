"""Property tests of what strangers send: whatever create accepts, every read returns;
whatever it refuses, it did not store.

Bodies are generated from the create schema's own fields and validators (a field
of a type this module has no strategy for fails the test, so a new field cannot
go unexplored). Each field is left out or given a value its validators allow,
edges included (datetimes a day from the ends of the calendar in any offset,
range bounds, any Unicode, JSON nested to the limit); about half the bodies then
get one field that is wrong or on the far side of an edge (the issue's
``9999-12-31T23:59:59-12:00``, non-ASCII digits, NUL, lone surrogates, JSON
nested past the limits, private URLs, CR/LF in headers, another type). Each body
goes to POST /tasks or, as a batch of one, to POST /tasks/batch.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from marshmallow import fields, validate

from app import schemas
from taskq.fields import HttpHeaders, OutboundUrl
from tests.helpers import API
from worker.registry import load_task_modules

MAX_EXAMPLES = 100
# Task types whose payload is any object: the others mostly refuse a generated one.
ANY_PAYLOAD_TYPES = ["echo", "noop", "process"]

NON_ASCII_DIGITS = ["\u00b2", "\u0663", "\uff11"]  # superscript 2, Arabic-Indic 3, fullwidth 1
BAD_TEXT = ["\x00", "a\x00b", "\ud800", "x\udfff"]
ODD_TEXT = [" ", "a\r\nb", *NON_ASCII_DIGITS, "\U0001d4b3", "\u202e", "%_\\", "'; --"]
VALID_DATETIMES = [
    "0001-01-02T00:00:00Z",
    "0001-01-02T12:00:00+11:59",
    "9999-12-30T23:59:59.999999Z",
    "9999-12-30T12:00:00-11:59",
    "2024-02-29T12:00:00-23:59",
    "2024-02-29T12:00:00+23:59",
]
INVALID_DATETIMES = [
    "9999-12-31T23:59:59-12:00",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59.999999",
    "0001-01-01T00:00:00",
    "2024-02-30T00:00:00",
    "99999-01-01T00:00:00",
    "2024-01-01T00:00:00+24:00",
    "yesterday",
]
EDGE_INTEGERS = [-1, 2**15, 2**31 - 1, 2**31, 2**63 - 1, 2**63, -(2**63), 10**30]
PUBLIC_URLS = [
    "https://example.com/hook",
    "http://hooks.example.org:8080/x?y=1",
    "https://8.8.8.8/",
]
REFUSED_URLS = [
    "http://127.0.0.1/",
    "http://localhost:9/x",
    "http://127.1/",
    "http://2130706433/",
    "http://10.0.0.1/",
    "http://[::1]/",
    "http://169.254.169.254/latest",
    "ftp://example.com/",
    "not a url",
]


def nested(depth: int) -> Any:
    """A JSON value ``depth`` arrays deep."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def texts(min_size: int = 0, max_size: int | None = 40) -> st.SearchStrategy[str]:
    """Any Unicode Postgres text holds (no NUL, no surrogates), odd strings included."""
    alphabet = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
    plain = st.text(alphabet, min_size=min_size, max_size=max_size)
    fitting = [t for t in ODD_TEXT if min_size <= len(t) <= (max_size or len(t))]
    return plain | st.sampled_from(fitting) if fitting else plain


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(EDGE_INTEGERS),
    st.floats(allow_nan=False, allow_infinity=False),
    texts(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts(), inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(texts(), json_values, max_size=5) | st.builds(
    lambda d: {"deep": nested(d)}, st.sampled_from([30, 31])
)
bad_json_objects = st.one_of(
    st.builds(lambda d: {"deep": nested(d)}, st.sampled_from([32, 40, 70])),
    st.sampled_from([{"x": float("nan")}, {"x": float("inf")}, {"\x00": 1}, {"x": "\ud800"}]),
)
offsets = st.builds(
    timezone,
    st.timedeltas(
        min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59)
    ),
)
extreme_offsets = st.sampled_from([timedelta(hours=h) for h in (-23, -14, -12, 12, 14, 23)]).map(
    timezone
)
# Within two days of either end of Python's calendar, in any offset (or none): about
# half of these are a year outside 1-9999 in UTC, or too close to it to read back.
near_the_ends = st.builds(
    lambda end, seconds, tz: (end + timedelta(seconds=seconds)).replace(tzinfo=tz).isoformat(),
    st.sampled_from([datetime.min, datetime.max - timedelta(days=2)]),
    st.integers(0, 2 * 86400),
    st.none() | extreme_offsets | offsets,
)
datetimes = st.one_of(
    st.sampled_from(VALID_DATETIMES),
    near_the_ends,
    st.datetimes(timezones=st.none() | offsets).map(datetime.isoformat),
    st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1)).map(
        lambda d: d.replace(tzinfo=UTC).isoformat()
    ),
)
header_names = st.text(string.ascii_letters + string.digits + "-_.!#$%&'*+^`|~", min_size=1)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
bad_headers = st.builds(
    lambda name, value: {name: value},
    st.sampled_from(["X-Ok", "Bad Name", "X:Colon", "\u00e9t\u00e9", "Host", "Content-Length"]),
    st.sampled_from(["v", "a\r\nX-Injected: 1", "tab\tok", "\x7f", "\u20ac", "\x00"]),
)


def bounds(field: fields.Field, kind: type) -> tuple[Any, Any]:
    """(min, max) of the field's Length or Range validator (None when open)."""
    for validator in field.validators:
        if isinstance(validator, kind):
            return validator.min, validator.max
    return None, None


def choices(field: fields.Field) -> list[str] | None:
    """The choices of a OneOf validator on ``field``, if it has one."""
    for validator in field.validators:
        if isinstance(validator, validate.OneOf):
            return list(validator.choices)
    return None


def strategies(name: str, field: fields.Field) -> tuple[st.SearchStrategy, st.SearchStrategy]:
    """(values the field allows, values it refuses) from its type and validators."""
    wrong_type = json_scalars | st.lists(json_scalars, max_size=2) | st.just({"a": 1})
    if isinstance(field, schemas.StoredDateTime):
        return datetimes, st.sampled_from(INVALID_DATETIMES) | wrong_type
    if isinstance(field, schemas.Priority):
        good = st.integers(0, 100) | st.sampled_from([*schemas.PRIORITY_NAMES, "HIGH", " 7 "])
        bad = st.sampled_from([101, True, "1_0", "urgent", *NON_ASCII_DIGITS, *EDGE_INTEGERS])
        return good, bad | wrong_type
    if isinstance(field, OutboundUrl):
        return st.sampled_from(PUBLIC_URLS), st.sampled_from(REFUSED_URLS) | wrong_type
    if isinstance(field, HttpHeaders):
        good = st.dictionaries(header_names, header_values, max_size=4)
        return good, bad_headers | wrong_type
    if isinstance(field, schemas.JsonObject):
        return json_objects, bad_json_objects | wrong_type
    if isinstance(field, schemas.JsonValue):
        return json_scalars | json_objects, bad_json_objects
    if isinstance(field, fields.List):
        inner_good, inner_bad = strategies(name, field.inner)
        low, high = bounds(field, validate.Length)
        good = st.lists(inner_good, min_size=low or 0, max_size=min(high or 6, 6))
        too_many = st.lists(inner_good, min_size=(high or 50) + 1, max_size=(high or 50) + 1)
        return good, st.lists(inner_bad, min_size=1, max_size=2) | too_many | wrong_type
    if isinstance(field, fields.Integer):
        low, high = bounds(field, validate.Range)
        good = st.integers(low, high) | st.sampled_from([low, high])
        outside = st.sampled_from([low - 1, high + 1, 1.5, True, str(low), *EDGE_INTEGERS])
        return good, outside.filter(lambda v: type(v) is not int or not low <= v <= high)
    if isinstance(field, fields.String):
        if name in ("task_type", "task_name"):  # task_name: seed 002's alias
            others = sorted(set(load_task_modules()) - set(ANY_PAYLOAD_TYPES))
            return st.sampled_from(ANY_PAYLOAD_TYPES), st.sampled_from(others) | texts()
        if name in ("queue", "queue_name"):
            return st.from_regex(schemas.NAME_PATTERN, fullmatch=True), texts() | wrong_type
        allowed = choices(field)
        if allowed:
            return st.sampled_from(allowed), texts() | wrong_type
        low, high = bounds(field, validate.Length)
        too_long = st.just("x" * (high + 1)) if high else st.nothing()
        bad = st.sampled_from(BAD_TEXT) | too_long | wrong_type
        return texts(low or 0, min(high or 300, 300)), bad
    raise AssertionError(f"no strategy for {name}: {type(field).__name__}")


FIELDS = {
    field.data_key or name: strategies(name, field)
    for name, field in schemas.TaskCreateSchema().fields.items()
}


@st.composite
def create_bodies(draw) -> dict[str, Any]:
    """A create body: fields left out or valid, then maybe one of them made bad."""
    optional = {key: good for key, (good, _) in FIELDS.items() if key != "title"}
    body = draw(st.fixed_dictionaries({"title": FIELDS["title"][0]}, optional=optional))
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(FIELDS)))
        body[key] = draw(FIELDS[key][1])
    return body


def counts(db) -> tuple[int, int]:
    """Rows in tasks and in task_history."""
    row = db.execute(
        "SELECT (SELECT count(*) FROM tasks) AS tasks, (SELECT count(*) FROM task_history) AS h"
    ).fetchone()
    return row["tasks"], row["h"]


def check_every_read(client, db, owner, admin, task: dict[str, Any]) -> None:
    """Every read endpoint answers 200 for ``task``, as created, and the lists find it
    (searching its title too, when the title has a word to search for)."""

    def get(path: str, account, **query) -> dict[str, Any]:
        response = client.get(f"{API}{path}", query_string=query, headers=account.headers)
        assert response.status_code == 200, (path, query, response.get_json())
        return response.get_json()

    task_id = task["id"]
    assert get(f"/tasks/{task_id}", owner)["task"] == task
    assert task["status"] in ("PENDING", "WAITING")  # WAITING: a depends_on drawn on a task
    assert get(f"/tasks/{task_id}/status", owner)["status"] == task["status"]
    assert get(f"/tasks/{task_id}/history", owner)["history"][0]["to_status"] == task["status"]
    get("/tasks/stats", owner)
    filters = {
        "status": task["status"].lower(),
        "task_type": task["task_type"],
        "queue": task["queue"],
        "priority": str(task["priority"]),
        "start_date": task["created_at"],
        "end_date": task["created_at"],
        "ordering": "-id",
    }
    if task["tags"]:
        filters["tag"] = task["tags"][0]
    search = task["title"][:200]
    words = "SELECT to_tsvector('simple', %s) <> ''::tsvector AS words"
    if db.execute(words, (search,)).fetchone()["words"]:
        filters["search"] = search
    assert task_id in [t["id"] for t in get("/tasks", owner, **filters)["results"]], filters
    found = get("/admin/tasks", admin, user_id=str(owner.id), **filters)["results"]
    assert task_id in [t["id"] for t in found], filters


def test_whatever_create_accepts_every_read_returns(client, make_account, db):
    ann = make_account("ann")
    root = make_account("root", admin=True)
    outcomes = {"accepted": 0, "refused": 0}

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=create_bodies(), batch=st.booleans())
    # The issue's findings, always tried (the random search finds their class as well).
    @example(body={"title": "t", "scheduled_at": INVALID_DATETIMES[0]}, batch=False)
    @example(body={"title": "t", "scheduled_time": INVALID_DATETIMES[1]}, batch=True)
    @example(body={"title": "t", "priority": NON_ASCII_DIGITS[0]}, batch=False)
    def check(body: dict[str, Any], batch: bool) -> None:
        before = counts(db)
        if batch:
            response = client.post(f"{API}/tasks/batch", json=[body], headers=ann.headers)
        else:
            response = client.post(f"{API}/tasks", json=body, headers=ann.headers)
        assert response.status_code < 500, response.get_json()
        if response.status_code >= 400:
            outcomes["refused"] += 1
            assert set(response.get_json()) == {"error", "field_errors"}
            assert counts(db) == before, response.get_json()
            return
        outcomes["accepted"] += 1
        answer = response.get_json()
        created = answer["tasks"] if batch else [answer["task"]]
        # A unique_key drawn twice is answered by the task that holds it: no new row then.
        existed = bool(answer["existing"]) if batch else response.status_code == 200
        assert counts(db) == (before[0] + (not existed), before[1] + (not existed))
        for task in created:
            check_every_read(client, db, ann, root, task)

    check()
    # The strategies are worth something only if both sides of the property are exercised.
    assert min(outcomes.values()) >= MAX_EXAMPLES // 5, outcomes
