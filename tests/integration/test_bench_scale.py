"""The scale bench's fill: the product's write paths, three history rows per finished task."""

from __future__ import annotations

from bench.scale import BACKLOG_QUEUE, SEARCH_WORD, Grown, fill_to, task_rows
from taskq.enqueue import insert_tasks
from tests.helpers import make_user


def test_fill_finishes_tasks_the_way_workers_do_with_three_history_rows_each(database_url, db):
    owner = make_user(db)
    insert_tasks(db, owner, task_rows(0, 7, BACKLOG_QUEUE))
    grown = Grown(database_url, owner)
    lines: list[str] = []
    fill = fill_to(grown, 120, 50, lines.append)
    assert fill["filled"] == 120 and grown.finished == 120
    fill_to(grown, 150, 50, lines.append)
    assert grown.finished == 150 and lines[-1].startswith("  fill 150: 150/150 finished")
    counts = db.execute(
        "SELECT queue, status::text, count(*) AS n FROM tasks WHERE user_id = %s"
        " GROUP BY 1, 2 ORDER BY 1, 2",
        (owner,),
    ).fetchall()
    assert [(c["queue"], c["status"], c["n"]) for c in counts] == [
        ("scale-backlog", "PENDING", 7),
        ("scale-fill", "COMPLETED", 150),
    ]
    per_task = db.execute(
        "SELECT array_agg(h.to_status::text ORDER BY h.id) AS path, count(*) AS tasks"
        "  FROM tasks t JOIN task_history h ON h.task_id = t.id"
        " WHERE t.queue = 'scale-fill' GROUP BY t.id"
    ).fetchall()
    assert {tuple(r["path"]) for r in per_task} == {("PENDING", "PROCESSING", "COMPLETED")}
    assert len(per_task) == 150
    found = db.execute(
        "SELECT count(*) AS n FROM tasks WHERE title LIKE %s AND queue = 'scale-fill'",
        (f"% {SEARCH_WORD}",),
    ).fetchone()
    assert found["n"] == 2  # tasks 0 and 100 of the fill: 1 in 100 matches the search
