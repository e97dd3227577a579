// Overview: the caller's tasks by status and the latest transitions, live.
//
// One REST read of /tasks/stats, then each event moves one task from its
// from_status to its status. An event may arrive after a read that already
// counted it (the stream holds events back behind older open transactions;
// delivery takes time), so each event is checked against the snapshot the
// counts were read in and skipped when they hold it. Events that arrive
// while a read is in flight wait for its snapshot.

import {get} from "../api.js";
import {add, STATUSES, h, replace, statusBadge, throttle, timeEl, titleCase} from "../dom.js";
import {countedIn, parseSnapshot} from "../snapshot.js";

const FEED_LENGTH = 15;

export async function renderOverview(main, ctx) {
  const counts = new Map(STATUSES.map((status) => [status, 0]));
  let total = 0;
  const cards = h("ul", {class: "status-cards"});
  const feed = h("ol", {class: "activity", role: "log", "aria-label": "Recent activity"});
  const titles = new Map();
  const lookups = new Map();

  add(main,
    h("div", {class: "view-head"},
      h("h1", {tabindex: "-1"}, "Overview"),
      h("a", {href: "#/tasks/new", class: "button primary"}, "Create a task")),
    h("section", {"aria-labelledby": "counts-heading"},
      h("h2", {id: "counts-heading"}, "Your tasks by status"), cards),
    h("section", {"aria-labelledby": "activity-heading"},
      h("h2", {id: "activity-heading"}, "Recent activity"),
      h("p", {class: "hint"}, "Transitions appear here the moment they commit."),
      feed),
  );

  function drawCounts() {
    replace(cards,
      h("li", {class: "card total"},
        h("a", {href: "#/tasks"}, h("span", {class: "count", dataset: {status: "TOTAL"}}, String(total)), " Total")),
      STATUSES.map((status) => h("li", {class: `card status-${status.toLowerCase()}`},
        h("a", {href: `#/tasks?status=${status}`},
          h("span", {class: "count", dataset: {status}}, String(counts.get(status))),
          ` ${titleCase(status)}`))));
  }

  let snapshot = null;  // of the last read: what its counts hold
  let held = null;  // while a read is in flight: the events that arrived meanwhile, [[data, id]]
  let again = false;
  async function readCounts() {
    if (held) {  // one read at a time, so each held event meets the snapshot of the counts it joins
      again = true;
      return;
    }
    held = [];
    try {
      const stats = await get("tasks/stats");
      for (const status of STATUSES) counts.set(status, 0);
      for (const row of stats.stats) counts.set(row.status, row.count);
      total = stats.total;
      snapshot = parseSnapshot(stats.snapshot);
    } finally {  // after a failed read, the held events join the counts they left
      const arrived = held;
      held = null;
      for (const [data, id] of arrived) count(data, id);
      drawCounts();
      if (again) {
        again = false;
        readSoon();
      }
    }
  }
  const readSoon = throttle(() => { readCounts().catch(() => {}); }, 1000);

  // Move the counts by one transition, unless the last read already counted it.
  function count(data, id) {
    if (held) {
      held.push([data, id]);
      return;
    }
    const counted = countedIn(snapshot, id, data);
    if (counted) return;
    if (counted === null || data.status === "DELETED") {
      readSoon();  // the snapshot cannot tell, or the event does not say which status the task left
      return;
    }
    if (data.from_status && counts.has(data.from_status)) {
      counts.set(data.from_status, counts.get(data.from_status) - 1);
    } else if (!data.from_status) {
      total += 1;
    }
    counts.set(data.status, (counts.get(data.status) || 0) + 1);
    drawCounts();
  }

  function taskLink(id) {
    const link = h("a", {href: `#/tasks/${id}`}, `#${id}`, titles.has(id) ? ` ${titles.get(id)}` : "");
    if (!titles.has(id)) {
      if (!lookups.has(id)) lookups.set(id, get(`tasks/${id}`).then((d) => d.task.title).catch(() => null));
      lookups.get(id).then((title) => {
        if (title) {
          titles.set(id, title);
          link.append(` ${title}`);
        }
      });
    }
    return link;
  }

  function addEntry(entry, atTop = true) {
    const empty = feed.querySelector(".empty");
    if (empty) empty.remove();
    if (atTop) feed.prepend(entry);
    else feed.append(entry);
    while (feed.children.length > FEED_LENGTH) feed.lastElementChild.remove();
  }

  function applyEvent(type, data, id) {
    const status = data.status;
    count(data, id);
    addEntry(h("li", {class: "entry"},
      taskLink(data.id), " ",
      data.from_status ? [statusBadge(data.from_status), " → "] : "created ",
      statusBadge(status), " ",
      timeEl(data.at)));
  }

  const unsubscribe = ctx.events.subscribe(applyEvent, readSoon);
  drawCounts();
  try {
    const [, recent] = await Promise.all([
      readCounts(),
      get("tasks", {page_size: 10}),  // the newest: the order an index serves
    ]);
    for (const task of recent.results) titles.set(task.id, task.title);
    if (!feed.children.length && !recent.results.length) {
      feed.append(h("li", {class: "empty"}, "No tasks yet. ", h("a", {href: "#/tasks/new"}, "Create one"), "."));
    }
    for (const task of recent.results) {
      addEntry(h("li", {class: "entry"}, taskLink(task.id), " ", statusBadge(task.status), " ",
        timeEl(task.updated_at)), false);
    }
  } catch (error) {
    unsubscribe();
    throw error;
  }
  return () => {
    unsubscribe();
    readSoon.cancel();
  };
}
