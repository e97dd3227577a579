// Admin views: queues (with the throughput chart), live workers and stuck tasks.
//
// Each is read once, then again when the admin stream (/admin/events: every
// user's transitions) says something changed, at most once a second. Ages
// (oldest due task, silence of a worker, overdue lease) tick on the page's
// clock between reads; the chart counts the stream's completions and failures.

import {get, post} from "../api.js";
import {Throughput, throughputChart} from "../chart.js";
import {add, announce, errorBox, formatSeconds, h, replace, throttle, timeEl} from "../dom.js";

const RELOAD_MS = 1000;
const TICK_MS = 1000;

// Queue controls, one entry per button in a queue's row:
// {label, run: async (queue) => {...}, enabled: (queue) => bool}. After a run
// the view reads the queues again (a change of controls is no task event).
// Limits are set with PATCH /admin/queues/{name}, `taskq queue set` or psql.
const queuePath = (queue) => `admin/queues/${encodeURIComponent(queue.queue)}`;
export const QUEUE_ACTIONS = [
  {label: "Pause", enabled: (queue) => !queue.paused, run: (queue) => post(`${queuePath(queue)}/pause`)},
  {label: "Resume", enabled: (queue) => queue.paused, run: (queue) => post(`${queuePath(queue)}/resume`)},
];

function refreshButton(load) {
  return h("button", {type: "button", onclick: () => load()}, "Refresh now");
}

/**
 * The pattern of the three views: a REST read, re-read on admin events
 * (throttled), a local clock tick, and cleanup of all three.
 */
async function liveAdminView(main, ctx, {title, intro, read, draw, onEvent, onTick}) {
  const status = h("div", {role: "status", "aria-live": "polite"});
  const body = h("div");
  let data = null;
  let readAt = performance.now();
  const elapsed = () => (performance.now() - readAt) / 1000;
  async function load() {
    try {
      data = await read();
      readAt = performance.now();
      replace(status);
      draw(body, data, load);
    } catch (error) {
      replace(status, errorBox(error));
    }
  }
  add(main,
    h("div", {class: "view-head"}, h("h1", {tabindex: "-1"}, title), refreshButton(load)),
    intro ? h("p", {class: "hint"}, intro) : null,
    status, body);
  const reloadSoon = throttle(load, RELOAD_MS);
  const unsubscribe = ctx.adminEvents.subscribe((type, event) => {
    if (onEvent) onEvent(type, event);
    reloadSoon();
  }, reloadSoon);
  // Between reads only the ages move: their text changes, nothing is rebuilt (focus stays put).
  const timer = setInterval(() => {
    for (const el of body.querySelectorAll("[data-age]")) {
      el.textContent = `${formatSeconds(Number(el.dataset.age) + elapsed())}${el.dataset.suffix || ""}`;
    }
    if (onTick) onTick();
  }, TICK_MS);
  await load();
  return () => {
    unsubscribe();
    reloadSoon.cancel();
    clearInterval(timer);
  };
}

function table(caption, headers, rows, emptyText) {
  return h("div", {class: "table-wrap"}, h("table", {class: "responsive"},
    h("caption", {class: "visually-hidden"}, caption),
    h("thead", {}, h("tr", {}, headers.map((name) => h("th", {scope: "col"}, name)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", {colspan: String(headers.length), class: "empty"}, emptyText)))));
}

/** An age that keeps growing on the page's clock between reads. */
function age(seconds, suffix = "") {
  if (seconds === null || seconds === undefined) return "–";
  return h("span", {dataset: {age: String(seconds), suffix}}, `${formatSeconds(seconds)}${suffix}`);
}

function cell(label, ...content) {
  return h("td", {dataset: {label}}, ...content);
}

export function renderQueues(main, ctx) {
  const throughput = new Throughput();
  const chart = throughputChart("Tasks finished per second, all queues");
  const chartSection = h("section", {"aria-labelledby": "throughput-heading"},
    h("h2", {id: "throughput-heading"}, "Throughput"),
    h("p", {class: "hint"}, "Counted from the live event stream since this page opened."),
    chart.element);
  const tableSlot = h("div");
  const warningSlot = h("div");
  return liveAdminView(main, ctx, {
    title: "Queues",
    intro: "Waiting and due tasks, what runs now, the age of the oldest due task, what finished in the last minute, the live workers serving each queue, and its controls: pause and resume here; limits with taskq queue set or PATCH /api/v1/admin/queues/{name}.",
    read: () => get("admin/queues"),
    onEvent: (type, event) => throughput.add(event.status),
    onTick: () => chart.draw(throughput.series()),
    draw: (body, data, reload) => {
      if (!body.contains(tableSlot)) body.append(h("section", {"aria-labelledby": "queues-heading"}, h("h2", {id: "queues-heading"}, "Per queue"), warningSlot, tableSlot), chartSection);
      const unserved = data.queues.filter((queue) => queue.unserved).map((queue) => queue.queue);
      replace(warningSlot, unserved.length ? h("div", {class: "alert error", role: "alert"},
        `Tasks wait and no live worker serves: ${unserved.join(", ")}.`) : null);
      const act = async (action, queue) => {
        try {
          const answer = await action.run(queue);
          announce(answer && answer.message ? answer.message : `${action.label}: ${queue.queue}`);
        } catch (error) {
          replace(warningSlot, errorBox(error));
        }
        await reload();
      };
      const headers = ["Queue", "Waiting", "Due", "Running", "Oldest due", "Completed / min", "Failed / min", "Workers", "Controls"];
      if (QUEUE_ACTIONS.length) headers.push("Actions");
      replace(tableSlot, table("Queues", headers, data.queues.map((queue) => h("tr", {dataset: {queue: queue.queue}},
        h("th", {scope: "row", dataset: {label: "Queue"}}, queue.queue),
        cell("Waiting", String(queue.waiting)),
        cell("Due", String(queue.due)),
        cell("Running", String(queue.running)),
        cell("Oldest due", age(queue.oldest_due_age)),
        cell("Completed / min", String(queue.completed_last_minute)),
        cell("Failed / min", String(queue.failed_last_minute)),
        cell("Workers", queue.unserved ? h("span", {class: "badge status-failed"}, "none serves it") : String(queue.workers)),
        cell("Controls", ...controls(queue)),
        QUEUE_ACTIONS.length ? cell("Actions", QUEUE_ACTIONS.map((action) => h("button", {
          type: "button", disabled: action.enabled ? !action.enabled(queue) : false, onclick: () => act(action, queue),
        }, action.label, h("span", {class: "visually-hidden"}, ` ${queue.queue}`)))) : null)), "No queue has tasks."));
      chart.draw(throughput.series());
    },
  });
}

/** A queue's controls as short labels: paused, its concurrency and rate limits. */
function controls(queue) {
  const parts = [];
  if (queue.paused) parts.push(h("span", {class: "badge status-cancelled"}, "paused"));
  if (queue.concurrency !== null && queue.concurrency !== undefined) parts.push(h("span", {}, `at most ${queue.concurrency} running`));
  if (queue.rate) parts.push(h("span", {}, `rate ${queue.rate}`));
  if (!parts.length) return ["none"];
  return parts.flatMap((part, i) => (i ? [", ", part] : [part]));
}

export function renderWorkers(main, ctx) {
  return liveAdminView(main, ctx, {
    title: "Workers",
    intro: "Worker processes heard from in the last minute, and the tasks each one runs.",
    read: () => get("admin/workers"),
    draw: (body, data) => {
      replace(body, table("Live workers",
        ["Worker", "Host", "PID", "Queues", "Slots", "Running", "Started", "Last heard", "Running tasks"],
        data.workers.map((worker) => {
          return h("tr", {dataset: {worker: worker.id}},
            h("th", {scope: "row", dataset: {label: "Worker"}}, worker.id),
            cell("Host", worker.hostname),
            cell("PID", String(worker.pid)),
            cell("Queues", (worker.queues || []).join(", ")),
            cell("Slots", String(worker.concurrency)),
            cell("Running", String(worker.running)),
            cell("Started", timeEl(worker.started_at)),
            cell("Last heard", age(worker.silent_for, " ago")),
            cell("Running tasks", (worker.running_tasks || []).length
              ? h("ul", {class: "plain"}, worker.running_tasks.map((task) => h("li", {},
                h("a", {href: `#/admin/tasks/${task.id}`}, `#${task.id} ${task.title}`), ` (${task.task_type})`)))
              : "none"));
        }), "No worker has been heard from in the last minute."));
    },
  });
}

export function renderStuck(main, ctx) {
  return liveAdminView(main, ctx, {
    title: "Stuck tasks",
    intro: "Running tasks whose lease expired: their worker is gone. The reaper returns them to the queue.",
    read: () => get("admin/stuck-tasks"),
    draw: (body, data) => {
      replace(body, table("Stuck tasks",
        ["Task", "Queue", "Type", "Worker", "Attempts", "Started", "Lease expired", "Overdue"],
        data.stuck_tasks.map((task) => h("tr", {},
          h("th", {scope: "row", dataset: {label: "Task"}}, h("a", {href: `#/admin/tasks/${task.id}`}, `#${task.id}`)),
          cell("Queue", task.queue),
          cell("Type", task.task_type),
          cell("Worker", task.worker_id || "–"),
          cell("Attempts", String(task.attempts)),
          cell("Started", timeEl(task.started_at)),
          cell("Lease expired", timeEl(task.lease_expires_at)),
          cell("Overdue", age(task.overdue)))),
        "No stuck tasks."));
    },
  });
}
