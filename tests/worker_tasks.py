"""Task types of the worker acceptance tests, loaded with TASKQ_IMPORTS=tests.worker_tasks."""

from __future__ import annotations

import os
import signal
import time

from marshmallow import Schema, fields

from taskq import SoftTimeLimitExceeded, TaskCancelled, TaskContext, register

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


@register("add_numbers", positional=True)
def add_numbers(arg1, arg2, scale=1):
    """Seed 002's task function: positional and keyword arguments, no payload, no ctx."""
    return (arg1 + arg2) * scale
