"""Task types of the worker acceptance tests, loaded with TASKQ_IMPORTS=tests.worker_tasks."""

from __future__ import annotations

import os
import signal
import time

from marshmallow import Schema, fields

from taskq import Snooze, SoftTimeLimitExceeded, TaskCancelled, TaskContext, register

LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS ledger (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id bigint NOT NULL, attempt int NOT NULL, pid int NOT NULL, phase text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp())
"""


class LedgerSchema(Schema):
    sleep = fields.Float(load_default=0.0)


def write(ctx: TaskContext, phase: str) -> None:
    ctx.connection().execute(
        "INSERT INTO ledger (task_id, attempt, pid, phase) VALUES (%s, %s, %s, %s)",
        [ctx.task_id, ctx.attempt, os.getpid(), phase],
    )


@register("ledger", payload=LedgerSchema)
def ledger(payload: dict, ctx: TaskContext) -> dict:
    """Writes a ledger row, sleeps, writes another."""
    write(ctx, "start")
    time.sleep(payload["sleep"])
    write(ctx, "end")
    return {"pid": os.getpid()}


@register("stubborn", payload=LedgerSchema)
def stubborn(payload: dict, ctx: TaskContext) -> None:
    """Catches the soft limit and the cancel, and sleeps on: only a kill stops it."""
    write(ctx, "start")
    deadline = time.monotonic() + payload["sleep"]
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except (SoftTimeLimitExceeded, TaskCancelled):
            write(ctx, "ignored")


@register("crash")
def crash(payload: dict, ctx: TaskContext) -> None:
    """Kills its own process."""
    os.kill(os.getpid(), signal.SIGKILL)


@register("kill_worker", payload=LedgerSchema)
def kill_worker(payload: dict, ctx: TaskContext) -> None:
    """Writes a ledger row and SIGKILLs its whole worker, supervisor and children included."""
    write(ctx, "start")
    os.killpg(os.getpgrp(), signal.SIGKILL)


class SnoozeSchema(Schema):
    times = fields.Integer(load_default=1)
    seconds = fields.Float(load_default=0.1)
    raise_it = fields.Boolean(load_default=False)


@register("snoozer", payload=SnoozeSchema)
def snoozer(payload: dict, ctx: TaskContext) -> dict:
    """Snoozes ``times`` times (``ctx.snooze``, or ``raise Snooze``), then completes."""
    write(ctx, "start")
    runs = (
        ctx.connection()
        .execute("SELECT count(*) FROM ledger WHERE task_id = %s", [ctx.task_id])
        .fetchone()[0]
    )
    if runs <= payload["times"]:
        if payload["raise_it"]:
            raise Snooze(payload["seconds"])
        ctx.snooze(payload["seconds"])
    return {"runs": runs, "attempt": ctx.attempt}


class ProgressSchema(Schema):
    reports = fields.Integer(load_default=100)
    pause = fields.Float(load_default=0.01)


@register("reporter", payload=ProgressSchema)
def reporter(payload: dict, ctx: TaskContext) -> dict:
    """Reports progress ``reports`` times, ``pause`` seconds apart, ending at 100%."""
    for n in range(1, payload["reports"] + 1):
        ctx.progress(100 * n / payload["reports"], f"step {n}")
        time.sleep(payload["pause"])
    return {"reports": payload["reports"]}


@register("fail")
def fail(payload: dict, ctx: TaskContext) -> None:
    """Always raises."""
    raise RuntimeError("this task always fails")


@register("add_numbers", positional=True)
def add_numbers(arg1, arg2, scale=1):
    """Seed 002's task function: positional and keyword arguments, no payload, no ctx."""
    return (arg1 + arg2) * scale


class HostileSchema(Schema):
    message = fields.String(required=True)
    error = fields.String(required=True)
    gate = fields.String(required=True)


def await_file(path: str, timeout: float = 60.0) -> None:
    """Return once ``path`` exists (at most ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)


@register("hostile", payload=HostileSchema)
def hostile(payload: dict, ctx: TaskContext) -> None:
    """Task code a user controls (the console's XSS tests): reports progress with the
    payload's ``message`` once the file ``<gate>/report`` exists, then raises with its
    ``error`` once ``<gate>/fail`` exists."""
    await_file(os.path.join(payload["gate"], "report"))
    ctx.progress(50, payload["message"])
    await_file(os.path.join(payload["gate"], "fail"))
    raise RuntimeError(payload["error"])
