// Dead letters: the caller's failed tasks, each with a Reprocess button.
// A task that fails adds a letter: the page is read again on FAILED events.

import {api, get} from "../api.js";
import {add, announce, errorBox, h, replace, statusBadge, throttle, timeEl} from "../dom.js";
import {href} from "../router.js";

export async function renderDeadLetters(main, ctx) {
  const page = Number(ctx.params.get("page") || 1);
  const summary = h("p", {class: "summary", role: "status", "aria-live": "polite"}, "Loading…");
  const result = h("div", {role: "status", "aria-live": "polite"});
  const tbody = h("tbody");
  const pager = h("nav", {class: "pager", "aria-label": "Pages"});
  add(main,
    h("div", {class: "view-head"}, h("h1", {tabindex: "-1"}, "Dead letters")),
    h("p", {class: "hint"}, "Tasks that failed after their last retry. Reprocess starts a new series of attempts."),
    result, summary,
    h("div", {class: "table-wrap"}, h("table", {class: "responsive"},
      h("caption", {class: "visually-hidden"}, "Dead letters"),
      h("thead", {}, h("tr", {}, ["Letter", "Task", "Type", "Queue", "Error", "Attempts", "Failed", "Task now", "Action"].map((c) => h("th", {scope: "col"}, c)))),
      tbody)),
    pager);

  async function reprocess(letter, button) {
    button.disabled = true;
    try {
      const data = await api("POST", `dead-letters/${letter.id}/reprocess`);
      replace(result, h("p", {}, data.message));
      announce(data.message);
    } catch (error) {
      replace(result, errorBox(error));
    }
    await load();
  }

  async function load() {
    const data = await get("dead-letters", {page, page_size: 20});
    replace(tbody, data.results.map((letter) => {
      const button = h("button", {type: "button", disabled: Boolean(letter.reprocessed_at)},
        letter.reprocessed_at ? "Reprocessed" : "Reprocess",
        h("span", {class: "visually-hidden"}, ` dead letter #${letter.id}`));
      button.addEventListener("click", () => reprocess(letter, button));
      return h("tr", {dataset: {letterId: String(letter.id)}},
        h("td", {dataset: {label: "Letter"}}, `#${letter.id}`),
        h("td", {dataset: {label: "Task"}}, h("a", {href: `#/tasks/${letter.task_id}`}, `#${letter.task_id}`)),
        h("td", {dataset: {label: "Type"}}, letter.task_type),
        h("td", {dataset: {label: "Queue"}}, letter.queue),
        h("td", {dataset: {label: "Error"}, class: "error-cell"}, letter.error || "–"),
        h("td", {dataset: {label: "Attempts"}}, String(letter.attempts)),
        h("td", {dataset: {label: "Failed"}}, timeEl(letter.created_at)),
        h("td", {dataset: {label: "Task now"}}, letter.task_status ? statusBadge(letter.task_status) : "deleted"),
        h("td", {dataset: {label: "Action"}}, button));
    }));
    if (!data.results.length) tbody.append(h("tr", {}, h("td", {colspan: "9", class: "empty"}, "No dead letters.")));
    summary.textContent = `${data.count_exact === false ? "at least " : ""}${data.count} dead ${data.count === 1 ? "letter" : "letters"}`;
    const last = data.count_exact === false ? (data.next ? page + 1 : page) : Math.max(1, Math.ceil(data.count / 20));
    replace(pager,
      page > 1 ? h("a", {href: href("/dead-letters", {page: String(page - 1)}), rel: "prev"}, "Previous page") : null,
      h("span", {}, `Page ${page} of ${last}`),
      page < last ? h("a", {href: href("/dead-letters", {page: String(page + 1)}), rel: "next"}, "Next page") : null);
  }

  const reloadSoon = throttle(() => { load().catch((error) => replace(result, errorBox(error))); }, 1000);
  const unsubscribe = ctx.events.subscribe((type, data) => {
    if (data.status === "FAILED" || data.from_status === "FAILED" || type === "deleted") reloadSoon();
  }, reloadSoon);
  try {
    await load();
  } catch (error) {
    unsubscribe();
    throw error;
  }
  return () => {
    unsubscribe();
    reloadSoon.cancel();
  };
}
