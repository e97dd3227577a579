"""The console in a real Chromium, against ``taskq api`` (gunicorn) and a real worker.

The page is driven the way assistive technology drives it: by labels and roles.
Every wait is Playwright's auto-waiting ``expect`` (or the shared ``wait_for``
on the database), never a sleep.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import requests

from app.auth import create_admin_user
from tests.helpers import PASSWORD, Console, Receiver, api_server, chromium_browser, wait_for
from tests.worker_helpers import start_worker, stop_worker

pytestmark = pytest.mark.slow

SECRET = "dashboard-acceptance-secret-0123456789abcdef"
DESKTOP = {"width": 1280, "height": 800}
STATUS_CARDS = ("Waiting", "Pending", "Processing", "Retrying", "Completed", "Failed", "Cancelled")
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def console(pg_server_url: str, template_database: str) -> Iterator[Console]:
    # The webhook receiver is on 127.0.0.1; tests.worker_tasks has ``reporter`` (progress).
    local = {"TASKQ_ALLOW_PRIVATE_URLS": "1", "TASKQ_IMPORTS": "tests.worker_tasks"}
    with api_server(
        pg_server_url, template_database, "taskq_dash", SECRET, 1,
        TASKQ_COOKIE_SECURE="0", TASKQ_SSE_KEEPALIVE="1", **local,
    ) as (url, database_url):  # fmt: skip
        yield from console_on(url, database_url, local)


def console_on(url: str, database_url: str, local: dict[str, str]) -> Iterator[Console]:
    """The console's users and worker on a running API."""
    worker = start_worker(database_url, "--concurrency", "2", **local)
    try:
        # dot, sam, lee, kim: each is one test's alone, so its counts move by its own tasks only.
        for username in ("ann", "bob", "dot", "sam", "lee", "kim"):
            body = {
                "username": username,
                "email": f"{username}@example.com",
                "password": PASSWORD,
                "password2": PASSWORD,
            }
            assert requests.post(f"{url}/api/v1/auth/register", json=body, timeout=10).ok
        create_admin_user(database_url, "root", None, PASSWORD)
        yield Console(url, database_url)
    finally:
        stop_worker(worker)


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def sessions(browser, console):
    """``sessions(username)``: the cookies of one sign-in per user, shared by the tests that
    are not about signing in (each sign-in costs the server a password hash)."""
    states = {}

    def state(username: str) -> dict:
        if username not in states:
            context = browser.new_context(base_url=console.url)
            body = {"username": username, "password": PASSWORD, "cookies": True}
            assert context.request.post("/api/v1/auth/login", data=body).ok
            states[username] = context.storage_state()
            context.close()
        return states[username]

    return state


@pytest.fixture
def contexts(browser, console):
    """``contexts(storage_state=None)``: a browser profile at desktop size; page errors fail."""
    from playwright.sync_api import expect

    expect.set_options(timeout=15_000)
    opened, errors = [], []

    def open_page(storage_state=None):
        context = browser.new_context(
            viewport=DESKTOP, base_url=console.url, storage_state=storage_state
        )
        opened.append(context)
        tab = context.new_page()
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        return tab

    yield open_page
    for context in opened:
        context.close()
    assert errors == []


@pytest.fixture
def page(contexts):
    """A fresh profile: no cookies, nobody signed in."""
    return contexts()


@pytest.fixture
def as_user(contexts, sessions):
    """``as_user("ann")``: a page of the console, signed in as ann, live."""
    from playwright.sync_api import expect

    def open_as(username: str):
        tab = contexts(sessions(username))
        tab.goto("/dashboard/")
        expect(tab.get_by_role("heading", name="Overview")).to_be_visible()
        expect(tab.get_by_role("status").filter(has_text="Live")).to_be_visible()
        return tab

    return open_as


def sign_in(page, username: str) -> None:
    """Open the console and sign in through the form."""
    from playwright.sync_api import expect

    page.goto("/dashboard/")
    page.get_by_label("Username or email").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.get_by_role("status").filter(has_text="Live")).to_be_visible()


def nav(page, name: str):
    return page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True)


def current_status(page):
    return page.get_by_role("status", name="Current status")


def task_id_of(page) -> int:
    found = re.search(r"#/tasks/(\d+)$", page.url)
    assert found, page.url
    return int(found.group(1))


def test_sign_in_then_create_a_task_and_watch_it_finish_without_a_reload(console, page):
    from playwright.sync_api import expect

    page.goto("/")  # the root redirects to the console
    assert page.url.endswith("/dashboard/")
    expect(page.get_by_label("Username or email")).to_be_focused()
    # Keyboard only: the username field has the focus, Tab moves on, Enter submits.
    page.keyboard.type("ann")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    # The session is in HttpOnly cookies: nothing in storage, nothing script-readable.
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["access_token_cookie"]["httpOnly"] is True
    assert cookies["access_token_cookie"]["sameSite"] == "Strict"
    assert "access_token_cookie" not in page.evaluate("document.cookie")
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0

    nav(page, "Create task").click()
    page.get_by_label("Title").fill("Add numbers")
    page.get_by_label("Task type").select_option("compute")
    page.get_by_label("Operation").select_option("sum")
    page.get_by_label("Numbers").fill("1, 2, x")
    page.get_by_role("button", name="Create task").click()
    # The API's field error is shown next to the field it names, and the field says so.
    numbers = page.get_by_label("Numbers")
    expect(numbers).to_have_attribute("aria-invalid", "true")
    expect(numbers).to_have_accessible_description(re.compile("item 3: Not a valid number"))
    numbers.fill("1, 2, 3")
    page.get_by_role("button", name="Create task").click()
    expect(current_status(page)).to_contain_text("Completed")
    expect(page.get_by_role("region", name="Result")).to_contain_text('"result": 6')

    # A task that takes a moment: the page shows each step as the worker commits it.
    page.evaluate("window.__sameDocument = true")
    nav(page, "Create task").click()
    page.get_by_label("Title").fill("Nap")
    page.get_by_label("Task type").select_option("sleep")
    page.get_by_label("Duration").fill("1.5")
    page.get_by_role("button", name="Create task").click()
    expect(current_status(page)).to_contain_text("Processing")
    expect(current_status(page)).to_contain_text("Completed")
    history = page.get_by_role("list", name="History")
    expect(history.get_by_role("listitem")).to_have_count(3)
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    assert console.status(task_id_of(page)) == "COMPLETED"


def test_a_task_created_to_wait_for_another_waits_then_runs(console, as_user):
    from playwright.sync_api import expect

    page = as_user("kim")
    nav(page, "Create task").click()
    page.get_by_label("Title").fill("Extract")
    page.get_by_label("Task type").select_option("sleep")
    page.get_by_label("Duration").fill("10")  # still running when the key is tried again
    page.get_by_role("button", name="Create task").click()
    expect(current_status(page)).to_contain_text("Processing")
    parent = task_id_of(page)

    nav(page, "Create task").click()
    page.get_by_label("Title").fill("Load")
    page.get_by_label("Task type").select_option("echo")
    page.get_by_text("More options").click()
    page.get_by_label("Waits for tasks").fill(f"#{parent}, 10000000")
    page.get_by_label("Unique key").fill("load-once")
    page.get_by_role("button", name="Create task").click()
    # Another user's or no task: the API's 404 names the field, and nothing was made.
    expect(page.get_by_label("Waits for tasks")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("alert")).to_contain_text("A parent task was not found.")
    page.get_by_label("Waits for tasks").fill(str(parent))
    page.get_by_role("button", name="Create task").click()
    expect(current_status(page)).to_contain_text("Waiting")
    child = task_id_of(page)
    assert child != parent
    expect(page.get_by_role("link", name=f"#{parent}")).to_be_visible()
    # The same unique key while that task is unfinished: the console opens the task holding it.
    nav(page, "Create task").click()
    page.get_by_label("Title").fill("Load again")
    page.get_by_label("Task type").select_option("echo")
    page.get_by_text("More options").click()
    page.get_by_label("Unique key").fill("load-once")
    page.get_by_role("button", name="Create task").click()
    expect(page).to_have_url(re.compile(rf"#/tasks/{child}$"))
    expect(current_status(page)).to_contain_text("Completed", timeout=30_000)  # live, no reload
    assert console.status(parent) == "COMPLETED"


def test_create_an_account_from_the_sign_in_page(console, page):
    from playwright.sync_api import expect

    page.goto("/dashboard/")
    page.get_by_role("link", name="Create an account").click()
    page.get_by_label("Username").fill("cleo")
    page.get_by_label("Email").fill("cleo@example.com")
    page.get_by_label(re.compile("^Password")).fill(PASSWORD)
    page.get_by_label("Repeat the password").fill("Another-Lamp-42")
    page.get_by_role("button", name="Create account").click()
    repeat = page.get_by_label("Repeat the password")
    expect(repeat).to_have_accessible_description(re.compile("The two passwords do not match"))
    repeat.fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.get_by_role("banner")).to_contain_text("Signed in as cleo")
    assert "tokens" not in page.evaluate("document.cookie")


def test_filter_search_order_and_page_through_tasks(console, as_user):
    from playwright.sync_api import expect

    # Queues no worker serves, so these stay as made.
    made = [
        console.create("ann", title="invoice march", queue="held-a", tags=["vip"]),
        console.create("ann", title="invoice april", queue="held-a", priority="critical"),
        console.create("ann", title="report q1", queue="held-b", task_type="noop"),
    ]
    cancelled = console.create("ann", title="invoice void", queue="held-b")
    console.act("ann", cancelled["id"], "cancel")
    page = as_user("ann")
    nav(page, "Tasks").click()
    results = page.get_by_role("table")
    title_links = results.get_by_role("link")

    defaults = {
        "Search": "",
        "Task type": "",
        "Queue": "",
        "Priority": "",
        "Tag": "",
        "Created from": "",
        "Created until": "",
        "Order by": "created_at",
        "Direction": "desc",
        "Per page": "20",
        "Cancelled": False,
    }

    shown = dict(defaults)

    def apply(**fields):
        """Set the given filters, the others back to their defaults, and apply."""
        wanted = {**defaults, **fields}
        for label, value in wanted.items():
            if shown[label] == value:
                continue  # the new form shows what the URL says: only changes are typed
            control = page.get_by_label(label, exact=True)
            if isinstance(value, bool):
                control.set_checked(value)
            elif label in {"Task type", "Priority", "Order by", "Direction", "Per page"}:
                control.select_option(value)
            else:
                control.fill(value)
        shown.update(wanted)
        page.get_by_role("button", name="Apply filters").click()

    apply(Search="invoice")
    expect(title_links).to_have_text(["invoice void", "invoice april", "invoice march"])
    apply(Cancelled=True)
    expect(title_links).to_have_text(["invoice void"])
    apply(**{"Task type": "noop"})
    expect(title_links).to_have_text(["report q1"])
    apply(Queue="held-a", Priority="critical")
    expect(title_links).to_have_text(["invoice april"])
    apply(Tag="vip")
    expect(title_links).to_have_text(["invoice march"])
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    apply(**{"Created from": tomorrow})
    expect(page.get_by_text("No tasks match these filters.")).to_be_visible()
    apply(Search="invoice", **{"Order by": "title", "Direction": "asc", "Per page": "10"})
    expect(title_links).to_have_text(["invoice april", "invoice march", "invoice void"])
    # Paging: the page size from the URL, and the pager's links.
    page.goto("/dashboard/#/tasks?search=invoice&ordering=title&page_size=2")
    expect(page.get_by_text("Page 1 of 2")).to_be_visible()
    expect(title_links).to_have_text(["invoice april", "invoice march"])
    page.get_by_role("link", name="Next page").click()
    expect(page.get_by_text("Page 2 of 2")).to_be_visible()
    expect(title_links).to_have_text(["invoice void"])
    assert {t["id"] for t in made} <= {row[0] for row in console.sql("SELECT id FROM tasks")}


def test_select_many_tasks_then_cancel_retry_and_delete_them(console, as_user):
    from playwright.sync_api import expect

    first = console.create("ann", title="bulk one", queue="held-bulk")
    second = console.create("ann", title="bulk two", queue="held-bulk")
    page = as_user("ann")
    page.goto("/dashboard/#/tasks?queue=held-bulk")
    rows = page.get_by_role("table").get_by_role("row")
    expect(rows).to_have_count(3)  # header + 2
    page.get_by_label("Select All tasks on this page").check()
    expect(page.get_by_text("2 selected")).to_be_visible()
    page.get_by_role("button", name="Cancel selected").click()
    cancelled = page.get_by_role("status").filter(has_text="2 tasks cancelled.")
    expect(cancelled.first).to_be_visible()
    expect(page.get_by_role("table").get_by_text("Cancelled")).to_have_count(2)
    assert {console.status(first["id"]), console.status(second["id"])} == {"CANCELLED"}
    page.get_by_label(f"Select task #{first['id']}").check()
    page.get_by_role("button", name="Retry selected").click()
    retried = page.get_by_role("status").filter(has_text="1 task queued for retry.")
    expect(retried.first).to_be_visible()
    assert console.status(first["id"]) == "PENDING"
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_label("Select All tasks on this page").check()
    page.get_by_role("button", name="Delete selected").click()
    expect(page.get_by_text("No tasks match these filters.")).to_be_visible()
    assert console.sql("SELECT id FROM tasks WHERE queue = 'held-bulk'") == []


def test_a_failed_task_appears_in_dead_letters_live_and_is_reprocessed(console, as_user):
    from playwright.sync_api import expect

    task = console.create("ann", title="doomed", queue="held-dead")
    page = as_user("ann")
    nav(page, "Dead letters").click()
    expect(page.get_by_role("heading", name="Dead letters")).to_be_visible()
    # An operator fails it in psql: the page hears the event and shows the new letter.
    console.sql("UPDATE tasks SET status = 'FAILED', error = 'boom' WHERE id = %s", (task["id"],))
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"#{task['id']}"))
    expect(row).to_contain_text("boom")
    row.get_by_role("button", name=re.compile("^Reprocess")).click()
    requeued = page.get_by_role("status").filter(has_text=f"Task {task['id']} requeued")
    expect(requeued.first).to_be_visible()
    assert console.status(task["id"]) == "PENDING"


def test_cancel_a_running_task_from_its_page(console, as_user):
    from playwright.sync_api import expect

    task = console.create("ann", title="long nap", task_type="sleep", payload={"duration": 60})
    page = as_user("ann")
    page.goto(f"/dashboard/#/tasks/{task['id']}")
    expect(current_status(page)).to_contain_text("Processing")
    page.get_by_role("button", name="Cancel task").click()
    expect(current_status(page)).to_contain_text("Cancelled")
    expect(page.get_by_role("list", name="History")).to_contain_text("from processing")
    assert console.status(task["id"]) == "CANCELLED"
    expect(page.get_by_role("button", name="Retry task")).to_be_enabled()


def test_a_running_tasks_progress_moves_its_bar_live(console, as_user):
    from playwright.sync_api import expect

    # 40 reports 0.25 s apart: the worker writes at most 4 a second, each a progress event.
    task = console.create("ann", title="crunch", task_type="reporter",
                          payload={"reports": 40, "pause": 0.25})  # fmt: skip
    page = as_user("ann")
    page.goto(f"/dashboard/#/tasks/{task['id']}")
    bar = page.get_by_role("progressbar", name="Progress")
    expect(bar).to_be_visible()
    first = float(bar.get_attribute("value"))
    assert first < 100
    # The bar moves without a reload: a later step, with the task's own message.
    expect(page.locator(".progress-line")).to_contain_text("step")
    page.wait_for_function(
        "v => Number(document.querySelector('.progress-line progress').value) > v", arg=first
    )
    expect(current_status(page)).to_contain_text("Completed", timeout=30_000)
    expect(bar).to_have_attribute("value", "100")
    assert console.sql("SELECT progress FROM tasks WHERE id = %s", (task["id"],))[0][0] == 100


def test_a_task_page_lists_its_webhook_deliveries_and_replays_one(console, as_user):
    from playwright.sync_api import expect

    receiver = Receiver([200])
    try:
        task = console.create("ann", title="hooked", callback_url=receiver.url)
        page = as_user("ann")
        page.goto(f"/dashboard/#/tasks/{task['id']}")
        expect(current_status(page)).to_contain_text("Completed")
        deliveries = page.get_by_role("region", name="Webhook deliveries")
        # The delivery is sent by the worker after the transition: it shows once it is there.
        delivered = (
            "SELECT count(*) FROM webhook_deliveries WHERE task_id = %s AND status = 'delivered'"
        )
        wait_for(lambda: console.sql(delivered, (task["id"],))[0][0] == 1, 30, "the webhook")
        deliveries.get_by_role("button", name="Refresh deliveries").click()
        rows = deliveries.get_by_role("row")
        expect(rows.filter(has_text="task.succeeded")).to_have_count(1)
        status_cell = page.get_by_role("cell", name="delivered", exact=True)
        expect(rows.filter(has=status_cell)).to_have_count(1)
        first = deliveries.get_by_role("button", name=re.compile(r"^Replay delivery #\d+$"))
        first.click()
        replayed = page.get_by_role("status").filter(has_text=re.compile("replayed as delivery"))
        expect(replayed.first).to_be_visible()
        expect(rows.filter(has_text="task.succeeded")).to_have_count(2)  # the copy is listed
        wait_for(lambda: len(receiver.requests) == 2, 30, "the replayed webhook")
        first_body, second_body = (json.loads(body) for _, body in receiver.requests)
        assert second_body["task"] == first_body["task"]  # the same snapshot, sent again
        assert second_body["event"] == "task.succeeded"
    finally:
        receiver.close()


def test_a_dropped_connection_resumes_without_missing_a_transition(console, as_user):
    """Both streams resume after the last event seen: the task page's and the user's
    (whose overview counts would drift if a transition were lost or seen twice)."""
    from playwright.sync_api import expect

    task = console.create("dot", title="offline", queue="held-offline")
    page = as_user("dot")
    overview = page.context.new_page()
    overview.goto("/dashboard/#/")
    live = overview.get_by_role("status").filter(has_text="Live")
    expect(live).to_be_visible()
    expect(overview.get_by_role("log", name="Recent activity")).to_contain_text("offline")

    def count(status: str) -> int:
        card = overview.get_by_role("link", name=re.compile(rf"^\d+ {status}$"))
        return int(card.inner_text().split()[0])

    def shows(status: str, number: int):
        return overview.get_by_role("link", name=f"{number} {status}")

    before = {status: count(status) for status in ("Pending", "Processing", "Retrying")}
    page.goto(f"/dashboard/#/tasks/{task['id']}")
    history = page.get_by_role("list", name="History")
    expect(history.get_by_role("listitem")).to_have_count(1)
    set_status = "UPDATE tasks SET status = %s WHERE id = %s"
    console.sql(set_status, ("PROCESSING", task["id"]))  # seen live: both pages have an id
    expect(history.get_by_role("listitem")).to_have_count(2)
    expect(shows("Processing", before["Processing"] + 1)).to_be_visible()
    # Cut the pages off, then end their streams: the API's LISTEN connection is
    # terminated, so the API closes every stream.
    page.context.set_offline(True)
    console.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'taskq-notifier' AND datname = current_database()"
    )
    expect(page.get_by_role("status").filter(has_text="Reconnecting")).to_be_visible()
    expect(overview.get_by_role("status").filter(has_text="Reconnecting")).to_be_visible()
    for status in ("RETRYING", "PROCESSING", "RETRYING"):  # while nobody listens
        console.sql(set_status, (status, task["id"]))
    page.context.set_offline(False)
    expect(history.get_by_role("listitem")).to_have_count(5)
    expect(current_status(page)).to_contain_text("Retrying")
    expect(live).to_be_visible()
    expect(shows("Retrying", before["Retrying"] + 1)).to_be_visible()
    assert (count("Pending"), count("Processing")) == (before["Pending"] - 1, before["Processing"])
    console.sql(set_status, ("CANCELLED", task["id"]))  # and live again afterwards
    expect(history.get_by_role("listitem")).to_have_count(6)
    expect(shows("Retrying", before["Retrying"])).to_be_visible()
    steps = history.get_by_role("listitem").all_inner_texts()
    assert [step.split()[0] for step in steps] == [
        "Pending",
        "Processing",
        "Retrying",
        "Processing",
        "Retrying",
        "Cancelled",
    ]


def test_a_transition_delivered_after_a_read_that_counted_it_is_not_counted_twice(
    console, as_user, sessions, pg_server_url
):
    """/events holds a transition back while an older transaction anywhere on the server is
    open; a stats read meanwhile already counts it. When it arrives, the counts must stay."""
    from playwright.sync_api import expect

    task = console.create("sam", title="seam", queue="held-seam")  # no worker serves the queue
    sessions("sam")  # signed in before the hold: other streams on the server wait for it too
    with psycopg.connect(pg_server_url) as blocker:  # another database of the server
        blocker.execute("SELECT pg_current_xact_id()")  # older than what follows
        console.sql("UPDATE tasks SET status = 'PROCESSING' WHERE id = %s", (task["id"],))
        overview = as_user("sam")  # its read counts the transition
        log = overview.get_by_role("log", name="Recent activity")
        expect(log).to_contain_text("seam")
        expect(overview.get_by_role("link", name="1 Processing")).to_be_visible()
        expect(overview.get_by_role("link", name="0 Pending")).to_be_visible()
        expect(log).not_to_contain_text("→")  # not delivered yet
        blocker.rollback()
    arrived = log.get_by_role("listitem").filter(has_text=re.compile(r"Pending\s*→\s*Processing"))
    expect(arrived).to_be_visible()  # the event is applied before its entry shows

    def counts() -> dict[str, str]:
        cards = overview.get_by_role("region", name="Your tasks by status").get_by_role("link")
        return {name: number for number, name in map(str.split, cards.all_inner_texts())}

    assert counts() == {"Total": "1", **dict.fromkeys(STATUS_CARDS, "0"), "Processing": "1"}
    console.sql("UPDATE tasks SET status = 'CANCELLED' WHERE id = %s", (task["id"],))
    expect(overview.get_by_role("link", name="1 Cancelled")).to_be_visible()  # live after it
    assert counts() == {"Total": "1", **dict.fromkeys(STATUS_CARDS, "0"), "Cancelled": "1"}


def test_the_tasks_list_skips_transitions_delivered_after_a_read_that_showed_them(
    console, as_user, sessions, pg_server_url
):
    """The list's rows were read after two held-back transitions: when the stream delivers
    them, a row must not go back to the older status, not even for a moment."""
    from playwright.sync_api import expect

    task = console.create("lee", title="seam row", queue="held-seam-list")
    marker = console.create("lee", title="seam marker", queue="held-seam-list")
    sessions("lee")
    page = as_user("lee")
    with psycopg.connect(pg_server_url) as blocker:
        blocker.execute("SELECT pg_current_xact_id()")  # older than what follows
        for status in ("PROCESSING", "CANCELLED"):
            console.sql("UPDATE tasks SET status = %s WHERE id = %s", (status, task["id"]))
        page.goto("/dashboard/#/tasks?queue=held-seam-list")
        row = page.locator(f"tr[data-task-id='{task['id']}']")
        expect(row).to_have_attribute("data-status", "CANCELLED")
        # Every status the row shows from now on, however briefly.
        row.evaluate("""(tr) => {
            window.seamStatuses = [];
            new MutationObserver(() => window.seamStatuses.push(tr.dataset.status))
                .observe(tr, {attributes: true, attributeFilter: ["data-status"]});
        }""")
        blocker.rollback()
    console.sql("UPDATE tasks SET status = 'CANCELLED' WHERE id = %s", (marker["id"],))
    # The marker's event comes after the held ones in the stream's order: they were handled.
    marker_row = page.locator(f"tr[data-task-id='{marker['id']}']")
    expect(marker_row).to_have_attribute("data-status", "CANCELLED")
    assert "PROCESSING" not in page.evaluate("window.seamStatuses")
    expect(row).to_have_attribute("data-status", "CANCELLED")


def test_a_stream_that_drops_before_its_first_event_reads_its_snapshot_again(console, as_user):
    """No event seen means no id to resume from: the overview reads its counts again."""
    from playwright.sync_api import expect

    task = console.create("ann", title="quiet", queue="held-quiet")
    overview = as_user("ann")
    expect(overview.get_by_role("log", name="Recent activity")).to_contain_text("quiet")
    cancelled = overview.get_by_role("link", name=re.compile(r"^\d+ Cancelled$"))
    before = int(cancelled.inner_text().split()[0])
    overview.context.set_offline(True)
    console.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'taskq-notifier' AND datname = current_database()"
    )
    expect(overview.get_by_role("status").filter(has_text="Reconnecting")).to_be_visible()
    console.sql("UPDATE tasks SET status = 'CANCELLED' WHERE id = %s", (task["id"],))
    overview.context.set_offline(False)
    expect(overview.get_by_role("link", name=f"{before + 1} Cancelled")).to_be_visible()


def test_an_admin_sees_every_users_tasks_queues_workers_and_stuck_tasks(console, as_user):
    from playwright.sync_api import expect

    page = as_user("root")
    nav(page, "Workers").click()
    workers = page.get_by_role("table")
    expect(workers.get_by_role("row")).not_to_have_count(1)  # at least one worker row
    # A task starts: the workers view shows it under its worker, live.
    task = console.create("ann", title="admin watch", task_type="sleep", payload={"duration": 30})
    expect(workers.get_by_role("link", name=f"#{task['id']} admin watch")).to_be_visible()
    nav(page, "Queues").click()
    queues = page.get_by_role("table")
    default = queues.get_by_role("row").filter(has=page.get_by_role("rowheader", name="default"))
    expect(default).to_be_visible()
    expect(default.get_by_role("cell").nth(2)).to_have_text("1")  # running: the sleep task
    expect(page.get_by_role("img", name=re.compile("Tasks finished per second"))).to_be_visible()
    nav(page, "All tasks").click()
    expect(page.get_by_role("heading", name="All tasks")).to_be_visible()
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name="admin watch"))
    expect(row).to_contain_text("ann")
    nav(page, "Stuck tasks").click()
    expect(page.get_by_role("heading", name="Stuck tasks")).to_be_visible()
    expect(page.get_by_role("table")).to_be_visible()
    # Any user's task opens for an admin, follows it live, and takes the admin's actions.
    nav(page, "All tasks").click()
    page.get_by_role("link", name="admin watch").click()
    expect(page.get_by_role("heading", name=f"#{task['id']} admin watch")).to_be_visible()
    expect(page.get_by_role("definition").filter(has_text=re.compile("^ann$"))).to_be_visible()
    expect(current_status(page)).to_contain_text("Processing")
    console.act("ann", task["id"], "cancel")  # the owner cancels: the admin's page follows
    expect(current_status(page)).to_contain_text("Cancelled")
    page.get_by_role("button", name="Retry task").click()  # through the admin API
    expect(current_status(page)).to_contain_text(re.compile("Pending|Processing"))


def test_an_admin_pauses_and_resumes_a_queue_and_sees_its_limits_and_unserved_queues(
    console, as_user
):
    from playwright.sync_api import expect

    headers = {"Authorization": f"Bearer {console.token('root')}"}
    limits = {"concurrency": 4, "rate": "100/60s"}
    answer = requests.patch(f"{console.url}/api/v1/admin/queues/limited-shown", json=limits,
                            headers=headers, timeout=10)  # fmt: skip
    assert answer.status_code == 200, answer.text
    console.create("ann", title="nobody runs me", queue="nobody-serves")
    page = as_user("root")
    nav(page, "Queues").click()

    def row(name: str):
        return page.get_by_role("row").filter(has=page.get_by_role("rowheader", name=name))

    expect(row("limited-shown")).to_contain_text("at most 4 running, rate 100/60s")
    expect(row("nobody-serves")).to_contain_text("none serves it")
    expect(page.get_by_role("alert")).to_contain_text("nobody-serves")
    try:
        row("default").get_by_role("button", name="Pause default").click()
        expect(row("default")).to_contain_text("paused")
        expect(row("default").get_by_role("button", name="Resume default")).to_be_enabled()
        assert console.sql("SELECT paused FROM queues WHERE name = 'default'") == [(True,)]
        held = console.create("ann", title="held by the pause")
        # The worker claims again only after the resume; then the task runs.
        assert console.status(held["id"]) == "PENDING"
        row("default").get_by_role("button", name="Resume default").click()
        expect(row("default").get_by_role("button", name="Pause default")).to_be_enabled()
        wait_for(lambda: console.status(held["id"]) == "COMPLETED", 30, "the held task to run")
    finally:
        console.sql("UPDATE queues SET paused = false WHERE name = 'default'")
    assert console.sql("SELECT paused FROM queues WHERE name = 'default'") == [(False,)]


def test_a_user_sees_no_admin_view_and_never_another_users_task(console, as_user):
    from playwright.sync_api import expect

    secret = console.create("ann", title="ann's secret", queue="held-private")
    page = as_user("bob")
    assert nav(page, "Queues").count() == 0
    page.goto("/dashboard/#/admin/queues")
    expect(page.get_by_role("heading", name="Admins only")).to_be_visible()
    page.goto(f"/dashboard/#/tasks/{secret['id']}")
    expect(page.get_by_role("heading", name="Task not found")).to_be_visible()
    page.goto("/dashboard/#/")
    feed = page.get_by_role("log", name="Recent activity")
    expect(feed).to_contain_text("No tasks yet")
    # Ann's transitions never reach Bob's page; Bob's own do (and come after them).
    console.sql("UPDATE tasks SET status = 'CANCELLED' WHERE id = %s", (secret["id"],))
    own = console.create("bob", title="bob's own", queue="held-private")
    expect(feed.get_by_role("link", name=f"#{own['id']}")).to_be_visible()
    expect(feed.get_by_role("link", name=f"#{secret['id']}")).to_have_count(0)
    nav(page, "Tasks").click()
    expect(page.get_by_role("table").get_by_role("link")).to_have_text(["bob's own"])


def test_sign_out_ends_the_session_and_its_cookies_are_refused(console, page):
    from playwright.sync_api import expect

    sign_in(page, "ann")
    nav(page, "Tasks").click()
    kept = {c["name"]: c["value"] for c in page.context.cookies()}
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in to taskq")).to_be_visible()
    page.reload()
    expect(page.get_by_role("heading", name="Sign in to taskq")).to_be_visible()
    page.go_back()
    expect(page.get_by_role("heading", name="Sign in to taskq")).to_be_visible()
    # A copy of the old cookies is worthless: both tokens are on the blocklist.
    profile = requests.get(
        f"{console.url}/api/v1/auth/profile",
        cookies={"access_token_cookie": kept["access_token_cookie"]},
        timeout=10,
    )
    assert profile.status_code == 401 and profile.json()["error"] == "Token has been revoked."
    refresh = requests.post(
        f"{console.url}/api/v1/auth/token/refresh",
        cookies={"refresh_token_cookie": kept["refresh_token_cookie"]},
        headers={"X-CSRF-TOKEN": kept["csrf_refresh_token"]},
        timeout=10,
    )
    assert refresh.status_code == 401 and refresh.json()["error"] == "Token has been revoked."


def expired_access_token(make_app, console: Console, username: str) -> str:
    """An access token of ``username`` that expired a minute ago (signed with the API's key)."""
    from flask_jwt_extended import create_access_token

    from app.auth import password_version

    with psycopg.connect(console.database_url) as conn:
        user_id, changed_at = conn.execute(
            "SELECT id, password_changed_at FROM users WHERE username = %s", (username,)
        ).fetchone()
    app = make_app(DATABASE_URL=console.database_url, JWT_SECRET_KEY=SECRET)
    with app.app_context():
        return create_access_token(
            str(user_id),
            additional_claims={"pv": password_version(changed_at)},
            expires_delta=timedelta(minutes=-1),
        )


def test_an_expired_access_cookie_is_refreshed_on_the_fly(make_app, console, page):
    from playwright.sync_api import expect

    sign_in(page, "ann")
    before = {c["name"]: c for c in page.context.cookies()}
    expired = expired_access_token(make_app, console, "ann")
    refused = requests.get(
        f"{console.url}/api/v1/auth/profile", cookies={"access_token_cookie": expired}, timeout=10
    )
    assert refused.status_code == 401 and refused.json()["error"] == "Token has expired."
    page.context.add_cookies([dict(before["access_token_cookie"], value=expired)])
    # The next read meets the 401, trades the refresh cookie for new ones and carries on.
    nav(page, "Tasks").click()
    expect(page.get_by_role("heading", name="Tasks")).to_be_visible()
    expect(page.get_by_role("status").filter(has_text=re.compile(r"^\d+ tasks?"))).to_be_visible()
    after = {c["name"]: c["value"] for c in page.context.cookies()}
    assert after["access_token_cookie"] not in {expired, before["access_token_cookie"]["value"]}
    assert after["refresh_token_cookie"] != before["refresh_token_cookie"]["value"]  # rotated


def test_the_console_works_at_phone_width(console, as_user):
    from playwright.sync_api import expect

    page = as_user("ann")
    page.set_viewport_size(PHONE)
    menu = page.get_by_role("button", name="Menu")
    expect(menu).to_be_visible()
    expect(nav(page, "Tasks")).to_be_hidden()
    menu.click()
    expect(menu).to_have_attribute("aria-expanded", "true")
    nav(page, "Tasks").click()
    expect(page.get_by_role("heading", name="Tasks")).to_be_visible()
    expect(page.get_by_role("table")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.locator("summary", has_text="Filters").click()  # folded away on a phone
    expect(page.get_by_label("Search")).to_be_visible()
