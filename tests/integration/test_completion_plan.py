"""The completion UPDATE keeps a plan sized for its batch however often a worker has run it.

Regression: with the statement prepared, Postgres switched to a cached generic
plan after five executions; that plan sized ``unnest(ids)`` at 10 rows and,
with statistics that saw almost no PROCESSING row, rescanned the id list for
every task it updated (1,000 completions: 150 ms instead of 15). The plan the
worker's own connection really ran is read back through auto_explain, whose
output this session receives as notices.
"""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.helpers import insert_tasks
from tests.worker_helpers import claim, claim_connection, write
from worker.completer import Outcomes
from worker.exchange import Exchange

PRIOR_BATCHES = 6  # more than the 5 custom plans after which Postgres may go generic
BATCH = 1000


def complete_held(exchange: Exchange, db: psycopg.Connection) -> int:
    """Complete every held task through the worker's outcome path (no new claim); how many."""
    outcomes = Outcomes()
    held = db.execute("SELECT id, lease_token FROM tasks WHERE status = 'PROCESSING'").fetchall()
    for row in held:
        outcomes.complete(row["id"], row["lease_token"], None)
    write(exchange, outcomes)
    return len(held)


def plan_nodes(node: dict) -> list[dict]:
    """``node`` and every node under it."""
    return [node, *(n for child in node.get("Plans", ()) for n in plan_nodes(child))]


def test_1000_completions_after_six_batches_keep_a_batch_sized_plan(database_url, db):
    try:
        db.execute("LOAD 'auto_explain'")
    except psycopg.errors.UndefinedFile:
        pytest.skip("this Postgres build ships no auto_explain (contrib is not installed)")
    insert_tasks(db, PRIOR_BATCHES * 2 + BATCH)
    plans: list[dict] = []

    def keep_plan(diag: psycopg.errors.Diagnostic) -> None:
        text = diag.message_primary or ""
        if "plan:" in text:
            plans.append(json.loads(text.split("plan:", 1)[1]))

    # the worker's connection: statements prepared on first use
    with claim_connection(database_url) as exchange:
        conn = exchange.conn
        for _ in range(PRIOR_BATCHES):
            claim(exchange, 2)
            assert complete_held(exchange, db) == 2
        assert len(claim(exchange, BATCH)) == BATCH
        conn.add_notice_handler(keep_plan)
        for statement in (
            "LOAD 'auto_explain'",
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_analyze = on",
            "SET auto_explain.log_timing = off",
            "SET auto_explain.log_format = json",
            "SET auto_explain.log_level = notice",
        ):
            conn.execute(statement, prepare=False)
        assert complete_held(exchange, db) == BATCH
        conn.execute("RESET auto_explain.log_min_duration", prepare=False)

    updates = [p["Plan"] for p in plans if "Store results and COMPLETED" in p.get("Query Text", "")]
    assert len(updates) == 1
    update = updates[0]
    assert update["Node Type"] == "ModifyTable"
    scans = [n for n in plan_nodes(update) if n.get("Alias") == "d"]  # unnest(ids, tokens, …)
    assert [n["Node Type"] for n in scans] == ["Function Scan"]
    # Sized for the batch (a generic plan guesses 10), and read once, not once per task.
    assert scans[0]["Plan Rows"] == BATCH
    assert scans[0]["Actual Loops"] == 1
    assert scans[0]["Actual Rows"] == BATCH
    done = db.execute("SELECT count(*) AS n FROM tasks WHERE status = 'COMPLETED'").fetchone()
    assert done["n"] == PRIOR_BATCHES * 2 + BATCH
