// One task: its fields, payload, result or error, attempts, history as a
// timeline and webhook deliveries with replay; cancel, retry and delete.
//
// Read once: the history, then the task. Then the task's own stream
// (/tasks/{id}/events), resumed after the last history id read, appends each
// transition as it commits and updates the status at once. Fields events do
// not carry (worker, next run) are read again after an event, at most once a
// second. The server ends the stream when the task is finished; if it comes
// back (retried, from here or elsewhere) the stream is opened again.
//
// An admin opens any user's task at #/admin/tasks/{id}: the same page, read
// from /admin/tasks/{id}, with the admin API's cancel, retry and delete.
//
// A running task's ``progress`` events (no id: they are not history) move the
// progress bar; a stream that reopens starts with the task's current value.

import {api, get} from "../api.js";
import {add, CANCELLABLE, RETRYABLE, TERMINAL, announce, errorBox, formatSeconds, h, jsonBlock, replace,
  statusBadge, throttle, timeEl,} from "../dom.js";
import {navigate} from "../router.js";
import {LiveStream} from "../stream.js";

function notFound(main, id, admin) {
  document.title = "Task not found · taskq";
  replace(main, h("h1", {tabindex: "-1"}, "Task not found"),
    h("p", {}, `There is no task #${id} that you can see.`),
    h("p", {}, admin ? h("a", {href: "#/admin/tasks"}, "Back to all tasks") : h("a", {href: "#/tasks"}, "Back to your tasks")));
}

/** The task and its history: the caller's own, or (admin) any user's. */
async function readTask(id, admin) {
  if (admin) return get(`admin/tasks/${id}`);
  const {history} = await get(`tasks/${id}/history`);  // first: the stream resumes after it
  const {task} = await get(`tasks/${id}`);
  return {task, history};
}

function detailsList(task) {
  const rows = [
    ["Type", task.task_type],
    ["Queue", task.queue],
    ["Priority", String(task.priority)],
    ["Attempts", `${task.attempts} of ${task.max_retries + 1}`],
    ["Retry delay", formatSeconds(task.retry_delay)],
    ["Time limit", task.timeout ? formatSeconds(task.timeout) : "worker default"],
    ["Tags", task.tags && task.tags.length ? task.tags.join(", ") : "–"],
    ["Worker", task.worker_id || "–"],
    ["Created", timeEl(task.created_at)],
    ["Scheduled", timeEl(task.scheduled_at)],
    ["Next run", timeEl(task.next_retry_at || (task.status === "PENDING" ? task.run_at : null))],
    ["Started", timeEl(task.started_at)],
    ["Finished", timeEl(task.completed_at)],
    ["Updated", timeEl(task.updated_at)],
    ["Webhook URL", task.callback_url || "–"],
    ["Unique key", task.unique_key ? `${task.unique_key}${task.unique_for ? ` (for ${formatSeconds(task.unique_for)})` : " (while unfinished)"}` : "–"],
    ["Snoozed", String(task.snoozes || 0)],
    ["Depends on", task.depends_on && task.depends_on.length
      ? task.depends_on.map((parent, n) => [n ? ", " : "", h("a", {href: `#/tasks/${parent}`}, `#${parent}`)])
      : "–"],
  ];
  if (task.status === "WAITING") rows.splice(4, 0, ["Waiting for", `${task.pending_parents} parent task(s)`]);
  if (task.user) rows.splice(0, 0, ["Owner", task.user.username]);
  return h("dl", {class: "details"}, rows.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

function timelineEntry(entry) {
  return h("li", {class: `step status-${String(entry.to_status).toLowerCase()}`, dataset: {eventId: String(entry.id)}},
    h("div", {class: "step-head"},
      statusBadge(entry.to_status),
      entry.from_status ? h("span", {class: "from"}, ` from ${entry.from_status.toLowerCase()}`) : h("span", {class: "from"}, " created"),
      h("span", {class: "meta"}, ` · attempt ${entry.attempt ?? 0} · `, timeEl(entry.created_at)),
      entry.worker_id ? h("span", {class: "meta"}, ` · ${entry.worker_id}`) : null),
    entry.error ? h("pre", {class: "error-text"}, String(entry.error)) : null);
}

export function renderTask(main, ctx) {
  return renderTaskPage(main, ctx, false);
}

export function renderAdminTask(main, ctx) {
  return renderTaskPage(main, ctx, true);
}

async function renderTaskPage(main, ctx, admin) {
  const id = Number(ctx.args.id);
  if (!Number.isInteger(id) || id < 1) {
    notFound(main, ctx.args.id, admin);
    return null;
  }
  let history;
  let task;
  try {
    ({task, history} = await readTask(id, admin));
  } catch (error) {
    if (error.status === 404) {
      notFound(main, id, admin);
      return null;
    }
    throw error;
  }
  if (!ctx.isCurrent()) return null;
  document.title = `#${id} ${task.title} · taskq`;
  const seen = new Set(history.map((entry) => entry.id));
  let lastId = history.length ? history[history.length - 1].id : null;
  let deleted = false;

  const heading = h("h1", {tabindex: "-1"}, `#${id} `, task.title);
  const statusLine = h("p", {class: "status-line", role: "status", "aria-live": "polite", "aria-label": "Current status"});
  const progressLine = h("div", {class: "progress-line"});
  const actionResult = h("div", {class: "action-result", role: "status", "aria-live": "polite"});
  const cancelButton = h("button", {type: "button"}, "Cancel task");
  const retryButton = h("button", {type: "button"}, "Retry task");
  const deleteButton = h("button", {type: "button", class: "danger"}, "Delete task");
  const details = h("div");
  const payload = h("div");
  const outcome = h("div");
  const timeline = h("ol", {class: "timeline", "aria-label": "History"});
  const deliveries = h("div");
  const description = task.description ? h("p", {class: "description"}, task.description) : null;

  add(main,
    h("p", {class: "crumbs"},
      admin ? h("a", {href: "#/admin/tasks"}, "All tasks") : h("a", {href: "#/tasks"}, "Tasks"), " › ", `#${id}`),
    h("div", {class: "view-head"}, heading),
    statusLine,
    progressLine,
    admin && task.user ? h("p", {class: "hint"}, `Owner: ${task.user.username}. Your actions here act as an admin.`) : null,
    h("div", {class: "toolbar", role: "group", "aria-label": "Task actions"}, cancelButton, retryButton, deleteButton),
    actionResult,
    description,
    h("div", {class: "detail-grid"},
      h("section", {"aria-labelledby": "details-heading"}, h("h2", {id: "details-heading"}, "Details"), details),
      h("section", {"aria-labelledby": "history-heading"}, h("h2", {id: "history-heading"}, "History"), timeline)),
    h("section", {"aria-labelledby": "payload-heading"}, h("h2", {id: "payload-heading"}, "Payload"), payload),
    h("section", {"aria-labelledby": "outcome-heading"}, h("h2", {id: "outcome-heading"}, "Result"), outcome),
    h("section", {"aria-labelledby": "deliveries-heading"}, h("h2", {id: "deliveries-heading"}, "Webhook deliveries"), deliveries),
  );

  function draw() {
    replace(statusLine, "Status: ", statusBadge(deleted ? "DELETED" : task.status),
      task.status === "RETRYING" && task.next_retry_at ? [" · next attempt ", timeEl(task.next_retry_at)] : null);
    cancelButton.disabled = deleted || !CANCELLABLE.has(task.status);
    retryButton.disabled = deleted || !RETRYABLE.has(task.status);
    deleteButton.disabled = deleted || task.status === "PROCESSING";
    replace(details, detailsList(task));
    drawProgress();
    replace(payload, jsonBlock(task.payload, "Payload"));
    replace(outcome,
      task.status === "COMPLETED" ? jsonBlock(task.result, "Result") : null,
      task.error ? [h("h3", {}, "Error"), h("pre", {class: "error-text", tabindex: "0"}, String(task.error))] : null,
      task.status !== "COMPLETED" && !task.error ? h("p", {class: "hint"}, TERMINAL.has(task.status) ? "No result." : "Not finished yet.") : null);
  }

  function drawProgress() {
    if (task.progress == null) {
      replace(progressLine);
      return;
    }
    const percent = Math.round(task.progress);
    replace(progressLine,
      h("progress", {max: "100", value: String(task.progress), "aria-label": "Progress"}, `${percent}%`),
      h("span", {}, `${percent}%`),
      task.progress_message ? h("span", {class: "meta"}, ` · ${task.progress_message}`) : null);
  }

  function drawTimeline() {
    replace(timeline, history.map(timelineEntry));
  }

  async function loadDeliveries() {
    try {
      const data = await get(`tasks/${id}/webhook-deliveries`);
      const list = data.results;
      const refresh = h("button", {type: "button", onclick: () => loadDeliveries()}, "Refresh deliveries");
      const trigger = task.callback_url
        ? h("button", {type: "button", onclick: () => triggerWebhook()}, "Send a webhook now")
        : null;
      if (!list.length) {
        replace(deliveries, h("p", {class: "hint"}, task.callback_url ? "No deliveries yet." : "This task has no webhook URL."),
          h("div", {class: "toolbar"}, refresh, trigger));
        return;
      }
      replace(deliveries,
        h("div", {class: "toolbar"}, refresh, trigger),
        h("div", {class: "table-wrap"}, h("table", {class: "responsive"},
          h("caption", {class: "visually-hidden"}, "Webhook deliveries"),
          h("thead", {}, h("tr", {}, ["ID", "Event", "URL", "Status", "Attempts", "HTTP", "Duration", "Created", "Delivered", "Replay"].map((c) => h("th", {scope: "col"}, c)))),
          h("tbody", {}, list.map((d) => h("tr", {},
            h("td", {dataset: {label: "ID"}}, `#${d.id}`),
            h("td", {dataset: {label: "Event"}}, d.event),
            h("td", {dataset: {label: "URL"}, class: "url"}, d.url),
            h("td", {dataset: {label: "Status"}}, d.status),
            h("td", {dataset: {label: "Attempts"}}, `${d.attempt} / ${d.max_attempts}`),
            h("td", {dataset: {label: "HTTP"}}, d.status_code ?? "–"),
            h("td", {dataset: {label: "Duration"}}, d.duration_ms != null ? `${Math.round(d.duration_ms)} ms` : "–"),
            h("td", {dataset: {label: "Created"}}, timeEl(d.created_at)),
            h("td", {dataset: {label: "Delivered"}}, timeEl(d.delivered_at)),
            h("td", {dataset: {label: "Replay"}}, h("button", {type: "button", onclick: () => replay(d.id)},
              "Replay", h("span", {class: "visually-hidden"}, ` delivery #${d.id}`)))))))));
    } catch (error) {
      replace(deliveries, errorBox(error));
    }
  }

  async function replay(deliveryId) {
    try {
      const data = await api("POST", `tasks/${id}/webhook-deliveries/${deliveryId}/replay`);
      say(data.message || `Delivery #${deliveryId} replayed`);
    } catch (error) {
      replace(actionResult, errorBox(error));
    }
    loadDeliveries();
  }

  async function triggerWebhook() {
    try {
      const data = await api("POST", `tasks/${id}/trigger-webhook`);
      say(data.message || "Webhook enqueued");
    } catch (error) {
      replace(actionResult, errorBox(error));
    }
    loadDeliveries();
  }

  function say(message) {
    replace(actionResult, h("p", {}, message));
    announce(message);
  }

  const refetch = throttle(async () => {
    try {
      const fresh = (await get(admin ? `admin/tasks/${id}` : `tasks/${id}`)).task;
      task = fresh;
      draw();
    } catch (error) {
      if (error.status === 404) {
        deleted = true;
        draw();
      }
    }
  }, 1000);

  function onEvent(type, data) {
    if (data.id !== id) return;
    if (type === "progress") {  // not a transition: the bar moves, the history stays
      task = {...task, progress: data.progress, progress_message: data.message, progress_at: data.at};
      drawProgress();
      return;
    }
    if (type === "deleted" || data.status === "DELETED") {
      deleted = true;
      draw();
      say(`Task #${id} was deleted.`);
      return;
    }
    if (data.event_id != null) {
      if (seen.has(data.event_id)) return;
      seen.add(data.event_id);
      lastId = Math.max(lastId || 0, data.event_id);
      history.push({id: data.event_id, from_status: data.from_status, to_status: data.status,
        attempt: data.attempt, created_at: data.at, error: data.error || null, worker_id: null});
      history.sort((a, b) => a.id - b.id);
      drawTimeline();
    }
    task = {
      ...task,
      status: data.status,
      attempts: data.attempt ?? task.attempts,
      started_at: data.started_at ?? task.started_at,
      completed_at: data.completed_at ?? task.completed_at,
      updated_at: data.updated_at ?? task.updated_at,
      result: data.status === "COMPLETED" ? data.result : task.result,
      error: "error" in data ? data.error : (data.status === "PENDING" ? null : task.error),
    };
    draw();
    refetch();
    if (task.callback_url && TERMINAL.has(task.status)) loadDeliveries();
  }

  let stream = null;
  function follow() {
    if (deleted || (stream && !stream.stopped)) return;
    stream = new LiveStream(`tasks/${id}/events`, {
      lastId,
      onEvent,
      isDone: () => deleted || TERMINAL.has(task.status),
    });
    stream.start();
  }

  async function act(button, verb, call) {
    button.disabled = true;
    try {
      const data = await call();
      if (data && data.task) {
        task = {...task, ...data.task};
        draw();
      }
      say(data && data.message ? data.message : `Task #${id} ${verb}.`);
      return data;
    } catch (error) {
      replace(actionResult, errorBox(error));
      draw();
      return null;
    }
  }

  const base = admin ? `admin/tasks/${id}` : `tasks/${id}`;  // an admin acts through the admin API
  cancelButton.addEventListener("click", () => act(cancelButton, "cancelled", () => api("POST", `${base}/cancel`)));
  retryButton.addEventListener("click", async () => {
    if (await act(retryButton, "queued for retry", () => api("POST", `${base}/retry`))) follow();
  });
  deleteButton.addEventListener("click", async () => {
    if (!window.confirm(`Delete task #${id}? This cannot be undone.`)) return;
    if (await act(deleteButton, "deleted", () => api("DELETE", base))) {
      deleted = true;
      navigate(admin ? "/admin/tasks" : "/tasks");
    }
  });

  draw();
  drawTimeline();
  loadDeliveries();
  if (!TERMINAL.has(task.status)) follow();
  // The caller's own stream (an admin's: everyone's) notices when a finished task comes
  // back to life elsewhere.
  const unsubscribe = (admin ? ctx.adminEvents : ctx.events).subscribe((type, data) => {
    if (data.id !== id) return;
    if (stream && !stream.stopped) return;
    onEvent(type, data);
    follow();
  });
  return () => {
    unsubscribe();
    refetch.cancel();
    if (stream) stream.stop();
  };
}
