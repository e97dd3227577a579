"""marshmallow schemas of every request body, query string and response.

The views load requests with these classes, and /openapi.json is generated from
the same classes, so the documentation cannot drift from what is enforced.
Strings refuse NUL characters and unpaired surrogates and JSON objects refuse
NaN/Infinity, so nothing a client sends can fail later inside Postgres.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, ClassVar

import psycopg
from flask import current_app, has_app_context, request
from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    post_load,
    pre_load,
    validate,
    validates_schema,
)

from app.errors import error_response
from taskq.fields import HttpHeaders, OutboundUrl
from taskq.queues import MAX_CONCURRENCY, RATE_SYNTAX, parse_rate
from taskq.registry import SYSTEM_QUEUES, user_task_types
from taskq.representation import CALLBACK_EVENTS, PRIORITY_NAMES, STATUS_ALIASES

STATUSES = ("WAITING", "PENDING", "PROCESSING", "COMPLETED", "FAILED", "RETRYING", "CANCELLED")
MAX_PARENTS = 100
MAX_JSON_DEPTH = 32
NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 128
ORDERING_FIELDS = (
    "id",
    "created_at",
    "updated_at",
    "scheduled_at",
    "run_at",
    "started_at",
    "completed_at",
    "priority",
    "status",
    "title",
    "task_type",
    "queue",
    "attempts",
)
MAX_ORDERING_TERMS = 5


def any_case(word: str) -> str:
    """A regex matching ``word`` in any letter case (JSON schema patterns have no flags)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)


def comma_list(item: str, most: int | None = None) -> str:
    """A regex of 1 (to ``most``) comma-separated ``item``s, spaces allowed around each."""
    repeat = "*" if most is None else f"{{0,{most - 1}}}"
    return f"^ *(?:{item}) *(?:, *(?:{item}) *){repeat}$"


STATUS_LIST_PATTERN = comma_list("|".join(any_case(s) for s in (*STATUSES, *STATUS_ALIASES)))
ORDERING_PATTERN = comma_list("-?(?:" + "|".join(ORDERING_FIELDS) + ")", MAX_ORDERING_TERMS)
# int() also reads Arabic-Indic and fullwidth digits, "1_000" and " 7 " (and isdigit()
# passes superscripts, which int() then refuses): a number a client writes is ASCII digits.
ASCII_INTEGER = re.compile(r"[+-]?[0-9]+")
# A stored timestamp is read back in the session's time zone (offsets up to 16 h): a day
# inside Python's years 1-9999 on either side keeps every one readable, in UTC or not.
EARLIEST_DATETIME = datetime(1, 1, 2, tzinfo=UTC)
LATEST_DATETIME = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)


BIGINT_MAX = 2**63 - 1
# An event id: a history id, or a place <xact_id>-<history id> (ASCII digits, as above).
HISTORY_ID = "[0-9]{1,19}"
EVENT_ID = re.compile(rf"({HISTORY_ID})(?:-({HISTORY_ID}))?")


def ascii_int(text: str) -> int | None:
    """``text`` as an int when it is optionally signed ASCII digits, else None."""
    if not ASCII_INTEGER.fullmatch(text):
        return None
    try:
        return int(text)
    except ValueError:  # more digits than int() converts
        return None


def check_text(value: str) -> None:
    """Refuse what Postgres text cannot hold: NUL, and what UTF-8 cannot encode."""
    if "\x00" in value:
        raise ValidationError("NUL characters are not allowed.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("Not valid UTF-8 text.") from None


def check_json(value: Any, depth: int = 0) -> None:
    """Refuse JSON that jsonb cannot store: NaN/Infinity, NUL, bad text, deep nesting."""
    if depth > MAX_JSON_DEPTH:
        raise ValidationError(f"Nested deeper than {MAX_JSON_DEPTH} levels.")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError("NaN and Infinity are not valid JSON numbers.")
    if isinstance(value, str):
        check_text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key)
            check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_json(item, depth + 1)


class FullMatch(validate.Regexp):
    """A regex the whole value must match, as a JSON schema ``pattern`` anchored with ^ and $
    means (``re.match`` would let ``$`` match before a final newline)."""

    def __call__(self, value: str) -> str:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class SettingRange(validate.Range):
    """``min`` up to the app setting ``setting``, read when validating and when documenting."""

    def __init__(self, setting: str, minimum: int = 1) -> None:
        self.setting = setting
        super().__init__(min=minimum)

    @property
    def max(self) -> int | None:  # type: ignore[override]
        """The setting of the current app (None outside one: no upper bound known)."""
        return current_app.config[self.setting] if has_app_context() else None

    @max.setter
    def max(self, value: Any) -> None:
        """Range.__init__ assigns max; the setting decides it."""


class SettingLength(validate.Length):
    """A length from ``min`` up to the app setting ``setting`` (see SettingRange)."""

    def __init__(self, setting: str, minimum: int = 1) -> None:
        self.setting = setting
        super().__init__(min=minimum)

    max = SettingRange.max


class Text(fields.String):
    """A string Postgres can store."""

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        check_text(text)
        return text


class JsonObject(fields.Dict):
    """A JSON object jsonb can store."""

    def _deserialize(self, value, attr, data, **kwargs):
        obj = super()._deserialize(value, attr, data, **kwargs)
        check_json(obj)
        return obj


class JsonValue(fields.Raw):
    """Any JSON value jsonb can store."""

    def _deserialize(self, value, attr, data, **kwargs):
        check_json(value)
        return value


class Priority(fields.Field):
    """low/normal/high/critical (1/5/10/20) or an integer 0..100."""

    MESSAGE = "Must be low, normal, high, critical or an integer from 0 to 100."

    def __init__(self, **kwargs: Any) -> None:
        metadata = {
            "oneOf": [
                {"type": "string", "enum": list(PRIORITY_NAMES)},
                {"type": "integer", "minimum": 0, "maximum": 100},
            ],
            "description": "Higher runs first: low=1, normal=5, high=10, critical=20.",
        }
        metadata.update(kwargs.pop("metadata", {}))
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            name = value.strip().lower()
            if name in PRIORITY_NAMES:
                return PRIORITY_NAMES[name]
            value = ascii_int(name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            raise ValidationError(self.MESSAGE)
        return value


class QueryInteger(fields.Integer):
    """An integer in a query string: ASCII digits only."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and ascii_int(value) is None:
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class EventId(fields.String):
    """Where an event stream resumes: a history id; with ``places`` (the all-tasks streams)
    also a place ``<xact_id>-<history id>`` of their order. Blank means from now (0).

    Loads as the history id (int) or the place (tuple); ASCII digits only, each at most
    BIGINT_MAX. The pattern documents the shape; the bound is stated in words.
    """

    def __init__(self, places: bool = False, **kwargs: Any) -> None:
        self.places = places
        form = rf"{HISTORY_ID}(?:-{HISTORY_ID})?" if places else HISTORY_ID
        self.expected = (
            "an event id of this stream: <xact_id>-<history id>, or a history id"
            if places
            else "a non-negative integer"
        )
        rules = f"Must be {self.expected}, with no number above {BIGINT_MAX} (400 otherwise)"
        if places:
            rules += "; a history id is looked up, and one that is gone (its task deleted) is a 400"
        metadata = kwargs.pop("metadata", {})
        metadata = {
            **metadata,
            "pattern": rf"^\s*(?:{form})?\s*$",
            "description": f"{metadata.get('description', '')} {rules}.".strip(),
        }
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs).strip()
        if text == "":
            return 0
        match = EVENT_ID.fullmatch(text)
        values = [int(v) for v in match.groups() if v is not None] if match else []
        if not values or max(values) > BIGINT_MAX or (len(values) == 2 and not self.places):
            raise ValidationError(f"Must be {self.expected}.")
        return (values[0], values[1]) if len(values) == 2 else values[0]


class StoredDateTime(fields.AwareDateTime):
    """An ISO 8601 datetime to store (UTC when no offset), as an aware UTC datetime.

    Refused unless it lies between EARLIEST_DATETIME and LATEST_DATETIME: Postgres
    would store ``9999-12-31T23:59:59-12:00`` (year 10000 in UTC), and then no read
    of the row could turn it back into a Python datetime.
    """

    MESSAGE = "Must lie between 0001-01-02 and 9999-12-30 (UTC)."

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(default_timezone=UTC, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            moment = moment.astimezone(UTC)
        except OverflowError:
            raise ValidationError(self.MESSAGE) from None
        if not EARLIEST_DATETIME <= moment <= LATEST_DATETIME:
            raise ValidationError(self.MESSAGE)
        return moment


class DateBound(fields.Field):
    """A date (whole day) or an ISO 8601 datetime, as an aware UTC datetime.

    ``end=True`` makes the bound exclusive: the day after a date, a microsecond
    after a datetime, so ``created_at < bound`` keeps the index usable (past the
    last day Python knows, 9999-12-31, the bound is that day's end).
    """

    PATTERN = (
        "^(?!0000)[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
        "(?:[Tt ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:[.][0-9]{1,6})?)?"
        "(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?)?$"
    )
    MESSAGE = "Not a valid date: use YYYY-MM-DD or an ISO 8601 datetime."

    def __init__(self, end: bool = False, **kwargs: Any) -> None:
        metadata = {
            "type": "string",
            "pattern": self.PATTERN,
            "description": "YYYY-MM-DD or an ISO 8601 datetime (UTC when no offset); a day the "
            "calendar has (400 otherwise).",
        }
        metadata.update(kwargs.pop("metadata", {}))
        super().__init__(metadata=metadata, **kwargs)
        self.end = end

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or re.fullmatch(self.PATTERN, value) is None:
            raise ValidationError(self.MESSAGE)
        try:
            if len(value) == 10:
                day = date.fromisoformat(value)
                bound = datetime.combine(day, time.min, tzinfo=UTC)
                step = timedelta(days=1)
            else:
                bound = datetime.fromisoformat(value)
                if bound.tzinfo is None:
                    bound = bound.replace(tzinfo=UTC)
                step = timedelta(microseconds=1)
        except ValueError:  # a day the calendar lacks
            raise ValidationError(self.MESSAGE) from None
        if not self.end:
            return bound
        try:
            return bound + step
        except OverflowError:
            return datetime.max.replace(tzinfo=UTC)


def canonical_status(name: str) -> str | None:
    """A status as taskq names it, from its name or an alias in any case; None if neither."""
    status = name.strip().upper()
    return status if status in STATUSES else STATUS_ALIASES.get(name.strip().lower())


def rename_alias(data: Any, alias: str, name: str) -> Any:
    """Move ``alias`` to ``name`` in a request body (the seeds' field names)."""
    if isinstance(data, dict) and alias in data:
        data = dict(data)
        value = data.pop(alias)
        data.setdefault(name, value)
    return data


# --------------------------------------------------------------------------- auth

# The strength rules of app.auth.password_problems, as far as a JSON schema can say them.
PASSWORD_METADATA = {
    "minLength": MIN_PASSWORD_LENGTH,
    "description": (
        f"{MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters, not entirely numeric, not a "
        "common password and not too similar to the username, email or names (400 otherwise)."
    ),
}


class RegisterSchema(Schema):
    """POST /auth/register."""

    username = Text(
        required=True,
        validate=[
            validate.Length(min=3, max=150),
            FullMatch(r"^[\w.@+-]+$", error="Letters, digits and @ . + - _ only."),
        ],
    )
    email = fields.Email(required=True, validate=validate.Length(max=254))
    password = Text(
        required=True,
        load_only=True,
        validate=validate.Length(max=MAX_PASSWORD_LENGTH),
        metadata=PASSWORD_METADATA,
    )
    password2 = Text(
        required=True,
        load_only=True,
        metadata={"description": "Repeat of password (alias password_confirm): 400 unless equal."},
    )
    first_name = Text(load_default="", validate=validate.Length(max=150))
    last_name = Text(load_default="", validate=validate.Length(max=150))
    cookies = fields.Boolean(
        load_default=False,
        load_only=True,
        metadata={
            "description": "Set the tokens as HttpOnly cookies (the dashboard) instead of "
            "returning them in the body."
        },
    )

    @pre_load
    def aliases(self, data: Any, **kwargs: Any) -> Any:
        """Accept password_confirm for password2."""
        return rename_alias(data, "password_confirm", "password2")

    @validates_schema
    def passwords_match(self, data: dict[str, Any], **kwargs: Any) -> None:
        """password2 repeats password."""
        if data.get("password") != data.get("password2"):
            raise ValidationError("The two passwords do not match.", "password2")


class LoginSchema(Schema):
    """POST /auth/login (and /auth/token): username or email, and password."""

    username = Text(required=True, metadata={"description": "Username or email."})
    password = Text(required=True, load_only=True)
    cookies = fields.Boolean(
        load_default=False,
        load_only=True,
        metadata={
            "description": "Set the tokens as HttpOnly cookies (the dashboard) instead of "
            "returning them in the body."
        },
    )


class RefreshSchema(Schema):
    """POST /auth/token/refresh (a cookie session sends no body: the refresh cookie is used)."""

    refresh = Text(required=True, metadata={"description": "A refresh token."})


class VerifySchema(Schema):
    """POST /auth/token/verify."""

    token = Text(required=True)


class LogoutSchema(Schema):
    """POST /auth/logout (body optional): the refresh token to revoke with the access token."""

    refresh = Text(
        load_default=None,
        allow_none=True,
        metadata={"description": "A refresh token of the caller (400 when it is not)."},
    )


class ProfileUpdateSchema(Schema):
    """PATCH /auth/profile."""

    email = fields.Email(validate=validate.Length(max=254))
    first_name = Text(validate=validate.Length(max=150))
    last_name = Text(validate=validate.Length(max=150))


class ChangePasswordSchema(Schema):
    """POST /auth/change-password."""

    old_password = Text(required=True, load_only=True)
    new_password = Text(
        required=True,
        load_only=True,
        validate=validate.Length(max=MAX_PASSWORD_LENGTH),
        metadata=PASSWORD_METADATA,
    )
    new_password2 = Text(
        required=True,
        load_only=True,
        metadata={
            "description": "Repeat of new_password (alias new_password_confirm): 400 unless equal."
        },
    )

    @pre_load
    def aliases(self, data: Any, **kwargs: Any) -> Any:
        """Accept new_password_confirm for new_password2."""
        return rename_alias(data, "new_password_confirm", "new_password2")

    @validates_schema
    def passwords_match(self, data: dict[str, Any], **kwargs: Any) -> None:
        """new_password2 repeats new_password."""
        if data.get("new_password") != data.get("new_password2"):
            raise ValidationError("The two passwords do not match.", "new_password2")


class UserSchema(Schema):
    """A user as the API shows it."""

    id = fields.Integer()
    username = fields.String()
    email = fields.String()
    first_name = fields.String()
    last_name = fields.String()
    is_admin = fields.Boolean()
    created_at = fields.DateTime()


class TokensSchema(Schema):
    """A pair of JWTs."""

    access = fields.String()
    refresh = fields.String()


class AuthResponseSchema(Schema):
    """Register, login, refresh and change-password answers."""

    user = fields.Nested(UserSchema)
    tokens = fields.Nested(
        TokensSchema, metadata={"description": "Absent for a cookie session (they are cookies)."}
    )
    message = fields.String()


class UserResponseSchema(Schema):
    """Profile answers."""

    user = fields.Nested(UserSchema)
    message = fields.String()


class VerifyResponseSchema(Schema):
    """Token verification answer."""

    valid = fields.Boolean()
    token_type = fields.String()
    user_id = fields.Integer()
    expires_at = fields.DateTime()


class MessageSchema(Schema):
    """A plain confirmation."""

    message = fields.String()


class ErrorSchema(Schema):
    """Every error body."""

    error = fields.String(required=True)
    field_errors = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        required=True,
        metadata={"description": "Messages per field (`tasks.3.title` in a batch); may be empty."},
    )


# -------------------------------------------------------------------------- tasks


class TaskCreateSchema(Schema):
    """POST /tasks (and each item of POST /tasks/batch).

    The payload is checked against the task type's own schema; unknown and
    internal types are refused alike, with the list of the types users may
    create, and so are the system's queues.
    """

    # For /openapi.json: what the fields cannot say (title, or its alias name, is required).
    OPENAPI_EXTRA: ClassVar[dict[str, Any]] = {
        "anyOf": [{"required": ["title"]}, {"required": ["name"]}, {"required": ["task_name"]}]
    }

    title = Text(validate=validate.Length(min=1, max=255))
    name = Text(
        load_only=True,
        validate=validate.Length(min=1, max=255),
        metadata={"description": "Alias of title."},
    )
    description = Text(load_default="", validate=validate.Length(max=10_000))
    task_type = Text(
        load_default="process",
        validate=validate.Length(min=1, max=100),
        metadata={
            "description": "A type GET /api/v1/task-types lists (400 for any other, internal "
            "types included)."
        },
    )
    payload = JsonObject(
        load_default=dict,
        metadata={"description": "Must fit the task type's payload_schema (400 otherwise)."},
    )
    queue = Text(
        load_default="default",
        validate=FullMatch(NAME_PATTERN),
        metadata={"description": "A queue the system reserves for itself is refused (400)."},
    )
    priority = Priority(load_default=PRIORITY_NAMES["normal"])
    scheduled_at = StoredDateTime(
        allow_none=True,
        load_default=None,
        metadata={"description": "Run no earlier than this (UTC when no offset)."},
    )
    scheduled_time = StoredDateTime(
        allow_none=True,
        load_only=True,
        metadata={"description": "Alias of scheduled_at."},
    )
    max_retries = fields.Integer(strict=True, load_default=3, validate=validate.Range(0, 100))
    retry_delay = fields.Integer(
        strict=True,
        load_default=60,
        validate=validate.Range(0, 7 * 86400),
        metadata={"description": "Base of the exponential backoff, seconds."},
    )
    timeout = fields.Integer(
        strict=True,
        allow_none=True,
        load_default=None,
        validate=validate.Range(1, 7 * 86400),
        metadata={"description": "Hard time limit of one attempt, seconds."},
    )
    tags = fields.List(
        Text(validate=validate.Length(min=1, max=64)),
        load_default=list,
        validate=validate.Length(max=50),
    )
    metadata = JsonObject(load_default=dict)
    callback_url = OutboundUrl(
        allow_none=True,
        load_default=None,
        validate=validate.Length(max=2048),
        metadata={
            "description": "http(s) URL told of the task's events; private and loopback "
            "addresses are refused (400) unless TASKQ_ALLOW_PRIVATE_URLS."
        },
    )
    callback_events = fields.List(
        fields.String(validate=validate.OneOf(CALLBACK_EVENTS)),
        allow_none=True,
        load_default=None,
        validate=validate.Length(min=1, max=len(CALLBACK_EVENTS)),
    )
    callback_headers = HttpHeaders(
        allow_none=True,
        load_default=None,
        validate=validate.Length(max=50),
    )
    callback_secret = Text(
        load_only=True,
        allow_none=True,
        load_default=None,
        validate=validate.Length(min=1, max=256),
    )
    callback_max_attempts = fields.Integer(
        strict=True, load_default=5, validate=validate.Range(1, 50)
    )
    unique_key = Text(
        allow_none=True,
        load_default=None,
        validate=validate.Length(min=1, max=255),
        metadata={
            "description": "While a task of the caller with this key exists (unfinished, or "
            "created in the same unique_for window), a create returns it (200) instead of "
            "a new one. Checked after the Idempotency-Key."
        },
    )
    unique_for = fields.Integer(
        strict=True,
        allow_none=True,
        load_default=None,
        validate=validate.Range(1, 366 * 86400),
        metadata={
            "description": "Seconds: the key is unique within aligned windows of this length "
            "(whatever the task's status). Absent: unique while the task is unfinished. "
            "Ignored without a unique_key."
        },
    )
    depends_on = fields.List(
        fields.Integer(strict=True, validate=validate.Range(1, BIGINT_MAX)),
        allow_none=True,
        load_default=None,
        validate=validate.Length(min=1, max=MAX_PARENTS),
        metadata={
            "description": "Ids of the caller's tasks this one waits for (WAITING until all "
            "have COMPLETED; CANCELLED when one fails or is cancelled). 404 for a task that "
            "is not the caller's, 409 for one already FAILED or CANCELLED."
        },
    )
    callback_format = fields.String(
        allow_none=True,
        load_default=None,
        validate=validate.OneOf(["taskq", "seed"]),
        metadata={
            "description": "Webhook body: taskq (the default) or seed, the earlier systems' "
            'field names (name, status "success", error_message).'
        },
    )
    # Seed 002's create body: read as the fields above before loading (``seed_aliases``), so
    # they are checked by those fields' rules; declared here for the document only.
    task_name = Text(
        load_only=True,
        validate=validate.Length(min=1, max=100),
        metadata={"description": "Alias of task_type; also the title when none is given."},
    )
    queue_name = Text(
        load_only=True,
        validate=FullMatch(NAME_PATTERN),
        metadata={"description": "Alias of queue."},
    )
    args = fields.List(
        JsonValue(),
        load_only=True,
        metadata={"description": "payload.args (a positional task type's arguments)."},
    )
    kwargs = JsonObject(
        load_only=True,
        metadata={"description": "payload.kwargs. Give args/kwargs or payload, not both."},
    )

    @pre_load
    def seed_aliases(self, data: Any, **kwargs: Any) -> Any:
        """Seed 002's ``task_name``, ``queue_name``, ``args`` and ``kwargs``."""
        if not isinstance(data, dict):
            return data
        if "task_name" in data and not ({"title", "name"} & data.keys()):
            data = {**data, "title": data["task_name"]}
        data = rename_alias(rename_alias(data, "task_name", "task_type"), "queue_name", "queue")
        if not ({"args", "kwargs"} & data.keys()):
            return data
        data = dict(data)
        call = {"args": data.pop("args", []), "kwargs": data.pop("kwargs", {})}
        if not isinstance(call["args"], list):
            raise ValidationError("Not a valid list.", "args")
        if not isinstance(call["kwargs"], dict):
            raise ValidationError("Not a valid mapping type.", "kwargs")
        if "payload" in data:
            raise ValidationError("Give payload, or args and kwargs, not both.", "args")
        data["payload"] = call
        return data

    @post_load
    def resolve(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Apply the aliases, then check queue, task_type and the payload against the registry."""
        if data.get("depends_on"):
            data["depends_on"] = sorted(set(data["depends_on"]))
        if data.get("unique_key") is None:
            data["unique_for"] = None  # a window of no key: nothing to hold
        alias = data.pop("name", None)
        data["title"] = data.get("title") or alias
        if not data["title"]:
            raise ValidationError("Missing data for required field.", "title")
        if data["callback_format"] == "taskq":
            data["callback_format"] = None  # NULL is taskq's own format
        alias_time = data.pop("scheduled_time", None)
        data["scheduled_at"] = data.get("scheduled_at") or alias_time
        if data["queue"] in SYSTEM_QUEUES:
            raise ValidationError(f"Queue {data['queue']!r} is reserved for the system.", "queue")
        registry = user_task_types()
        task_type = registry.get(data["task_type"])
        if task_type is None:
            known = ", ".join(sorted(registry))
            message = f"Unknown task type {data['task_type']!r}; known types: {known}."
            raise ValidationError(message, "task_type")
        try:
            task_type.validate(data["payload"])
        except ValidationError as exc:
            raise ValidationError({"payload": exc.messages}) from None
        return data


class TaskBatchSchema(Schema):
    """POST /tasks/batch: up to TASKQ_MAX_BATCH tasks, created in one transaction."""

    tasks = fields.List(
        fields.Nested(TaskCreateSchema), required=True, validate=SettingLength("TASKQ_MAX_BATCH")
    )


class IdempotencyHeaderSchema(Schema):
    """The Idempotency-Key header of POST /tasks."""

    key = Text(
        data_key="Idempotency-Key",
        validate=validate.Length(min=1, max=255, error="Give 1 to 255 characters."),
        metadata={
            "description": "Makes retries safe: the same key and body again answer 200 with the "
            "first task; the same key with another body answers 422."
        },
    )


def page_field() -> QueryInteger:
    """The page number of a paginated list."""
    return QueryInteger(load_default=1, validate=validate.Range(min=1, max=1_000_000))


def page_size_field() -> QueryInteger:
    """The page size of a paginated list: up to TASKQ_MAX_PAGE_SIZE."""
    return QueryInteger(
        validate=SettingRange("TASKQ_MAX_PAGE_SIZE"),
        metadata={"description": "Results per page (default TASKQ_PAGE_SIZE)."},
    )


def cursor_field() -> Text:
    """The keyset cursor of a paginated list: a ``next_cursor`` this list gave."""
    return Text(
        validate=validate.Length(min=1, max=4000),
        metadata={
            "description": "The next_cursor of the previous page: the rows after its last row, "
            "in that page's order (the cursor's order wins over ordering, and page is ignored). "
            "Only a cursor this list gave is accepted (400 otherwise)."
        },
    )


def snapshot_field(what: str, **options: Any) -> fields.String:
    """The Postgres snapshot a read's ``what`` come from, and how a client tells by it
    which /events transitions they already hold."""
    return fields.String(
        metadata={
            "description": f"The Postgres snapshot the {what} were read in, as "
            "pg_current_snapshot() prints it: xmin:xmax:xip,... A transition of /events or "
            "/admin/events (id <xact>-<history id>, place_is_writer true) is already in "
            f"the {what} when its xact is visible in it: xact < xmin, or xact < xmax and "
            "not in xip.",
        },
        **options,
    )


def page_fields(item: type[Schema], paged: bool = True) -> dict[str, fields.Field]:
    """The fields of a page of ``item``: count, links, next_cursor and the results."""
    body: dict[str, fields.Field] = {
        "count": fields.Integer(
            metadata={
                "description": "Rows matching the filters: exact when count_exact, else a lower "
                "bound (the count stopped at TASKQ_COUNT_LIMIT; with a search of a frequent "
                "word, the rows the page read: before it, on it and the one after it)."
            }
        ),
        "count_exact": fields.Boolean(
            metadata={
                "description": "Whether count is exact: always for the filters the counters "
                "answer (owner, status, task_type, queue), else when below TASKQ_COUNT_LIMIT; "
                "with a search, when a page-number read reached the last match."
            }
        ),
        "next_cursor": fields.String(
            allow_none=True,
            metadata={"description": "Pass as cursor for the next page; null on the last page."},
        ),
        "results": fields.List(fields.Nested(item)),
    }
    if paged:
        body["next"] = fields.String(allow_none=True)
        body["previous"] = fields.String(
            allow_none=True, metadata={"description": "Null when the page was asked by cursor."}
        )
    return body


class TaskListQuerySchema(Schema):
    """Query string of GET /tasks and GET /admin/tasks."""

    class Meta:
        unknown = EXCLUDE

    status = Text(
        validate=FullMatch(
            STATUS_LIST_PATTERN, error=f"Must be among {', '.join(STATUSES)} (comma-separated)."
        ),
        metadata={
            "description": "One status or several, comma-separated (case-insensitive); the "
            "aliases " + ", ".join(f"{a} ({s})" for a, s in STATUS_ALIASES.items()) + " too."
        },
    )
    task_type = Text()
    queue = Text()
    priority = Priority()
    tag = Text()
    start_date = DateBound(metadata={"description": "Created at or after (YYYY-MM-DD or ISO)."})
    end_date = DateBound(end=True)
    search = Text(
        validate=validate.Length(max=200),
        metadata={
            "description": "Words: each must start a word of the title or description, in any "
            "case (full-text search, to_tsvector 'simple'); a search with no word matches nothing."
        },
    )
    ordering = Text(
        validate=FullMatch(
            ORDERING_PATTERN,
            error=f"Give 1 to {MAX_ORDERING_TERMS} of {', '.join(ORDERING_FIELDS)}, "
            "comma-separated ('-' for descending).",
        ),
        metadata={"description": "Fields, comma-separated; '-' for descending."},
    )
    page = page_field()
    page_size = page_size_field()
    cursor = cursor_field()

    @post_load
    def split_status(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """status=pending,success as a list of enum values (aliases read as their status)."""
        if "status" in data:
            statuses = [canonical_status(s) for s in data["status"].split(",") if s.strip()]
            if None in statuses or not statuses:
                raise ValidationError(f"Must be among {', '.join(STATUSES)}.", "status")
            data["status"] = list(dict.fromkeys(statuses))
        return data


class AdminTaskListQuerySchema(TaskListQuerySchema):
    """Query string of GET /admin/tasks: the user filters as well."""

    user_id = QueryInteger(validate=validate.Range(min=1, max=BIGINT_MAX))
    username = Text()


class PageQuerySchema(Schema):
    """page/page_size (or cursor) of the other paginated lists."""

    class Meta:
        unknown = EXCLUDE

    page = page_field()
    page_size = page_size_field()
    cursor = cursor_field()


class CursorQuerySchema(Schema):
    """page_size and cursor of a list that pages by cursor only."""

    class Meta:
        unknown = EXCLUDE

    page_size = page_size_field()
    cursor = cursor_field()


class OwnerSchema(Schema):
    """The owner of a task, in the admin list (all null for the system's own tasks)."""

    id = fields.Integer(allow_none=True)
    username = fields.String(allow_none=True)
    email = fields.String(allow_none=True)


class TaskSchema(Schema):
    """A task as the API, webhooks and events show it (taskq.representation)."""

    id = fields.Integer()
    user_id = fields.Integer(allow_none=True)
    user = fields.Nested(OwnerSchema, metadata={"description": "Owner (admin list only)."})
    title = fields.String()
    description = fields.String()
    task_type = fields.String()
    payload = fields.Dict()
    queue = fields.String()
    priority = fields.Integer()
    status = fields.String(validate=validate.OneOf(STATUSES))
    scheduled_at = fields.DateTime(allow_none=True)
    run_at = fields.DateTime()
    next_retry_at = fields.DateTime(allow_none=True)
    attempts = fields.Integer()
    max_retries = fields.Integer()
    retry_delay = fields.Integer()
    timeout = fields.Integer(allow_none=True)
    result = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True)
    tags = fields.List(fields.String())
    metadata = fields.Dict()
    worker_id = fields.String(allow_none=True)
    callback_url = fields.String(allow_none=True)
    callback_events = fields.List(fields.String(), allow_none=True)
    callback_max_attempts = fields.Integer()
    callback_format = fields.String(allow_none=True)
    has_callback_secret = fields.Boolean()
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    completed_at = fields.DateTime(allow_none=True)
    updated_at = fields.DateTime()
    unique_key = fields.String(allow_none=True)
    unique_for = fields.Integer(allow_none=True)
    snoozes = fields.Integer(metadata={"description": "Runs that snoozed (attempts not spent)."})
    progress = fields.Float(allow_none=True, metadata={"description": "Percent done (0-100)."})
    progress_message = fields.String(allow_none=True)
    progress_at = fields.DateTime(allow_none=True)
    depends_on = fields.List(fields.Integer(), metadata={"description": "Parent task ids."})
    pending_parents = fields.Integer(metadata={"description": "Parents not COMPLETED yet."})


WARNINGS_DESCRIPTION = (
    "The task was stored but may not run soon: no live worker serves its queue, or it is paused."
)


class TaskCreatedSchema(Schema):
    """Answer of POST /tasks."""

    task = fields.Nested(TaskSchema)
    message = fields.String()
    warnings = fields.List(fields.String(), metadata={"description": WARNINGS_DESCRIPTION})


class TaskBatchCreatedSchema(Schema):
    """Answer of POST /tasks/batch."""

    tasks = fields.List(fields.Nested(TaskSchema))
    count = fields.Integer()
    existing = fields.List(
        fields.Integer(),
        metadata={
            "description": "Positions of the tasks whose unique_key was taken: their entry is "
            "the task holding it (201 when some task was created, 200 when none was)."
        },
    )
    message = fields.String()
    warnings = fields.List(fields.String(), metadata={"description": WARNINGS_DESCRIPTION})


TaskPageSchema = Schema.from_dict(
    {**page_fields(TaskSchema), "snapshot": snapshot_field("rows", allow_none=True)},
    name="TaskPageSchema",
)
TaskPageSchema.__doc__ = "A page of tasks."


class TaskDetailSchema(Schema):
    """Answer of GET /tasks/{id}."""

    task = fields.Nested(TaskSchema)
    cached = fields.Boolean()


class TaskStatusSchema(Schema):
    """Answer of GET /tasks/{id}/status."""

    id = fields.Integer()
    status = fields.String()
    attempts = fields.Integer()
    max_retries = fields.Integer()
    result = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True)
    next_retry_at = fields.DateTime(allow_none=True)
    progress = fields.Float(allow_none=True)
    progress_message = fields.String(allow_none=True)
    progress_at = fields.DateTime(allow_none=True)
    pending_parents = fields.Integer()
    started_at = fields.DateTime(allow_none=True)
    completed_at = fields.DateTime(allow_none=True)
    updated_at = fields.DateTime()


class HistoryEntrySchema(Schema):
    """One transition."""

    id = fields.Integer()
    from_status = fields.String(allow_none=True)
    to_status = fields.String()
    attempt = fields.Integer()
    worker_id = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    created_at = fields.DateTime()


class TaskHistorySchema(Schema):
    """Answer of GET /tasks/{id}/history."""

    task_id = fields.Integer()
    history = fields.List(fields.Nested(HistoryEntrySchema))


class AdminTaskDetailSchema(Schema):
    """Answer of GET /admin/tasks/{id}: any user's task, its owner and its history."""

    task = fields.Nested(TaskSchema)
    history = fields.List(fields.Nested(HistoryEntrySchema))


class TaskActionSchema(Schema):
    """Answer of cancel, retry and reprocess."""

    task = fields.Nested(TaskSchema)
    message = fields.String()


class StatusCountSchema(Schema):
    """Tasks in one status."""

    status = fields.String()
    count = fields.Integer()


class StatsSchema(Schema):
    """Answer of GET /tasks/stats."""

    stats = fields.List(fields.Nested(StatusCountSchema))
    total = fields.Integer()
    snapshot = snapshot_field("counts")


class TaskTypeSchema(Schema):
    """One registered task type."""

    name = fields.String()
    description = fields.String()
    payload_schema = fields.Dict(metadata={"description": "JSON schema of the payload."})


class TaskTypesSchema(Schema):
    """Answer of GET /task-types."""

    task_types = fields.List(fields.Nested(TaskTypeSchema))


class DeadLetterSchema(Schema):
    """A task that ended FAILED."""

    id = fields.Integer()
    task_id = fields.Integer()
    user_id = fields.Integer(allow_none=True)
    task_type = fields.String()
    queue = fields.String()
    payload = fields.Dict()
    error = fields.String(allow_none=True)
    attempts = fields.Integer()
    failed_at = fields.DateTime()
    reprocessed_at = fields.DateTime(allow_none=True)
    task_status = fields.String(allow_none=True)


DeadLetterPageSchema = Schema.from_dict(page_fields(DeadLetterSchema), name="DeadLetterPageSchema")
DeadLetterPageSchema.__doc__ = "A page of dead letters."


class DeadLetterDetailSchema(Schema):
    """Answer of GET /dead-letters/{id}."""

    dead_letter = fields.Nested(DeadLetterSchema)


class QueueStatSchema(Schema):
    """One row of the queue_stats view."""

    queue = fields.String()
    waiting = fields.Integer()
    due = fields.Integer()
    running = fields.Integer()
    oldest_due_age = fields.Float(allow_none=True, metadata={"description": "Seconds."})
    completed_last_minute = fields.Integer()
    failed_last_minute = fields.Integer()


class QueueControlsSchema(Schema):
    """A queue's controls (the queue_controls view): paused, limits, who serves it."""

    queue = fields.String()
    paused = fields.Boolean(metadata={"description": "No new claims on any worker."})
    concurrency = fields.Integer(
        allow_none=True, metadata={"description": "Most tasks PROCESSING at once, all workers."}
    )
    rate = fields.String(
        allow_none=True, metadata={"description": "At most N starts in any PERIOD: `100/60s`."}
    )
    rate_limit = fields.Integer(allow_none=True)
    rate_period = fields.Float(allow_none=True, metadata={"description": "Seconds."})
    description = fields.String()
    workers = fields.Integer(metadata={"description": "Live worker processes serving it."})
    has_waiting = fields.Boolean(metadata={"description": "Tasks PENDING or RETRYING in it."})
    unserved = fields.Boolean(metadata={"description": "Tasks wait and no live worker serves it."})
    updated_at = fields.DateTime(allow_none=True)


class QueueStatWithControlsSchema(QueueStatSchema, QueueControlsSchema):
    """One queue of GET /admin/queues: its figures and its controls."""


class QueuesSchema(Schema):
    """Answer of GET /admin/queues."""

    queues = fields.List(fields.Nested(QueueStatWithControlsSchema))


class QueueDetailSchema(Schema):
    """Answer of GET/PATCH /admin/queues/{name} and of pause/resume."""

    queue = fields.Nested(QueueControlsSchema)
    message = fields.String()


class RateField(Text):
    """``N/PERIOD`` (``100/60s``, ``10/s``, ``5/2m``, ``1000/h``), loaded as a ``Rate``."""

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return parse_rate(text)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


class JsonBoolean(fields.Boolean):
    """true or false, nothing else (not 1, not "yes")."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class QueuePatchSchema(Schema):
    """PATCH /admin/queues/{name}: the fields to change (null clears a limit)."""

    OPENAPI_EXTRA: ClassVar[dict[str, Any]] = {"minProperties": 1}

    paused = JsonBoolean()
    concurrency = fields.Integer(
        strict=True,
        allow_none=True,
        validate=validate.Range(1, MAX_CONCURRENCY),
        metadata={"description": "Global limit of tasks PROCESSING at once; null: none."},
    )
    rate = RateField(
        allow_none=True,
        metadata={
            "pattern": f"^{RATE_SYNTAX}$",
            "description": "At most N starts in any PERIOD (`100/60s`); null: none.",
        },
    )
    description = Text(validate=validate.Length(max=1000))

    @validates_schema
    def not_empty(self, data: dict[str, Any], **kwargs: Any) -> None:
        """A PATCH that changes nothing is a mistake."""
        if not data:
            raise ValidationError("Give at least one of paused, concurrency, rate, description.")


QUEUE_NAME_PATTERN = re.compile(NAME_PATTERN)


class RunningTaskSchema(Schema):
    """A task a live worker runs now."""

    id = fields.Integer()
    user_id = fields.Integer(allow_none=True)
    title = fields.String()
    task_type = fields.String()
    queue = fields.String()
    attempts = fields.Integer()
    started_at = fields.DateTime(allow_none=True)


class WorkerSchema(Schema):
    """One row of the live_workers view."""

    id = fields.String()
    hostname = fields.String()
    pid = fields.Integer()
    queues = fields.List(fields.String())
    concurrency = fields.Integer()
    started_at = fields.DateTime()
    heartbeat_at = fields.DateTime()
    silent_for = fields.Float(metadata={"description": "Seconds since the last heartbeat."})
    running = fields.Integer()
    running_tasks = fields.List(fields.Nested(RunningTaskSchema))


class WorkersSchema(Schema):
    """Answer of GET /admin/workers."""

    workers = fields.List(fields.Nested(WorkerSchema))


class TriggerWebhookSchema(Schema):
    """POST /tasks/{id}/trigger-webhook (the body is optional)."""

    event = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.OneOf(CALLBACK_EVENTS),
        metadata={"description": "Default: the event of the task's current status."},
    )


class WebhookAttemptSchema(Schema):
    """One attempt of a webhook delivery."""

    attempt = fields.Integer()
    at = fields.DateTime()
    status_code = fields.Integer(allow_none=True)
    duration_ms = fields.Float(allow_none=True)
    error = fields.String(allow_none=True)


class WebhookDeliverySchema(Schema):
    """One webhook delivery and its attempt log."""

    id = fields.Integer()
    task_id = fields.Integer()
    event = fields.String()
    url = fields.String()
    attempt = fields.Integer()
    max_attempts = fields.Integer()
    status = fields.String()
    status_code = fields.Integer(allow_none=True)
    duration_ms = fields.Float(allow_none=True)
    error = fields.String(allow_none=True)
    created_at = fields.DateTime()
    delivered_at = fields.DateTime(allow_none=True)
    attempt_log = fields.List(fields.Nested(WebhookAttemptSchema))


WebhookDeliveriesSchema = Schema.from_dict(
    page_fields(WebhookDeliverySchema, paged=False), name="WebhookDeliveriesSchema"
)
WebhookDeliveriesSchema.__doc__ = "Answer of GET /tasks/{id}/webhook-deliveries: a page of them."


class WebhookReplayedSchema(Schema):
    """Answer of a replay."""

    delivery_id = fields.Integer()
    replay_of = fields.Integer()
    message = fields.String()


class WebhookTriggeredSchema(Schema):
    """Answer of trigger-webhook."""

    delivery_id = fields.Integer()
    event = fields.String()
    message = fields.String()


class LastEventIdSchema(Schema):
    """The Last-Event-ID header of a task's event stream (it wins over the query string)."""

    last_event_id = EventId(
        data_key="Last-Event-ID",
        metadata={"description": "Resume after this event id (EventSource sends it)."},
    )


class EventsQuerySchema(Schema):
    """Query string of a task's event stream (``token``: see the streamToken security scheme)."""

    class Meta:
        unknown = EXCLUDE

    last_event_id = EventId(
        metadata={"description": "Resume after this event id (when no Last-Event-ID header)."}
    )


class AllEventsLastEventIdSchema(LastEventIdSchema):
    """The Last-Event-ID header of an all-tasks stream: a place, or a history id."""

    last_event_id = EventId(
        places=True,
        data_key="Last-Event-ID",
        metadata={"description": "Resume after this event (EventSource sends its id)."},
    )


class AllEventsQuerySchema(EventsQuerySchema):
    """Query string of an all-tasks stream."""

    last_event_id = EventId(
        places=True,
        metadata={"description": "Resume after this event (when no Last-Event-ID header)."},
    )


class TaskEventSchema(Schema):
    """One server-sent event of a stream."""

    id = fields.String(
        metadata={
            "description": "The history id; on an all-tasks stream the place "
            "`<xact_id>-<history id>` (none on `deleted`)."
        }
    )
    event = fields.String(
        required=True,
        validate=validate.OneOf([s.lower() for s in (*STATUSES, "DELETED", "PROGRESS")]),
        metadata={
            "description": "The task's new status, lower case; or `progress` (no `id`: not a "
            "transition, never replayed; data {id, progress, message, at})."
        },
    )
    data = fields.String(required=True, metadata={"description": "The transition as JSON."})


class StreamTokenSchema(Schema):
    """Answer of POST /events/token."""

    token = fields.String()
    expires_in = fields.Integer(metadata={"description": "Seconds."})


class HealthSchema(Schema):
    """Answer of /healthz."""

    status = fields.String()


class ReadySchema(Schema):
    """Answer of /readyz: ready, or why not."""

    status = fields.String(validate=validate.OneOf(["ready", "not ready"]))
    checks = fields.Dict(keys=fields.String(), values=fields.String())


class StuckTaskSchema(Schema):
    """One row of the stuck_tasks view: running, but its lease expired."""

    id = fields.Integer()
    queue = fields.String()
    task_type = fields.String()
    worker_id = fields.String(allow_none=True)
    attempts = fields.Integer()
    started_at = fields.DateTime(allow_none=True)
    lease_expires_at = fields.DateTime()
    overdue = fields.Float(metadata={"description": "Seconds since the lease expired."})


class StuckTasksSchema(Schema):
    """Answer of GET /admin/stuck-tasks."""

    stuck_tasks = fields.List(fields.Nested(StuckTaskSchema))


# ------------------------------------------------------------ request helpers


def load_query(schema_cls: type[Schema]) -> dict[str, Any]:
    """The request's query string loaded with ``schema_cls`` (400 with field_errors)."""
    return schema_cls().load(request.args.to_dict())


def reject_bad_data(bp: Any) -> None:
    """Answer 400, not 500, when Postgres refuses a value that passed validation."""

    def handle(exc: psycopg.errors.DataError):
        current_app.logger.info("data refused by Postgres: %s", exc)
        return error_response(400, "Invalid data: a value is out of range or malformed.")

    bp.register_error_handler(psycopg.errors.DataError, handle)
