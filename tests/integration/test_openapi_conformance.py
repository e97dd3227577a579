"""The service answers as /openapi.json says: schemathesis over every operation, every check.

One schemathesis run (its examples, coverage and fuzzing phases; every check,
not only "no server error") against the app in-process, on a real Postgres, as
a real registered user (an admin on /admin routes, the metrics token on
/metrics). Each case gets a fresh access token, so a logout in one case does not
log the next one out. The user owns a few tasks (one FAILED, so a dead letter;
one with a callback, so a webhook delivery) whose small ids the generated path
parameters hit. Bounded: a fixed seed, a few fuzzed examples per operation,
event streams read for a fraction of a second. What gunicorn answers by itself
(414 for a too-long URL) is checked in tests/acceptance/test_openapi_http.py.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from tests.helpers import close_app, register_account, template_copy

pytestmark = pytest.mark.slow

METRICS_TOKEN = "openapi-conformance-metrics-token"
PASSWORD = "Sturdy-Lamp-42"

CONFIG: dict[str, Any] = {
    "cache": {"enabled": False},  # no .schemathesis/ left behind, nothing carried between runs
    # One worker: hypothesis' generation is not thread-safe (schemathesis 4.32 with 2 raced).
    "workers": 1,
    # NUL is refused everywhere (DESCRIPTION says so; JSON schema 3.0 cannot, nested).
    "generation": {
        "max-examples": 3,
        "deterministic": True,
        "database": "none",
        "allow-x00": False,
    },
    "phases": {"stateful": {"enabled": False}},
    "checks": {"enabled": True},
    "operations": [
        # A stream ends only with its task: read it briefly (the app keeps alive every 0.05 s).
        {"include-path-regex": "/events$", "request-timeout": 0.1, "max-stream-events": 3},
        # The coverage phase walks every case a schema has: these only repeat what it walks
        # elsewhere (TaskCreate in POST /tasks, the list filters in GET /tasks, the login view
        # behind /auth/login), so they are fuzzed only.
        *(
            {"include-name": name, "phases": {"coverage": {"enabled": False}}}
            for name in (
                "POST /api/v1/tasks/batch",
                "GET /api/v1/admin/tasks",
                "POST /api/v1/auth/token",
            )
        ),
    ],
}


# Rules the document states in words because a JSON schema cannot: a schema-valid body
# may still be refused for them, with 400 and field_errors naming only these fields
# (a batch's as tasks.N.<field>). POST /tasks answers 422 for a reused Idempotency-Key.
STATED_RULES = {
    # passwords repeated, strong, not like the username; username and email not taken
    "POST /api/v1/auth/register": {"username", "email", "password", "password2"},
    # the old password right; the new one repeated and strong
    "POST /api/v1/auth/change-password": {"old_password", "new_password", "new_password2"},
    # a refresh token of the caller
    "POST /api/v1/auth/logout": {"refresh"},
    # an email nobody else has
    "PATCH /api/v1/auth/profile": {"email"},
    # a task that has a callback_url
    "POST /api/v1/tasks/{task_id}/trigger-webhook": {"callback_url"},
    # a day the calendar has (the pattern gives the shape only); a cursor the list gave
    "GET /api/v1/tasks": {"start_date", "end_date", "cursor"},
    "GET /api/v1/admin/tasks": {"start_date", "end_date", "cursor"},
    "GET /api/v1/dead-letters": {"cursor"},
    "GET /api/v1/tasks/{task_id}/webhook-deliveries": {"cursor"},
    # a listed (not internal) type and its payload; no private callback address; no
    # reserved queue; header values without CR/LF; a scheduled_at Postgres can store
    "POST /api/v1/tasks": {
        "task_type",
        "payload",
        "callback_url",
        "callback_headers",
        "queue",
        "scheduled_at",
        # seed 002's args/kwargs stand for the payload: not both
        "args",
    },
}
STATED_RULES["POST /api/v1/tasks/batch"] = STATED_RULES["POST /api/v1/tasks"]
# an event id's numbers at most 2^63-1 (the pattern gives the shape only); on the all-tasks
# streams a history id whose row is still there, so its place is known
for stream in ("/api/v1/events", "/api/v1/admin/events", "/api/v1/tasks/{task_id}/events"):
    STATED_RULES[f"GET {stream}"] = {"Last-Event-ID"}


def states_rule(failure, response) -> bool:
    """Whether a refused schema-valid request broke only a rule the document states in words."""
    allowed = STATED_RULES.get(failure.operation)
    if failure.code != "ST202" or allowed is None:
        return False
    if response.status_code == 422:
        return failure.operation == "POST /api/v1/tasks"
    try:
        fields = response.json()["field_errors"]
    except (ValueError, KeyError, TypeError):
        return False
    names = {re.sub(r"^tasks\.\d+\.", "", name).split(".")[0] for name in fields}
    return response.status_code == 400 and bool(names) and names <= allowed


def ignores_unknown_parameter(failure, case) -> bool:
    """An accepted extra header or query parameter: HTTP ignores what it does not know.

    OpenAPI cannot say that a request may carry other headers or query parameters
    (every client sends some), so schemathesis counts one as invalid. Unknown body
    fields stay held to the document: those are refused.
    """
    from schemathesis.core.parameters import ParameterLocation
    from schemathesis.generation.meta import CoverageScenario

    data = getattr(case.meta.phase, "data", None) if case.meta else None
    return (
        failure.code == "ST201"
        and getattr(data, "scenario", None) == CoverageScenario.OBJECT_UNEXPECTED_PROPERTIES
        and getattr(data, "parameter_location", None)
        in (ParameterLocation.HEADER, ParameterLocation.QUERY)
    )


@dataclass
class Api:
    """The app under test and the accounts whose tokens the cases carry."""

    app: Any
    users: dict[str, dict[str, Any]]

    def token_for(self, path: str) -> str:
        """A fresh token: the metrics token, an admin's on /admin routes, else the user's."""
        from app.auth import issue_tokens

        if path == "/metrics":
            return METRICS_TOKEN
        user = self.users["admin" if path.startswith("/api/v1/admin") else "user"]
        with self.app.app_context():
            return issue_tokens(user)["access"]


@pytest.fixture(scope="module")
def api(pg_server_url: str, template_database: str) -> Iterator[Api]:
    """The API on a database of its own, with a user who owns a few tasks, and an admin."""
    with template_copy(pg_server_url, template_database, "taskq_conf") as database_url:
        yield from conformance_api(database_url)


def conformance_api(database_url: str) -> Iterator[Api]:
    """The app on ``database_url`` with its seeded user, tasks and admin."""
    from app import create_app
    from app.auth import create_admin_user

    application = create_app(
        {
            "DATABASE_URL": database_url,
            "TASKQ_ENV": "test",
            "REDIS_URL": None,
            "RATELIMIT_ENABLED": False,
            "TASKQ_SSE_KEEPALIVE": 0.05,
            "TASKQ_METRICS_TOKEN": METRICS_TOKEN,
        }
    )
    try:
        client = application.test_client()
        user = register_account(client, "fuzzer", PASSWORD)
        for task in (
            {"title": "waiting"},
            {"title": "failed", "task_type": "noop"},
            {"title": "with callback", "callback_url": "https://hooks.example.com/taskq"},
        ):
            created = client.post("/api/v1/tasks", json=task, headers=user.headers)
            assert created.status_code == 201, created.get_json()
        create_admin_user(database_url, "fuzzadmin", None, PASSWORD)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.row_factory = psycopg.rows.dict_row
            finish = "UPDATE tasks SET status = %s, error = 'boom' WHERE title = %s"
            conn.execute(finish, ("FAILED", "failed"))
            conn.execute(finish, ("COMPLETED", "with callback"))
            rows = conn.execute("SELECT * FROM users ORDER BY id").fetchall()
        yield Api(application, {"admin" if row["is_admin"] else "user": row for row in rows})
    finally:
        close_app(application)


@pytest.fixture
def probes_without_session(monkeypatch):
    """Work around schemathesis 4.32: the probes of its ignored_auth check reach a WSGI app
    with the network-only transport settings (werkzeug refuses ``max_redirects``)."""
    from schemathesis.transport.wsgi import WSGITransport

    send = WSGITransport.send

    def send_without_network_settings(self, case, *, session=None, **kwargs):
        if session is None:
            for name in ("max_redirects", "verify", "cert", "proxies"):
                kwargs.pop(name, None)
        return send(self, case, session=session, **kwargs)

    monkeypatch.setattr(WSGITransport, "send", send_without_network_settings)


def answer_of(recorder, case_id: str) -> str:
    """The status and the start of the body the server answered a case with."""
    interaction = recorder.interactions.get(case_id)
    response = interaction.response if interaction else None
    if response is None:
        return "no answer"
    return f"{response.status_code} {response.content[:300]!r}"


def run_schemathesis(app, token_for) -> list[str]:
    """Every phase over every operation of ``app``'s /openapi.json; the failures found.

    ``token_for(path)`` gives each case a fresh token.
    """
    import schemathesis
    from schemathesis import engine
    from schemathesis.engine import Status, events

    config = schemathesis.Config.from_dict(CONFIG)
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, config=config)

    @schema.auth(refresh_interval=None)
    class FreshToken:
        """A new token for every case."""

        def get(self, case, ctx):
            return token_for(case.path)

        def set(self, case, data, ctx):
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    @schema.hook
    def filter_failure(context, failure, case, response):
        return not (ignores_unknown_parameter(failure, case) or states_rule(failure, response))

    found: list[str] = []
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        found.append(
                            f"{event.recorder.label} [{event.phase.value}] {failure.code} "
                            f"{failure.title}: {failure.message}\n"
                            f"    {check.failure_info.code_sample}\n"
                            f"    -> {answer_of(event.recorder, case_id)}"
                        )
        elif isinstance(event, events.NonFatalError):
            trace = "".join(traceback.format_exception(event.value))
            found.append(f"error in {event.label}: {trace}")
        elif isinstance(event, events.FatalError):
            raise event.exception
    return found


@pytest.mark.timeout(300)  # about 20 s of CPU; the default 120 s is short on a busy machine
def test_every_operation_answers_as_documented(api: Api, probes_without_session):
    failures = run_schemathesis(api.app, api.token_for)
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)
