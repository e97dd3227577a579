"""The built-in task types of SPEC.md, each with the payload schema the API validates.

``send_email``, ``resize_image`` and ``generate_report`` are simulated: they
wait ``TASKQ_SIMULATED_SECONDS`` (default ``0.1-0.5``) and describe what they
would have done. ``process`` is the default type: ``TASKQ_PROCESS_SECONDS``
(default ``10-20``) of simulated work. Both come from ``ctx.settings``.

The system's own types (``cleanup_old_tasks``, ``rebuild_queue_indexes``,
``deliver_webhook``) are declared here, with their payload schemas, so the API
knows and refuses them; the worker implements them (``worker.cleanup``,
``worker.reindex``, ``worker.webhooks``).
"""

from __future__ import annotations

import json
import math
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from marshmallow import (
    Schema,
    ValidationError,
    fields,
    validate,
    validates_schema,
)

from taskq.fields import HttpHeaders, OutboundUrl
from taskq.registry import TaskContext, declare, register
from taskq.urlguard import fetch

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
MAX_RESULT_TEXT = 64 * 1024


def simulated_seconds(bounds: tuple[float, float]) -> float:
    """A random duration within ``bounds`` (a setting's range)."""
    return random.uniform(*bounds)


class EmptySchema(Schema):
    """No arguments (unknown keys are dropped)."""


@register("process", payload=EmptySchema)
def process(payload: dict, ctx: TaskContext) -> dict:
    """Simulated work: sleeps TASKQ_PROCESS_SECONDS (default 10-20 s)."""
    seconds = simulated_seconds(ctx.settings.process_seconds)
    time.sleep(seconds)
    return {"processed": True, "seconds": round(seconds, 3)}


@register("echo")
def echo(payload: Any, ctx: TaskContext) -> Any:
    """Returns the payload as it is."""
    return payload


@register("noop")
def noop(payload: Any, ctx: TaskContext) -> None:
    """Does nothing and returns null at once (benchmarks)."""
    return None


class ComputeSchema(Schema):
    operation = fields.String(required=True, validate=validate.OneOf(["sum", "product", "average"]))
    numbers = fields.List(
        fields.Float(allow_nan=False), required=True, validate=validate.Length(min=1, max=100_000)
    )


def plain_number(value: float) -> int | float:
    """An integral float as an int, so 1+2 is 3, not 3.0."""
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


@register("compute", payload=ComputeSchema)
def compute(payload: dict, ctx: TaskContext) -> dict:
    """Sum, product or average of a list of numbers."""
    numbers = payload["numbers"]
    operation = payload["operation"]
    if operation == "sum":
        value = math.fsum(numbers)
    elif operation == "product":
        value = math.prod(numbers)
    else:
        value = math.fsum(numbers) / len(numbers)
    if not math.isfinite(value):
        raise ArithmeticError(f"{operation} overflows")
    return {"operation": operation, "result": plain_number(float(value))}


class SleepSchema(Schema):
    duration = fields.Float(
        required=True, allow_nan=False, validate=validate.Range(min=0, max=24 * 3600)
    )


@register("sleep", payload=SleepSchema)
def sleep(payload: dict, ctx: TaskContext) -> dict:
    """Sleeps ``duration`` seconds."""
    time.sleep(payload["duration"])
    return {"slept": payload["duration"]}


class HttpRequestSchema(Schema):
    url = OutboundUrl(required=True)
    method = fields.String(
        load_default="GET",
        validate=validate.OneOf(HTTP_METHODS + tuple(m.lower() for m in HTTP_METHODS)),
    )
    headers = HttpHeaders(load_default=dict)
    body = fields.Raw(load_default=None, allow_none=True)
    timeout = fields.Float(load_default=10.0, validate=validate.Range(min=0.1, max=300))
    raise_for_status = fields.Boolean(load_default=True)


@register("http_request", payload=HttpRequestSchema)
def http_request(payload: dict, ctx: TaskContext) -> dict:
    """One HTTP request (no redirects followed; private addresses refused)."""
    body = payload["body"]
    headers = dict(payload["headers"])
    if body is not None and not isinstance(body, str | bytes):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    data = body.encode() if isinstance(body, str) else body
    reply = fetch(
        payload["method"],
        payload["url"],
        headers=headers,
        body=data,
        timeout=payload["timeout"],
        allow_private=ctx.settings.allow_private_urls,
    )
    if payload["raise_for_status"] and reply.status >= 400:
        raise RuntimeError(f"HTTP {reply.status} from {payload['url']}")
    return {
        "status_code": reply.status,
        "headers": reply.headers,
        "body": reply.text()[:MAX_RESULT_TEXT],
        "elapsed_ms": round(reply.elapsed_ms, 2),
    }


TRANSFORMS = {
    "upper": lambda v: v.upper() if isinstance(v, str) else v,
    "lower": lambda v: v.lower() if isinstance(v, str) else v,
    "double": lambda v: v * 2 if isinstance(v, int | float) and not isinstance(v, bool) else v,
    "square": lambda v: v * v if isinstance(v, int | float) and not isinstance(v, bool) else v,
    "negate": lambda v: -v if isinstance(v, int | float) and not isinstance(v, bool) else v,
    "string": lambda v: v if isinstance(v, str) else json.dumps(v),
}


def is_number(value: Any) -> bool:
    """A JSON number (booleans are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


FILTERS = {
    "truthy": lambda v, _: bool(v),
    "positive": lambda v, _: is_number(v) and v > 0,
    "negative": lambda v, _: is_number(v) and v < 0,
    "even": lambda v, _: isinstance(v, int) and not isinstance(v, bool) and v % 2 == 0,
    "odd": lambda v, _: isinstance(v, int) and not isinstance(v, bool) and v % 2 == 1,
    "gt": lambda v, x: is_number(v) and is_number(x) and v > x,
    "lt": lambda v, x: is_number(v) and is_number(x) and v < x,
    "eq": lambda v, x: v == x,
    "contains": lambda v, x: isinstance(v, str) and isinstance(x, str) and x in v,
}


class ProcessDataSchema(Schema):
    data = fields.List(fields.Raw(allow_none=True), required=True)
    operation = fields.String(
        required=True, validate=validate.OneOf(["transform", "filter", "aggregate"])
    )
    function = fields.String(load_default="auto", validate=validate.OneOf(["auto", *TRANSFORMS]))
    predicate = fields.String(load_default="truthy", validate=validate.OneOf(list(FILTERS)))
    value = fields.Raw(load_default=None, allow_none=True)

    @validates_schema
    def value_needed(self, data: dict, **kwargs: Any) -> None:
        if data.get("predicate") in {"gt", "lt", "contains"} and data.get("value") is None:
            raise ValidationError("this predicate needs a value", "value")


@register("process_data", payload=ProcessDataSchema)
def process_data(payload: dict, ctx: TaskContext) -> dict:
    """Transform, filter or aggregate a list of values."""
    data = payload["data"]
    operation = payload["operation"]
    if operation == "transform":
        name = payload["function"]
        if name == "auto":
            result = [TRANSFORMS["upper"](TRANSFORMS["double"](v)) for v in data]
        else:
            result = [TRANSFORMS[name](v) for v in data]
        return {"operation": operation, "count": len(result), "result": result}
    if operation == "filter":
        keep = FILTERS[payload["predicate"]]
        result = [v for v in data if keep(v, payload["value"])]
        return {"operation": operation, "count": len(result), "result": result}
    numbers = [v for v in data if is_number(v)]
    summary: dict[str, Any] = {
        "count": len(data),
        "numeric_count": len(numbers),
        "distinct": len({json.dumps(v, sort_keys=True) for v in data}),
    }
    if numbers:
        total = math.fsum(numbers)
        summary |= {
            "sum": plain_number(total),
            "min": min(numbers),
            "max": max(numbers),
            "average": total / len(numbers),
        }
    return {"operation": operation, "result": summary}


class SendEmailSchema(Schema):
    to = fields.List(fields.Email(), required=True, validate=validate.Length(min=1, max=100))
    subject = fields.String(required=True, validate=validate.Length(max=998))
    body = fields.String(load_default="")
    cc = fields.List(fields.Email(), load_default=list)

    def load(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        """Accept a single address as ``to`` as well as a list."""
        if isinstance(data, dict) and isinstance(data.get("to"), str):
            data = {**data, "to": [data["to"]]}
        return super().load(data, *args, **kwargs)


@register("send_email", payload=SendEmailSchema)
def send_email(payload: dict, ctx: TaskContext) -> dict:
    """Sends an email (simulated)."""
    time.sleep(simulated_seconds(ctx.settings.simulated_seconds))
    return {
        "sent": True,
        "simulated": True,
        "to": payload["to"],
        "cc": payload["cc"],
        "subject": payload["subject"],
        "message_id": f"<{uuid.uuid4()}@taskq>",
    }


class ResizeImageSchema(Schema):
    image_url = fields.Url(required=True, schemes={"http", "https"}, require_tld=False)
    width = fields.Integer(required=True, validate=validate.Range(min=1, max=20_000))
    height = fields.Integer(required=True, validate=validate.Range(min=1, max=20_000))
    format = fields.String(
        load_default="jpeg", validate=validate.OneOf(["jpeg", "png", "webp", "gif"])
    )


@register("resize_image", payload=ResizeImageSchema)
def resize_image(payload: dict, ctx: TaskContext) -> dict:
    """Resizes an image (simulated)."""
    time.sleep(simulated_seconds(ctx.settings.simulated_seconds))
    name = uuid.uuid4().hex
    return {
        "simulated": True,
        "source_url": payload["image_url"],
        "width": payload["width"],
        "height": payload["height"],
        "format": payload["format"],
        "output": f"resized/{name}_{payload['width']}x{payload['height']}.{payload['format']}",
    }


class GenerateReportSchema(Schema):
    report_type = fields.String(
        required=True, validate=validate.OneOf(["summary", "detailed", "analytics", "financial"])
    )
    output_format = fields.String(
        load_default="json", validate=validate.OneOf(["json", "csv", "pdf", "xlsx"])
    )
    parameters = fields.Dict(load_default=dict)


@register("generate_report", payload=GenerateReportSchema)
def generate_report(payload: dict, ctx: TaskContext) -> dict:
    """Generates a report (simulated)."""
    time.sleep(simulated_seconds(ctx.settings.simulated_seconds))
    return {
        "simulated": True,
        "report_type": payload["report_type"],
        "output_format": payload["output_format"],
        "file": "reports/{}_{}.{}".format(
            payload["report_type"], uuid.uuid4().hex[:8], payload["output_format"]
        ),
        "generated_at": datetime.now(UTC).isoformat(),
    }


class CleanupSchema(Schema):
    days = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=0))
    batch_size = fields.Integer(load_default=1000, validate=validate.Range(min=1, max=100_000))


class RebuildSchema(Schema):
    min_mb = fields.Float(load_default=64.0, validate=validate.Range(min=0))
    ratio = fields.Float(load_default=4.0, validate=validate.Range(min=1))


class DeliverySchema(Schema):
    """The delivery to send."""

    delivery_id = fields.Integer(required=True, strict=True)


declare(
    "cleanup_old_tasks",
    payload=CleanupSchema,
    description="Deletes COMPLETED and FAILED tasks older than TASKQ_CLEANUP_DAYS (30) days.",
)
declare(
    "rebuild_queue_indexes",
    payload=RebuildSchema,
    description="Rebuilds ix_tasks_claim and ix_tasks_lease (REINDEX CONCURRENTLY) when they are "
    "at least min_mb (64) and ratio (4) times what their live entries need.",
)
declare(
    "deliver_webhook",
    payload=DeliverySchema,
    description="Sends one webhook delivery (signed POST); raises so the engine retries a failure.",
)
