"""OpenTelemetry traces of a task's life, when the ``otel`` extra is installed and configured.

One trace runs from ``POST /api/v1/tasks`` (span ``taskq.create``, a child of
the request's own span or of an incoming ``traceparent`` header) through the
worker's claim (``taskq.claim``: from the moment the task was due until a
worker claimed it) and its run (``taskq.run``), to each webhook delivery of it
(``taskq.webhook``). The create span's context is stored with the task
(``tasks.trace_context``, W3C ``traceparent``/``tracestate``, migration 0013);
the worker and the webhook sender continue from it.

Zero cost when unused: without opentelemetry installed nothing is imported
beyond this module and every helper returns at once; installed without an SDK
configured, spans do not record, ``carrier()`` is None, nothing is stored, and
the worker skips tasks with no stored context.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

try:
    from opentelemetry import propagate, trace
except ImportError:  # the otel extra is not installed
    trace = propagate = None  # type: ignore[assignment]

TRACER = "taskq"


def enabled() -> bool:
    """opentelemetry is importable."""
    return trace is not None


def carrier() -> dict[str, str] | None:
    """The current span's context as W3C headers, or None when no span records."""
    if trace is None or not trace.get_current_span().is_recording():
        return None
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers or None


def parse_carrier(value: Any) -> dict[str, str] | None:
    """A stored trace context (jsonb read as a dict, or its JSON text) as a carrier."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None


@contextlib.contextmanager
def span(
    name: str,
    parent: Mapping[str, str] | None = None,
    start_time: int | None = None,
    **attributes: Any,
) -> Iterator[Any]:
    """A span named ``name``, a child of the carrier ``parent`` (else of the current span);
    None (and nothing done) without opentelemetry."""
    if trace is None:
        yield None
        return
    context = propagate.extract(parent) if parent is not None else None
    tracer = trace.get_tracer(TRACER)
    attrs = {k.replace("__", "."): v for k, v in attributes.items() if v is not None}
    with tracer.start_as_current_span(
        name, context=context, start_time=start_time, attributes=attrs
    ) as current:
        yield current


def continued(name: str, stored: Any, **attributes: Any) -> contextlib.AbstractContextManager:
    """A span continuing a task's stored trace context; nothing (None) when it has none."""
    parent = parse_carrier(stored) if trace is not None else None
    if parent is None:
        return contextlib.nullcontext()
    return span(name, parent, **attributes)


def request_parent(headers: Mapping[str, str]) -> Mapping[str, str] | None:
    """The parent of an API span: the current span when one records (Flask instrumentation),
    else the request's ``traceparent`` header, if any."""
    if trace is None or trace.get_current_span().get_span_context().is_valid:
        return None
    if headers.get("traceparent") is None:
        return None
    return {k: v for k in ("traceparent", "tracestate") if (v := headers.get(k)) is not None}
