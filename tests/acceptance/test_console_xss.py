"""Stored XSS in the console, in a real Chromium: what one user writes, another reads as text.

A user controls a task's title, description, tags, payload, its result, error and
progress messages (through their task code), its webhook URL, and their own names.
An admin's console shows all of it. Every view must render it as text: no element,
no handler, no ``javascript:`` URL may come of it.

The pages run with the page's Content-Security-Policy bypassed, so an injection would
execute and set ``window.__xss``: the test checks the console's code, not just the CSP
in front of it. A MutationObserver also records every element with an inline handler,
a ``javascript:`` URL, or a tag the console never makes (img, script, iframe…), so an
injection is caught even if it never runs. A second test checks the CSP itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from app.auth import create_admin_user
from tests.helpers import PASSWORD, Console, Receiver, api_server, chromium_browser, wait_for
from tests.worker_helpers import start_worker, stop_worker

pytestmark = pytest.mark.slow

SECRET = "console-xss-acceptance-secret-0123456789abcdef"
DESKTOP = {"width": 1280, "height": 800}

# Each one names its sink in window.__xss, so a failure says which field got through.
TITLE = """<img src=x onerror="window.__xss='title'"> report"""
DESCRIPTION = (
    "</script><script>window.__xss='description'</script>"
    """<img src=x onerror="window.__xss='description'">"""
)
TAG = """<svg onload="window.__xss='tag'">"""
NOTE = """<iframe src="javascript:window.__xss='payload'"></iframe>"""
MESSAGE = """<img src=x onerror="window.__xss='progress'"> halfway"""
ERROR = """<img src=x onerror="window.__xss='error'"></pre><script>window.__xss='error'</script>"""
HOOK_QUERY = "?next=<svg/onload=window.__xss='url'>"  # a URL has no spaces
FIRST_NAME = """<img src=x onerror="window.__xss='first_name'">"""
# The API allows letters, digits and @.+-_ only; another path (psql, an import) may not.
USERNAME = """mal<img src=x onerror="window.__xss='username'">"""

# Before any script of the page: record what an injection would leave in the DOM.
PROBE = r"""
(() => {
  window.__injected = [];
  const foreign = new Set(["script", "img", "image", "iframe", "object", "embed", "frame"]);
  const check = (node) => {
    if (!(node instanceof Element)) return;
    for (const el of [node, ...node.querySelectorAll("*")]) {
      const tag = el.localName;
      const bad = (foreign.has(tag) && !(tag === "script" && el.src)) ||
        [...el.attributes].some((a) => /^on/i.test(a.name) || /^\s*javascript:/i.test(a.value));
      if (bad) window.__injected.push(el.outerHTML.slice(0, 300));
    }
  };
  new MutationObserver((records) => {
    for (const record of records) {
      if (record.type === "attributes") check(record.target);
      else record.addedNodes.forEach(check);
    }
  }).observe(document, {childList: true, subtree: true, attributes: true});
  window.__violations = [];
  document.addEventListener("securitypolicyviolation",
    (event) => window.__violations.push(`${event.effectiveDirective} ${event.sample}`));
})();
"""


@pytest.fixture(scope="module")
def site(pg_server_url: str, template_database: str) -> Iterator[Console]:
    # The webhook receiver is on 127.0.0.1; tests.worker_tasks has ``hostile``.
    local = {"TASKQ_ALLOW_PRIVATE_URLS": "1", "TASKQ_IMPORTS": "tests.worker_tasks"}
    with api_server(
        pg_server_url, template_database, "taskq_xss", SECRET, 1,
        TASKQ_COOKIE_SECURE="0", TASKQ_SSE_KEEPALIVE="1", **local,
    ) as (url, database_url):  # fmt: skip
        worker = start_worker(database_url, "--concurrency", "2", **local)
        try:
            body = {
                "username": "mal",
                "email": "mal@example.com",
                "password": PASSWORD,
                "password2": PASSWORD,
                "first_name": FIRST_NAME,
                "last_name": TITLE,
            }
            answer = requests.post(f"{url}/api/v1/auth/register", json=body, timeout=10)
            assert answer.status_code == 201, answer.text
            create_admin_user(database_url, "root", None, PASSWORD)
            yield Console(url, database_url)
        finally:
            stop_worker(worker)


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as chromium:
        yield chromium


@pytest.fixture
def open_console(browser, site):
    """``open_console(login, bypass_csp=True)``: a page of the console signed in as
    ``login`` (a username or an email), live, with the PROBE installed; page errors fail."""
    from playwright.sync_api import expect

    expect.set_options(timeout=15_000)
    opened, errors = [], []

    def open_as(login: str, bypass_csp: bool = True):
        context = browser.new_context(viewport=DESKTOP, base_url=site.url, bypass_csp=bypass_csp)
        opened.append(context)
        body = {"username": login, "password": PASSWORD, "cookies": True}
        assert context.request.post("/api/v1/auth/login", data=body).ok
        context.add_init_script(PROBE)
        tab = context.new_page()
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.goto("/dashboard/")
        expect(tab.get_by_role("heading", name="Overview")).to_be_visible()
        expect(tab.get_by_role("status").filter(has_text="Live")).to_be_visible()
        return tab

    yield open_as
    for context in opened:
        context.close()
    assert errors == []


def assert_inert(page, where: str) -> None:
    """Nothing ran, and nothing foreign was built (the probe sees an element as it is
    added: no need to wait for an ``onerror`` to fire)."""
    found = page.evaluate("[window.__xss, window.__injected, window.__violations]")
    assert found == [None, [], []], f"{where}: {found}"


def go(page, route: str, heading: str | re.Pattern[str]):
    """Open a route of the console (same document) and wait for its heading."""
    from playwright.sync_api import expect

    page.goto(f"/dashboard/#{route}")
    expect(page.get_by_role("heading", level=1, name=heading)).to_be_visible()


def test_every_view_shows_what_a_user_wrote_as_text_to_the_admin_and_the_user(
    site, open_console, tmp_path: Path
):
    from playwright.sync_api import expect

    # The API refuses a javascript: webhook URL outright.
    refused = site.post_task("mal", title="t", task_type="echo", callback_url="javascript:alert(1)")
    assert refused.status_code == 400, refused.text
    echoed = site.create("mal", title=TITLE, task_type="echo", payload={"note": NOTE})
    receiver = Receiver([200])
    try:
        gate = tmp_path / "gate"
        gate.mkdir()
        task = site.create(
            "mal", title=TITLE, description=DESCRIPTION, tags=[TAG], max_retries=0,
            callback_url=receiver.url + HOOK_QUERY, task_type="hostile",
            payload={"message": MESSAGE, "error": ERROR, "gate": str(gate)},
        )  # fmt: skip
        tid = task["id"]
        wait_for(lambda: site.status(tid) == "PROCESSING", 30, "the hostile task to start")
        wait_for(lambda: site.status(echoed["id"]) == "COMPLETED", 30, "the echo task")
        site.sql("UPDATE users SET username = %s WHERE username = 'mal'", (USERNAME,))

        admin = open_console("root")
        user = open_console("mal@example.com")  # the username is no longer "mal"
        expect(user.get_by_role("banner")).to_contain_text(f"Signed in as {USERNAME}")
        feed = user.get_by_role("log", name="Recent activity")
        expect(feed.get_by_role("link", name=f"#{tid} {TITLE}")).to_be_visible()

        # The admin's views of a running task: workers, all tasks, the task itself.
        go(admin, "/admin/workers", "Workers")
        expect(admin.get_by_role("link", name=f"#{tid} {TITLE}")).to_be_visible()
        assert_inert(admin, "admin workers")
        go(admin, "/admin/queues", "Queues")
        expect(admin.get_by_role("rowheader", name="default")).to_be_visible()
        assert_inert(admin, "admin queues")
        go(admin, "/admin/stuck", "Stuck tasks")
        expect(admin.get_by_role("table")).to_be_visible()
        go(admin, "/admin/tasks", "All tasks")
        row = admin.locator(f"tr[data-task-id='{tid}']")
        expect(row.get_by_role("link", name=TITLE, exact=True)).to_be_visible()
        expect(row).to_contain_text(USERNAME)
        assert_inert(admin, "admin task list")
        go(admin, f"/admin/tasks/{tid}", f"#{tid} {TITLE}")
        assert admin.title() == f"#{tid} {TITLE} · taskq"
        expect(admin.locator(".description")).to_have_text(DESCRIPTION)
        details = admin.get_by_role("region", name="Details")
        for shown in (USERNAME, TAG, receiver.url + HOOK_QUERY):
            expect(details.get_by_role("definition").filter(has_text=shown)).to_have_count(1)
        payload = admin.get_by_role("region", name="Payload")
        expect(payload).to_contain_text(json.dumps(MESSAGE)[1:-1])  # JSON: its quotes escaped
        expect(admin.get_by_text(f"Owner: {USERNAME}.")).to_be_visible()
        assert_inert(admin, "admin task page")

        # Live: the progress message, then the failure, arrive on the open page as events.
        (gate / "report").touch()
        expect(admin.locator(".progress-line")).to_contain_text(f"50% · {MESSAGE}")
        (gate / "fail").touch()
        expect(admin.get_by_role("status", name="Current status")).to_contain_text("Failed")
        expect(admin.get_by_role("region", name="Result").locator("pre")).to_contain_text(ERROR)
        expect(admin.get_by_role("list", name="History")).to_contain_text(ERROR)
        assert_inert(admin, "admin task page, live")
        entry = feed.get_by_role("listitem").filter(has_text=re.compile(r"Processing\s*→\s*Failed"))
        expect(entry.get_by_role("link", name=f"#{tid} {TITLE}")).to_be_visible()
        assert_inert(user, "user overview, live")

        # The user's own views: list, task page (read again), deliveries, dead letters.
        go(user, "/tasks", "Tasks")
        expect(user.locator(f"tr[data-task-id='{tid}']")).to_contain_text(TITLE)
        assert_inert(user, "user task list")
        delivered = "SELECT count(*) FROM webhook_deliveries WHERE task_id = %s AND status = %s"
        wait_for(lambda: site.sql(delivered, (tid, "delivered"))[0][0] == 1, 30, "the webhook")
        go(user, f"/tasks/{tid}", f"#{tid} {TITLE}")
        expect(user.locator(".progress-line")).to_contain_text(f"50% · {MESSAGE}")
        expect(user.get_by_role("region", name="Result").locator("pre")).to_contain_text(ERROR)
        deliveries = user.get_by_role("region", name="Webhook deliveries")
        expect(deliveries.get_by_role("cell", name=receiver.url + HOOK_QUERY)).to_be_visible()
        assert_inert(user, "user task page")
        go(user, f"/tasks/{echoed['id']}", f"#{echoed['id']} {TITLE}")
        expect(user.get_by_role("region", name="Result")).to_contain_text(json.dumps(NOTE)[1:-1])
        go(user, "/dead-letters", "Dead letters")
        letter = user.get_by_role("row").filter(has=user.get_by_role("link", name=f"#{tid}"))
        expect(letter.get_by_role("cell").filter(has_text=ERROR)).to_have_count(1)
        assert_inert(user, "user dead letters")
        assert_inert(admin, "admin, at the end")
    finally:
        receiver.close()


def test_the_console_is_served_with_a_csp_that_blocks_inline_handlers(site, open_console):
    """The second line of defence: no inline script, handler or javascript: URL runs. And
    the probe of the test above does catch an injection when the CSP is bypassed."""
    from playwright.sync_api import expect

    policy = requests.get(f"{site.url}/dashboard/", timeout=10).headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert directives["object-src"] == "'none'" and directives["base-uri"] == "'none'"

    inject = """() => {
        const main = document.getElementById("main");
        main.insertAdjacentHTML("beforeend", `<img src=x onerror="window.__xss='handler'">`);
        main.insertAdjacentHTML("beforeend", `<a id=js href="javascript:window.__xss=1">go</a>`);
    }"""
    bypassed = open_console("root", bypass_csp=True)
    bypassed.evaluate(inject)
    bypassed.wait_for_function("window.__xss === 'handler'")
    assert len(bypassed.evaluate("window.__injected")) == 2

    guarded = open_console("root", bypass_csp=False)
    guarded.evaluate(inject)
    guarded.locator("#js").click()
    guarded.wait_for_function("window.__violations.length >= 2")
    violations = guarded.evaluate("window.__violations")
    assert all(v.startswith("script-src") for v in violations), violations
    assert guarded.evaluate("window.__xss") is None
    expect(guarded.get_by_role("heading", name="Overview")).to_be_visible()
