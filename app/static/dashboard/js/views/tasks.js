// The tasks list (the caller's, or every user's for an admin): every filter of
// GET /tasks, search, ordering and paging in the URL; one REST read per
// change of filters, then events. An event of a row on screen updates it in
// place, unless the read's snapshot shows the row already holds it (the stream
// can deliver a transition after a read that saw it); an event of a task not
// on screen may change what the page shows, so the page is read again (at most
// every two seconds). Events that arrive while a read is in flight wait for it.

import {api, get} from "../api.js";
import {add, CANCELLABLE, RETRYABLE, STATUSES, announce, errorBox, field, h, replace, statusBadge,
  throttle, timeEl, titleCase, uid,} from "../dom.js";
import {href, navigate} from "../router.js";
import {countedIn, parseSnapshot} from "../snapshot.js";

const FILTERS = [
  "search", "status", "task_type", "queue", "priority", "tag", "start_date", "end_date",
  "ordering", "page", "page_size",
];
const ADMIN_FILTERS = ["username"];
const ORDER_FIELDS = [
  ["created_at", "Created"], ["updated_at", "Updated"], ["priority", "Priority"],
  ["status", "Status"], ["title", "Title"], ["task_type", "Type"], ["queue", "Queue"],
  ["attempts", "Attempts"], ["scheduled_at", "Scheduled"], ["started_at", "Started"],
  ["completed_at", "Completed"], ["id", "ID"],
];
const PAGE_SIZES = ["10", "20", "50", "100"];
const RELOAD_MS = 2000;

let taskTypes = null;
/** The registered task types, read once per page load. */
export function loadTaskTypes() {
  if (!taskTypes) {
    taskTypes = get("task-types").then((data) => data.task_types).catch((error) => {
      taskTypes = null;
      throw error;
    });
  }
  return taskTypes;
}

function select(options, value) {
  const el = h("select", {}, options.map(([v, label]) => h("option", {value: v}, label)));
  el.value = value ?? "";
  return el;
}

function filterForm(params, admin, basePath) {
  const controls = {};
  const fields = [];
  const add = (name, label, control, options) => {
    control.name = name;
    controls[name] = control;
    fields.push(field(label, control, options));
  };
  add("search", "Search", h("input", {type: "search", value: params.get("search") || ""}),
    {hint: "Words in the title or description"});
  if (admin) add("username", "Owner", h("input", {type: "text", value: params.get("username") || ""}), {hint: "Username"});
  const typeSelect = select([["", "Any type"]], params.get("task_type"));
  add("task_type", "Task type", typeSelect);
  add("queue", "Queue", h("input", {type: "text", value: params.get("queue") || ""}));
  add("priority", "Priority", select(
    [["", "Any priority"], ["low", "Low (1)"], ["normal", "Normal (5)"], ["high", "High (10)"], ["critical", "Critical (20)"]],
    params.get("priority")));
  add("tag", "Tag", h("input", {type: "text", value: params.get("tag") || ""}));
  add("start_date", "Created from", h("input", {type: "date", value: params.get("start_date") || ""}));
  add("end_date", "Created until", h("input", {type: "date", value: params.get("end_date") || ""}));
  const ordering = params.get("ordering") || "-created_at";
  add("order_field", "Order by", select(ORDER_FIELDS, ordering.replace(/^-/, "").split(",")[0]));
  add("order_direction", "Direction", select([["desc", "Descending"], ["asc", "Ascending"]],
    ordering.startsWith("-") ? "desc" : "asc"));
  add("page_size", "Per page", select(PAGE_SIZES.map((n) => [n, n]), params.get("page_size") || "20"));

  const chosen = new Set((params.get("status") || "").split(",").filter(Boolean).map((s) => s.toUpperCase()));
  const statusBoxes = STATUSES.map((status) => {
    const id = uid("status");
    return h("span", {class: "check-inline"},
      h("input", {type: "checkbox", id, name: "status", value: status, checked: chosen.has(status)}),
      h("label", {for: id}, titleCase(status)));
  });

  loadTaskTypes().then((types) => {
    for (const type of types) typeSelect.append(h("option", {value: type.name}, type.name));
    typeSelect.value = params.get("task_type") || "";
  }).catch(() => {});

  const form = h("form", {class: "filters", role: "search", "aria-label": "Filter tasks"},
    h("fieldset", {class: "statuses"}, h("legend", {}, "Status"), statusBoxes),
    h("div", {class: "filter-grid"}, fields),
    h("div", {class: "actions"},
      h("button", {type: "submit", class: "primary"}, "Apply filters"),
      h("a", {href: `#${basePath}`, class: "button"}, "Clear filters")));
  const active = [...params.keys()].filter((key) => !["page", "page_size", "ordering"].includes(key)).length;
  const narrow = window.matchMedia("(max-width: 760px)").matches;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = {};
    for (const name of ["search", "username", "task_type", "queue", "priority", "tag", "start_date", "end_date", "page_size"]) {
      if (controls[name] && controls[name].value.trim()) next[name] = controls[name].value.trim();
    }
    const statuses = [...form.querySelectorAll("input[name=status]:checked")].map((box) => box.value);
    if (statuses.length) next.status = statuses.join(",");
    const direction = controls.order_direction.value === "desc" ? "-" : "";
    const order = `${direction}${controls.order_field.value}`;
    if (order !== "-created_at") next.ordering = order;
    navigate(basePath, next);
  });
  return h("details", {class: "filters-box", open: !narrow || active > 0},
    h("summary", {}, active ? `Filters (${active} active)` : "Filters"), form);
}

function queryOf(params, admin) {
  const query = {};
  for (const name of [...FILTERS, ...(admin ? ADMIN_FILTERS : [])]) {
    if (params.get(name)) query[name] = params.get(name);
  }
  return query;
}

async function runBulk(action, ids) {
  const verbs = {cancel: "cancelled", retry: "queued for retry", delete: "deleted"};
  const results = await Promise.allSettled(ids.map((id) => (
    action === "delete" ? api("DELETE", `tasks/${id}`) : api("POST", `tasks/${id}/${action}`))));
  const failed = results
    .map((result, index) => [result, ids[index]])
    .filter(([result]) => result.status === "rejected")
    .map(([result, id]) => `#${id}: ${result.reason.message}`);
  const done = ids.length - failed.length;
  const message = `${done} ${done === 1 ? "task" : "tasks"} ${verbs[action]}.` +
    (failed.length ? ` Not done: ${failed.join(" ")}` : "");
  return {message, failed: failed.length};
}

function renderList(main, ctx, {admin}) {
  const basePath = admin ? "/admin/tasks" : "/tasks";
  const endpoint = admin ? "admin/tasks" : "tasks";
  const hub = admin ? ctx.adminEvents : ctx.events;
  const query = queryOf(ctx.params, admin);
  const statusFilter = new Set((query.status || "").split(",").filter(Boolean).map((s) => s.toUpperCase()));
  const rows = new Map();  // task id -> {task, tr}
  const selected = new Set();

  const summary = h("p", {class: "summary", role: "status", "aria-live": "polite"}, "Loading…");
  const tbody = h("tbody");
  const selectAllId = uid("select-all");
  const selectAll = h("input", {type: "checkbox", id: selectAllId});
  const selectedCount = h("span", {class: "selected-count"}, "0 selected");
  const bulkButtons = ["cancel", "retry", "delete"].map((action) => h("button", {
    type: "button", disabled: true, dataset: {action}, class: action === "delete" ? "danger" : "",
  }, `${titleCase(action)} selected`));
  const bulkResult = h("div", {class: "bulk-result", role: "status", "aria-live": "polite"});
  const pager = h("nav", {class: "pager", "aria-label": "Pages"});
  const columns = ["", "Title", ...(admin ? ["Owner"] : []), "Type", "Queue", "Priority", "Status", "Attempts", "Created", "Updated"];

  add(main,
    h("div", {class: "view-head"},
      h("h1", {tabindex: "-1"}, admin ? "All tasks" : "Tasks"),
      admin ? null : h("a", {href: "#/tasks/new", class: "button primary"}, "Create a task")),
    filterForm(ctx.params, admin, basePath),
    h("section", {"aria-label": "Results"},
      h("div", {class: "toolbar", role: "group", "aria-label": "Actions on selected tasks"},
        selectedCount, bulkButtons),
      bulkResult,
      summary,
      h("div", {class: "table-wrap"},
        h("table", {class: "tasks responsive"},
          h("caption", {class: "visually-hidden"}, admin ? "Every user's tasks" : "Your tasks"),
          h("thead", {}, h("tr", {},
            h("th", {scope: "col"}, selectAll,
              h("label", {for: selectAllId}, h("span", {class: "visually-hidden"}, "Select "), "All",
                h("span", {class: "visually-hidden"}, " tasks on this page"))),
            columns.slice(1).map((name) => h("th", {scope: "col"}, name)))),
          tbody)),
      pager),
  );

  function updateSelection() {
    for (const id of [...selected]) if (!rows.has(id)) selected.delete(id);
    selectedCount.textContent = `${selected.size} selected`;
    for (const button of bulkButtons) button.disabled = selected.size === 0;
    selectAll.checked = rows.size > 0 && selected.size === rows.size;
    selectAll.indeterminate = selected.size > 0 && selected.size < rows.size;
  }

  function newRow(task) {
    const id = `select-${task.id}`;
    const box = h("input", {type: "checkbox", id});
    box.addEventListener("change", () => {
      if (box.checked) selected.add(task.id);
      else selected.delete(task.id);
      updateSelection();
    });
    const live = {
      title: h("a", {href: admin ? `#/admin/tasks/${task.id}` : `#/tasks/${task.id}`}),
      status: h("td", {dataset: {label: "Status"}, class: "status-cell"}),
      attempts: h("td", {dataset: {label: "Attempts"}}),
      priority: h("td", {dataset: {label: "Priority"}}),
      updated: h("td", {dataset: {label: "Updated"}}),
    };
    const tr = h("tr", {dataset: {taskId: String(task.id)}},
      h("td", {class: "select"}, box,
        h("label", {for: id}, h("span", {class: "visually-hidden"}, "Select task "), `#${task.id}`)),
      h("td", {dataset: {label: "Title"}}, live.title),
      admin ? h("td", {dataset: {label: "Owner"}}, task.user ? task.user.username : "–") : null,
      h("td", {dataset: {label: "Type"}}, task.task_type),
      h("td", {dataset: {label: "Queue"}}, task.queue),
      live.priority,
      live.status,
      live.attempts,
      h("td", {dataset: {label: "Created"}}, timeEl(task.created_at)),
      live.updated);
    return {tr, box, live, task};
  }

  // A row keeps its elements across updates, so focus and selection stay where they are.
  function drawRow(task) {
    const row = rows.get(task.id) || newRow(task);
    row.task = task;
    row.live.title.textContent = task.title;
    row.live.priority.textContent = String(task.priority);
    replace(row.live.status, statusBadge(task.status));
    row.live.attempts.textContent = `${task.attempts} / ${task.max_retries + 1}`;
    replace(row.live.updated, timeEl(task.updated_at));
    row.box.checked = selected.has(task.id);
    row.tr.dataset.status = task.status;
    rows.set(task.id, row);
    return row.tr;
  }

  // count_exact false: the count stopped at the server's limit, so the last page is
  // unknown and "next" follows the server's next link instead.
  function drawPager(page, data, size) {
    const exact = data.count_exact !== false;
    const last = exact ? Math.max(1, Math.ceil(data.count / size)) : (data.next ? page + 1 : page);
    const link = (label, target, rel) => (target >= 1 && target <= last && target !== page
      ? h("a", {href: href(basePath, {...query, page: String(target)}), rel}, label)
      : h("span", {class: "disabled", "aria-disabled": "true"}, label));
    replace(pager, link("Previous page", page - 1, "prev"),
      h("span", {}, exact ? `Page ${page} of ${last}` : `Page ${page}`),
      link("Next page", page + 1, "next"));
  }

  let snapshot = null;  // of the rows on screen
  let held = null;  // while a read is in flight: the events that arrived meanwhile
  let reads = 0;
  async function load() {
    const mine = ++reads;
    held = held || [];
    try {
      const data = await get(endpoint, query);
      if (mine === reads) draw(data);  // else a later read is in flight: its answer is drawn
    } finally {
      if (mine === reads) {  // after a failed read, the held events meet the rows they left
        const arrived = held;
        held = null;
        for (const event of arrived) onEvent(...event);
      }
    }
  }

  function draw(data) {
    snapshot = parseSnapshot(data.snapshot);
    const page = Number(query.page || 1);
    const size = Number(query.page_size || 20);
    const focused = document.activeElement;
    const keep = new Set(data.results.map((task) => task.id));
    for (const id of [...rows.keys()]) if (!keep.has(id)) rows.delete(id);
    replace(tbody, data.results.map(drawRow));
    if (focused && focused.isConnected && document.activeElement !== focused) focused.focus({preventScroll: true});
    if (!data.results.length) {
      tbody.append(h("tr", {}, h("td", {colspan: String(columns.length), class: "empty"}, "No tasks match these filters.")));
    }
    summary.textContent = `${data.count_exact === false ? "at least " : ""}${data.count} ${data.count === 1 ? "task" : "tasks"}` +
      (data.results.length ? `, showing ${(page - 1) * size + 1}–${(page - 1) * size + data.results.length}` : "");
    drawPager(page, data, size);
    updateSelection();
  }
  const reloadSoon = throttle(() => {
    load().catch((error) => replace(bulkResult, errorBox(error)));
  }, RELOAD_MS);

  selectAll.addEventListener("change", () => {
    for (const id of rows.keys()) {
      if (selectAll.checked) selected.add(id);
      else selected.delete(id);
    }
    for (const row of rows.values()) row.box.checked = selectAll.checked;
    updateSelection();
  });

  for (const button of bulkButtons) {
    button.addEventListener("click", async () => {
      const action = button.dataset.action;
      const ids = [...selected].filter((id) => {
        const {task} = rows.get(id);
        if (action === "cancel") return CANCELLABLE.has(task.status);
        if (action === "retry") return RETRYABLE.has(task.status);
        return true;
      });
      const skipped = selected.size - ids.length;
      if (action === "delete" && !window.confirm(`Delete ${ids.length} ${ids.length === 1 ? "task" : "tasks"}? This cannot be undone.`)) return;
      for (const b of bulkButtons) b.disabled = true;
      const {message} = await runBulk(action, ids);
      const note = skipped ? ` ${skipped} skipped (not in a state that allows it).` : "";
      replace(bulkResult, h("p", {}, message + note));
      announce(message + note);
      selected.clear();
      await load().catch((error) => replace(bulkResult, errorBox(error)));
    });
  }

  function onEvent(type, data, id) {
    if (held) {
      held.push([type, data, id]);
      return;
    }
    const row = rows.get(data.id);
    if (row && data.status !== "DELETED") {
      const shown = countedIn(snapshot, id, data);
      if (shown) return;  // the row was read after it
      if (shown === null) {  // the snapshot cannot tell: read the page again
        reloadSoon();
        return;
      }
      const task = {...row.task, status: data.status, attempts: data.attempt ?? row.task.attempts,
        updated_at: data.updated_at || data.at || row.task.updated_at};
      drawRow(task);
      row.tr.classList.remove("flash");
      void row.tr.offsetWidth;  // restart the highlight animation
      row.tr.classList.add("flash");
      if (statusFilter.size && !statusFilter.has(data.status)) reloadSoon();
      return;
    }
    reloadSoon();
  }

  const unsubscribe = hub.subscribe(onEvent, reloadSoon);
  return {
    ready: load().catch((error) => {
      summary.textContent = "";
      replace(bulkResult, errorBox(error));
    }),
    cleanup: () => {
      unsubscribe();
      reloadSoon.cancel();
    },
  };
}

export async function renderTasks(main, ctx) {
  const {ready, cleanup} = renderList(main, ctx, {admin: false});
  await ready;
  return cleanup;
}

export async function renderAdminTasks(main, ctx) {
  const {ready, cleanup} = renderList(main, ctx, {admin: true});
  await ready;
  return cleanup;
}
