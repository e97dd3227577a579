// DOM helpers and formatters. Data reaches the page only as text nodes and
// attribute values (never as HTML), so nothing a task carries can inject markup.

let nextId = 0;

/** A unique element id with a readable prefix. */
export function uid(prefix = "id") {
  nextId += 1;
  return `${prefix}-${nextId}`;
}

/**
 * h("button", {type: "button", onclick: fn, class: "x"}, "Label", child, ...)
 * Attributes: on* are event listeners, `class`, `dataset` (object), boolean
 * true sets an empty attribute, false/null/undefined leave it out.
 */
export function h(tag, attrs = {}, ...children) {
  const el = tag === "svg" || SVG_TAGS.has(tag)
    ? document.createElementNS("http://www.w3.org/2000/svg", tag)
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else if (name === "value" && "value" in el && !(el instanceof SVGElement)) {
      el.value = value;
    } else if (name === "checked" || name === "selected") {
      el[name] = Boolean(value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

const SVG_TAGS = new Set(["g", "path", "line", "rect", "text", "title", "desc", "polyline", "circle"]);

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Append children to ``el`` (null, undefined and false are left out). */
export function add(el, ...children) {
  append(el, children);
  return el;
}

/** Replace the children of ``el``. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Say ``message`` to assistive technology (and show it in the live region). */
export function announce(message) {
  const region = document.getElementById("announcer");
  if (!region) return;
  region.textContent = "";
  // A new text node after a tick makes screen readers repeat an identical message.
  setTimeout(() => { region.textContent = message; }, 30);
}

export const STATUSES = ["WAITING", "PENDING", "PROCESSING", "RETRYING", "COMPLETED", "FAILED", "CANCELLED"];
export const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED", "DELETED"]);
export const CANCELLABLE = new Set(["WAITING", "PENDING", "RETRYING", "PROCESSING"]);
export const RETRYABLE = new Set(["FAILED", "CANCELLED"]);

/** A status as a badge: the word is always there, the colour only repeats it. */
export function statusBadge(status) {
  const name = String(status || "").toUpperCase();
  return h("span", {class: `badge status-${name.toLowerCase()}`}, titleCase(name));
}

export function titleCase(word) {
  const text = String(word || "").toLowerCase();
  return text.charAt(0).toUpperCase() + text.slice(1);
}

const TIME = new Intl.DateTimeFormat(undefined, {dateStyle: "medium", timeStyle: "medium"});

/** An ISO timestamp in the reader's locale, or a dash. */
export function formatTime(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : TIME.format(date);
}

/** A <time> element of an ISO timestamp. */
export function timeEl(iso) {
  return iso ? h("time", {datetime: iso}, formatTime(iso)) : "–";
}

/** Seconds as "4.2 s", "3 min 5 s", "2 h 10 min". */
export function formatSeconds(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
  const s = Math.max(0, Number(seconds));
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.round((s % 86400) / 3600)} h`;
}

/** Pretty JSON in a <pre>. */
export function jsonBlock(value, label) {
  return h("pre", {class: "json", tabindex: "0", "aria-label": label},
    value === undefined ? "–" : JSON.stringify(value, null, 2));
}

/** A function that runs ``fn`` at most once per ``ms``, the last call included. */
export function throttle(fn, ms) {
  let timer = null;
  let last = 0;
  let pending = false;
  const run = () => {
    timer = null;
    pending = false;
    last = performance.now();
    fn();
  };
  const throttled = () => {
    if (pending) return;
    pending = true;
    const wait = Math.max(0, last + ms - performance.now());
    timer = setTimeout(run, wait);
  };
  throttled.cancel = () => { if (timer) clearTimeout(timer); timer = null; pending = false; };
  return throttled;
}

/** A labelled form field: <div class=field><label>…</label>control<p hint/><p error/></div>. */
export function field(label, control, {hint, required} = {}) {
  const id = control.id || uid("f");
  control.id = id;
  const errorEl = h("p", {class: "field-error", id: `${id}-error`, hidden: true});
  const describedBy = [`${id}-error`];
  let hintEl = null;
  if (hint) {
    hintEl = h("p", {class: "hint", id: `${id}-hint`}, hint);
    describedBy.unshift(`${id}-hint`);
  }
  control.setAttribute("aria-describedby", describedBy.join(" "));
  const isCheck = control.type === "checkbox";
  const labelEl = h("label", {for: id}, label, required ? h("span", {class: "required", "aria-hidden": "true"}, " *") : null);
  if (required) control.setAttribute("aria-required", "true");
  const wrapper = h("div", {class: isCheck ? "field check" : "field"},
    isCheck ? [control, labelEl] : [labelEl, control], hintEl, errorEl);
  wrapper.control = control;
  wrapper.showError = (messages) => {
    const text = (messages || []).join(" ");
    errorEl.textContent = text;
    errorEl.hidden = !text;
    if (text) control.setAttribute("aria-invalid", "true");
    else control.removeAttribute("aria-invalid");
  };
  return wrapper;
}

/** An error box for a failed request (role=alert so it is read at once). */
export function errorBox(error) {
  const message = error && error.message ? error.message : String(error);
  return h("div", {class: "alert error", role: "alert"}, message);
}

/**
 * Show the API's ``field_errors`` next to their fields. ``fields`` maps a
 * field name ("title", "payload.numbers") to what ``field()`` returned; an
 * error on "payload.numbers.1" goes to the closest named field; what matches
 * no field is returned (for the form's summary). Focuses the first field in error.
 */
export function showFieldErrors(fields, fieldErrors) {
  for (const wrapper of Object.values(fields)) wrapper.showError([]);
  const shown = new Map();
  const unmatched = [];
  for (const [key, value] of Object.entries(fieldErrors || {})) {
    const messages = [].concat(value);
    const parts = key.split(".");
    let n = parts.length;
    while (n > 0 && !fields[parts.slice(0, n).join(".")]) n -= 1;
    if (n === 0) {
      unmatched.push(`${key}: ${messages.join(" ")}`);
      continue;
    }
    const target = fields[parts.slice(0, n).join(".")];
    const rest = parts.slice(n).map((part) => (/^\d+$/.test(part) ? `item ${Number(part) + 1}` : part));
    const prefix = rest.length ? `${rest.join(" › ")}: ` : "";
    shown.set(target, [...(shown.get(target) || []), ...messages.map((m) => prefix + m)]);
  }
  for (const [target, messages] of shown) target.showError(messages);
  const first = [...shown.keys()][0];
  if (first) first.control.focus();
  return unmatched;
}
