// Create a task: the payload fields come from the chosen type's JSON schema;
// the API's field_errors are shown next to the fields they name.

import {api} from "../api.js";
import {add, errorBox, field, h, replace, showFieldErrors} from "../dom.js";
import {navigate} from "../router.js";
import {payloadForm} from "../schema_form.js";
import {loadTaskTypes} from "./tasks.js";

const PRIORITIES = [["low", "Low (1)"], ["normal", "Normal (5)"], ["high", "High (10)"], ["critical", "Critical (20)"]];

function input(name, attrs = {}) {
  return h("input", {name, ...attrs});
}

export async function renderCreate(main, ctx) {
  const types = await loadTaskTypes();
  if (!ctx.isCurrent()) return null;
  const summary = h("div", {class: "form-summary"});
  const typeSelect = h("select", {name: "task_type"}, types.map((type) => h("option", {value: type.name}, type.name)));
  const wanted = ctx.params.get("type");
  typeSelect.value = types.some((t) => t.name === wanted) ? wanted : (types.some((t) => t.name === "echo") ? "echo" : types[0].name);
  const priority = h("select", {name: "priority"}, PRIORITIES.map(([value, label]) => h("option", {value}, label)));
  priority.value = "normal";
  const mainFields = {
    title: field("Title", input("title", {type: "text", maxlength: "255"}), {required: true}),
    task_type: field("Task type", typeSelect, {required: true}),
  };
  const optionFields = {
    priority: field("Priority", priority),
    queue: field("Queue", input("queue", {type: "text", value: "default"})),
    tags: field("Tags", input("tags", {type: "text"}), {hint: "Separated by commas"}),
    scheduled_at: field("Run no earlier than", input("scheduled_at", {type: "datetime-local", step: "1"}), {hint: "Your local time; empty: now"}),
  };
  const moreFields = {
    description: field("Description", h("textarea", {name: "description", rows: "3"})),
    max_retries: field("Retries", input("max_retries", {type: "number", min: "0", max: "100", value: "3"}), {hint: "Attempts after the first"}),
    retry_delay: field("Retry delay (seconds)", input("retry_delay", {type: "number", min: "0", value: "60"}), {hint: "Doubles with each retry"}),
    timeout: field("Time limit (seconds)", input("timeout", {type: "number", min: "1"}), {hint: "Empty: the worker's default"}),
    callback_url: field("Webhook URL", input("callback_url", {type: "url"}), {hint: "Receives signed POSTs on success, failure and cancel"}),
    unique_key: field("Unique key", input("unique_key", {type: "text", maxlength: "255"}), {hint: "While a task of yours with this key is unfinished, creating another opens it instead"}),
    depends_on: field("Waits for tasks", input("depends_on", {type: "text"}), {hint: "Task ids, separated by commas: it runs once all of them have completed"}),
  };
  const payloadSlot = h("div");
  let payload = null;
  function choosePayload() {
    const type = types.find((t) => t.name === typeSelect.value);
    payload = payloadForm(type);
    replace(payloadSlot, payload.element);
  }
  typeSelect.addEventListener("change", choosePayload);
  choosePayload();

  const submit = h("button", {type: "submit", class: "primary"}, "Create task");
  const form = h("form", {class: "create-form", novalidate: true, "aria-labelledby": "create-heading"},
    Object.values(mainFields), payloadSlot,
    h("fieldset", {}, h("legend", {}, "Scheduling"), h("div", {class: "filter-grid"}, Object.values(optionFields))),
    h("details", {}, h("summary", {}, "More options"), h("div", {class: "filter-grid"}, Object.values(moreFields))),
    h("div", {class: "actions"}, submit, h("a", {href: "#/tasks", class: "button"}, "Cancel")));

  add(main, h("div", {class: "view-head"}, h("h1", {id: "create-heading", tabindex: "-1"}, "Create a task")), summary, form);

  function body() {
    const value = (name) => form.elements[name].value.trim();
    const data = {title: value("title"), task_type: typeSelect.value, priority: priority.value, queue: value("queue") || "default"};
    const tags = value("tags").split(",").map((t) => t.trim()).filter(Boolean);
    if (tags.length) data.tags = tags;
    if (value("scheduled_at")) {
      const when = new Date(value("scheduled_at"));
      data.scheduled_at = Number.isNaN(when.getTime()) ? value("scheduled_at") : when.toISOString();
    }
    if (value("description")) data.description = value("description");
    for (const name of ["max_retries", "retry_delay", "timeout"]) {
      if (value(name) !== "") data[name] = Number.isFinite(Number(value(name))) ? Number(value(name)) : value(name);
    }
    if (value("callback_url")) data.callback_url = value("callback_url");
    if (value("unique_key")) data.unique_key = value("unique_key");
    const parents = value("depends_on").split(",").map((t) => t.trim().replace(/^#/, "")).filter(Boolean);
    if (parents.length) data.depends_on = parents.map((t) => (/^\d+$/.test(t) ? Number(t) : t));
    data.payload = payload.read();
    return data;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = {...mainFields, ...optionFields, ...moreFields, ...payload.fields};
    replace(summary);
    let data;
    try {
      data = body();
    } catch (error) {
      showFieldErrors(fields, error.fieldErrors);
      replace(summary, errorBox({message: "Some fields need attention."}));
      return;
    }
    submit.disabled = true;
    try {
      const created = await api("POST", "tasks", {body: data});
      navigate(`/tasks/${created.task.id}`);
    } catch (error) {
      if (Object.keys(moreFields).some((name) => error.fieldErrors && error.fieldErrors[name])) {
        form.querySelector("details").open = true;
      }
      const rest = showFieldErrors(fields, error.fieldErrors);
      const summaryText = Object.keys(error.fieldErrors || {}).length
        ? `${error.message} See the fields marked below.${rest.length ? ` ${rest.join(" ")}` : ""}`
        : error.message;
      replace(summary, errorBox({message: summaryText}));
    } finally {
      submit.disabled = false;
    }
  });
  mainFields.title.control.focus();
  return null;
}
