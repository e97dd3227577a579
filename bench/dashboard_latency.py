"""Dashboard latency in a real Chromium: page load, and transition commit -> on screen.

``python -m bench.dashboard_latency`` (``DATABASE_URL`` set) starts ``taskq api``
on a free port, signs a bench user in through the API's cookie login, then:

* **page load**: ``--loads`` loads of ``/dashboard/`` (the first with an empty
  cache), each timed from navigation start to DOMContentLoaded, to the
  overview drawn from its REST reads (``taskq:view-ready``), and to the event
  stream being open (``taskq:live``): performance marks the page sets itself;
* **commit -> on screen**: ``--events`` status changes committed by an
  operator's ``UPDATE`` (tasks in a queue no worker serves), each timed from
  just before ``COMMIT`` to the animation frame after the page changed the
  task's row (tasks list, the caller's ``/events`` stream) or its status line
  (task page, the task's own stream). Both clocks are this machine's wall
  clock (``time.time()`` and ``performance.timeOrigin + performance.now()``).

Playwright's waits evaluate code in the page, which the console's CSP forbids:
the bench's browser contexts bypass CSP (``bypass_csp``); the page is the same.

``--api URL`` measures a running server instead (the bench user is created in
``DATABASE_URL``, which must be that server's database).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.sse_latency import percentile, start_api

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
USERNAME = "dashboard-bench"
PASSWORD = "Bench-Lamp-4242"
QUEUE = "dashboard-bench"

# Records, per task and status, the animation frame after the page showed it.
OBSERVE = """
(selector) => {
  window.__shown = {};
  const now = () => performance.timeOrigin + performance.now();
  const record = (key) => requestAnimationFrame(() => {
    if (!(key in window.__shown)) window.__shown[key] = now();
  });
  new MutationObserver((mutations) => {
    for (const m of mutations) {
      const el = m.target.closest ? m.target.closest(selector) : null;
      if (el && el.dataset.taskId && el.dataset.status) {
        record(`${el.dataset.taskId}:${el.dataset.status}`);
      }
    }
  }).observe(document.body, {subtree: true, attributes: true, attributeFilter: ["data-status"]});
}
"""
# The task page: the status line's text names the status.
OBSERVE_STATUS_LINE = """
(taskId) => {
  window.__shown = {};
  const line = document.querySelector('[aria-label="Current status"]');
  new MutationObserver(() => {
    const status = line.textContent.replace("Status:", "").trim().split(" ")[0].toUpperCase();
    const key = `${taskId}:${status}`;
    requestAnimationFrame(() => {
      if (!(key in window.__shown)) {
        window.__shown[key] = performance.timeOrigin + performance.now();
      }
    });
  }).observe(line, {subtree: true, childList: true, characterData: true});
}
"""


def summary(values: list[float]) -> dict[str, float]:
    """p50 / p95 / max of milliseconds, rounded."""
    return {
        "p50": round(statistics.median(values), 1),
        "p95": round(percentile(values, 95), 1),
        "max": round(max(values), 1),
        "n": len(values),
    }


def ensure_user(database_url: str) -> None:
    """The bench user, with a known password."""
    from werkzeug.security import generate_password_hash

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (username, email, password_hash) VALUES (%s, %s, %s) "
            "ON CONFLICT (lower(username)) DO UPDATE SET password_hash = EXCLUDED.password_hash",
            (USERNAME, f"{USERNAME}@example.com", generate_password_hash(PASSWORD)),
        )


def make_tasks(database_url: str, count: int) -> list[int]:
    """``count`` PENDING tasks of the bench user in a queue no worker serves."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "INSERT INTO tasks (user_id, title, queue, task_type) "
            "SELECT u.id, 'dashboard bench ' || n, %s, 'noop' "
            "  FROM users u, generate_series(1, %s) n WHERE u.username = %s RETURNING id",
            (QUEUE, count, USERNAME),
        ).fetchall()
    return sorted(row[0] for row in rows)


def measure_loads(browser: Any, api_url: str, state: dict, loads: int) -> dict[str, Any]:
    """Timings of ``loads`` page loads, the first with an empty cache."""
    context = browser.new_context(base_url=api_url, storage_state=state, bypass_csp=True)
    page = context.new_page()
    marks: dict[str, list[float]] = {"dom_content_loaded": [], "view_ready": [], "live": []}
    first = None
    for index in range(loads):
        page.goto("/dashboard/")
        page.wait_for_function(
            "performance.getEntriesByName('taskq:view-ready').length && "
            "performance.getEntriesByName('taskq:live').length"
        )
        timing = page.evaluate(
            """() => ({
              dom_content_loaded:
                performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd,
              view_ready: performance.getEntriesByName('taskq:view-ready')[0].startTime,
              live: performance.getEntriesByName('taskq:live')[0].startTime,
            })"""
        )
        if index == 0:
            first = {key: round(value, 1) for key, value in timing.items()}
            continue
        for key, value in timing.items():
            marks[key].append(value)
    context.close()
    return {"first_load_ms": first, "warm_loads_ms": {k: summary(v) for k, v in marks.items()}}


def measure_transitions(
    page: Any, database_url: str, task_ids: list[int], events: int, gap: float
) -> dict[str, float]:
    """Commit ``events`` transitions of ``task_ids``; commit -> frame latencies."""
    latencies = []
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT id, status::text FROM tasks WHERE id = ANY(%s)", (task_ids,)
        ).fetchall()
        status_of = dict(rows)
        conn.commit()
        for n in range(events):
            task_id = task_ids[n % len(task_ids)]
            status = "PROCESSING" if status_of[task_id] == "PENDING" else "PENDING"
            status_of[task_id] = status
            conn.execute("UPDATE tasks SET status = %s WHERE id = %s", (status, task_id))
            page.evaluate(f"delete window.__shown['{task_id}:{status}']")
            committed = time.time() * 1000
            conn.commit()
            key = f"{task_id}:{status}"
            page.wait_for_function(f"'{key}' in window.__shown", timeout=10_000)
            latencies.append(page.evaluate(f"window.__shown['{key}']") - committed)
            time.sleep(gap)
    return summary(latencies)


def run(api_url: str, database_url: str, loads: int, events: int, gap: float) -> dict[str, Any]:
    """Every measurement against the API at ``api_url``."""
    from playwright.sync_api import sync_playwright

    ensure_user(database_url)
    task_ids = make_tasks(database_url, 20)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            login = browser.new_context(base_url=api_url)
            body = {"username": USERNAME, "password": PASSWORD, "cookies": True}
            assert login.request.post("/api/v1/auth/login", data=body).ok, "bench login failed"
            state = login.storage_state()
            login.close()
            result: dict[str, Any] = {"page_load": measure_loads(browser, api_url, state, loads)}

            context = browser.new_context(base_url=api_url, storage_state=state, bypass_csp=True)
            page = context.new_page()
            page.goto(f"/dashboard/#/tasks?queue={QUEUE}&page_size=20")
            page.wait_for_selector("tr[data-task-id]")
            page.wait_for_function("performance.getEntriesByName('taskq:live').length")
            page.evaluate(OBSERVE, "tr[data-task-id]")
            tasks_list = measure_transitions(page, database_url, task_ids, events, gap)

            detail_task = task_ids[0]
            page.goto(f"/dashboard/#/tasks/{detail_task}")
            page.wait_for_selector('[aria-label="Current status"] .badge')
            page.evaluate(OBSERVE_STATUS_LINE, detail_task)
            detail = measure_transitions(page, database_url, [detail_task], events, gap)
            context.close()
            browser.close()
        result["commit_to_screen_ms"] = {"tasks_list": tasks_list, "task_page": detail}
        return result
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM tasks WHERE id = ANY(%s)", (task_ids,))


def main() -> None:
    """Command line: print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", help="URL of a running API (default: start one)")
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between transitions")
    args = parser.parse_args()
    database_url = os.environ["DATABASE_URL"]
    proc = None
    api_url = args.api
    if api_url is None:
        secret = os.environ.get("JWT_SECRET_KEY") or f"dashboard-bench-{os.getpid()}-0123456789ab"
        api_url, proc = start_api(database_url, secret, 1, TASKQ_COOKIE_SECURE="0")
    try:
        result = run(api_url, database_url, args.loads, args.events, args.gap)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=20)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
