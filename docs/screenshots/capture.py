"""Screenshots of the console for the README (1280x800, Debian's Chromium).

Against a running ``taskq up`` (or ``taskq api`` + ``taskq worker``) on an empty
database: ``DATABASE_URL=… python docs/screenshots/capture.py http://127.0.0.1:8000``.
It registers ``ann`` and the admin ``root``, makes a few tasks of each kind,
waits for the worker, and writes overview.png, tasks.png, task.png and
queues.png beside this file.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psycopg
import requests

from bench.dashboard_latency import CHROMIUM, CHROMIUM_ARGS
from taskq.admin import create_admin_user

HERE = Path(__file__).parent
PASSWORD = "Sturdy-Lamp-42"


def main(api: str, database_url: str) -> None:
    """Make the data, then the four pictures."""
    from playwright.sync_api import expect, sync_playwright

    body = {"username": "ann", "password": PASSWORD}
    account = {**body, "email": "ann@example.com", "password2": PASSWORD}
    requests.post(f"{api}/api/v1/auth/register", json=account, timeout=10)
    create_admin_user(database_url, "root", None, PASSWORD)
    login = requests.post(f"{api}/api/v1/auth/login", json=body, timeout=10).json()
    headers = {"Authorization": f"Bearer {login['tokens']['access']}"}

    def create(**task):
        response = requests.post(f"{api}/api/v1/tasks", json=task, headers=headers, timeout=10)
        response.raise_for_status()
        return response.json()["task"]

    for n in range(1, 6):
        create(
            title=f"Monthly sum {n}",
            task_type="compute",
            payload={"operation": "sum", "numbers": list(range(n * 10))},
            tags=["finance"],
        )
    create(
        title="Welcome email",
        task_type="send_email",
        payload={"to": ["new@example.com"], "subject": "Welcome"},
        priority="high",
    )
    create(
        title="Nightly report",
        task_type="generate_report",
        payload={"report_type": "summary"},
        queue="reports",
        priority="low",
    )
    create(
        title="Thumbnail 640",
        task_type="resize_image",
        payload={"image_url": "https://example.com/a.png", "width": 640, "height": 480},
        queue="images",
    )
    flaky = create(
        title="Fetch partner feed",
        task_type="http_request",
        payload={"url": "https://partner.invalid/feed", "timeout": 2},
        max_retries=2,
        retry_delay=1,
    )
    create(title="Long import", task_type="sleep", payload={"duration": 120})
    cancelled = create(title="Old export", task_type="sleep", payload={"duration": 5}, queue="held")
    requests.post(f"{api}/api/v1/tasks/{cancelled['id']}/cancel", headers=headers, timeout=10)
    with psycopg.connect(database_url, autocommit=True) as conn:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the flaky task spends its retries
            row = conn.execute("SELECT status::text FROM tasks WHERE id = %s", (flaky["id"],))
            if row.fetchone()[0] == "FAILED":
                break
            time.sleep(0.5)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        for username, shots in (
            (
                "ann",
                [
                    ("#/", "overview", ".activity li"),
                    ("#/tasks", "tasks", "tr[data-task-id]"),
                    (f"#/tasks/{flaky['id']}", "task", ".timeline li"),
                ],
            ),
            ("root", [("#/admin/queues", "queues", "tr[data-queue]")]),
        ):
            page = browser.new_page(viewport={"width": 1280, "height": 800}, base_url=api)
            page.goto("/dashboard/")
            page.get_by_label("Username or email").fill(username)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("status").filter(has_text="Live")).to_be_visible()
            for route, name, content in shots:
                page.goto(f"/dashboard/{route}")
                expect(page.locator(content).first).to_be_visible()
                if name == "queues":  # the chart counts what finishes while the page is open
                    for wave in range(24):
                        batch = [
                            {
                                "title": f"wave {wave}.{n}",
                                "task_type": "compute",
                                "payload": {"operation": "sum", "numbers": [n]},
                            }
                            for n in range(5 + (wave * 7) % 30)
                        ]
                        batch += [
                            {
                                "title": f"bad {wave}",
                                "task_type": "http_request",
                                "payload": {"url": "https://partner.invalid/"},
                                "max_retries": 0,
                            }
                        ] * (wave % 4 == 0)
                        requests.post(
                            f"{api}/api/v1/tasks/batch", json=batch, headers=headers, timeout=10
                        ).raise_for_status()
                        time.sleep(1)
                page.screenshot(path=str(HERE / f"{name}.png"))
            page.close()
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000", os.environ["DATABASE_URL"])
