// The console: session, page chrome and the view of the current route.

import {api, onSessionEnded} from "./api.js";
import {announce, errorBox, h, replace} from "./dom.js";
import {currentRoute, match, navigate} from "./router.js";
import {Hub} from "./stream.js";
import {renderQueues, renderStuck, renderWorkers} from "./views/admin.js";
import {renderCreate} from "./views/create.js";
import {renderDeadLetters} from "./views/dead_letters.js";
import {renderLogin, renderRegister} from "./views/login.js";
import {renderOverview} from "./views/overview.js";
import {renderTask} from "./views/task.js";
import {renderAdminTasks, renderTasks} from "./views/tasks.js";

const ROUTES = [
  {path: "/", title: "Overview", view: renderOverview},
  {path: "/tasks", title: "Tasks", view: renderTasks},
  {path: "/tasks/new", title: "Create a task", view: renderCreate},
  {path: "/tasks/:id", title: "Task", view: renderTask},
  {path: "/dead-letters", title: "Dead letters", view: renderDeadLetters},
  {path: "/admin/tasks", title: "All tasks", view: renderAdminTasks, admin: true},
  {path: "/admin/queues", title: "Queues", view: renderQueues, admin: true},
  {path: "/admin/workers", title: "Workers", view: renderWorkers, admin: true},
  {path: "/admin/stuck", title: "Stuck tasks", view: renderStuck, admin: true},
];
const NAV = [
  ["/", "Overview"],
  ["/tasks", "Tasks"],
  ["/tasks/new", "Create task"],
  ["/dead-letters", "Dead letters"],
];
const ADMIN_NAV = [
  ["/admin/tasks", "All tasks"],
  ["/admin/queues", "Queues"],
  ["/admin/workers", "Workers"],
  ["/admin/stuck", "Stuck tasks"],
];
const LIVE_LABELS = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  closed: "Offline",
};

const session = {user: null, events: null, adminEvents: null, notice: null};
let cleanup = null;
let generation = 0;
let firstView = true;

function startSession(user) {
  session.user = user;
  session.notice = null;
  // The caller's stream stays open for the whole session; views subscribe to it.
  session.events = new Hub("events", {keepOpen: true});
  session.events.open();
  session.events.onState(showLiveState);
  session.adminEvents = user.is_admin ? new Hub("admin/events") : null;
  renderChrome();
}

function endSession(notice) {
  if (!session.user) return;
  session.user = null;
  session.notice = notice;
  if (session.events) session.events.close();
  if (session.adminEvents) session.adminEvents.close();
  session.events = session.adminEvents = null;
  renderChrome();
  show();
}

async function signOut() {
  try {
    await api("POST", "auth/logout");
  } catch {
    // Already over (expired or revoked): nothing left to end on the server.
  }
  endSession("You have signed out.");
  announce("Signed out");
}

function showLiveState(state) {
  if (state === "live" && !performance.getEntriesByName("taskq:live").length) {
    performance.mark("taskq:live");
  }
  const badge = document.getElementById("live-state");
  badge.hidden = !session.user;
  badge.dataset.state = state;
  badge.textContent = LIVE_LABELS[state] || state;
  badge.title = state === "live" ? "Updates arrive as they happen" : "Waiting for the event stream";
}

function navLink([path, label]) {
  return h("li", {}, h("a", {href: `#${path}`, dataset: {path}}, label));
}

function renderChrome() {
  const nav = document.getElementById("site-nav");
  const account = document.getElementById("account");
  const menu = document.getElementById("menu-button");
  const signedIn = Boolean(session.user);
  nav.hidden = account.hidden = menu.hidden = !signedIn;
  document.getElementById("live-state").hidden = !signedIn;
  if (!signedIn) {
    replace(nav);
    replace(account);
    return;
  }
  replace(nav,
    h("ul", {class: "nav-list"}, NAV.map(navLink)),
    session.user.is_admin
      ? h("div", {class: "nav-group"},
        h("span", {class: "nav-heading", id: "admin-nav-heading"}, "Admin"),
        h("ul", {class: "nav-list", "aria-labelledby": "admin-nav-heading"}, ADMIN_NAV.map(navLink)))
      : null);
  replace(account,
    h("span", {class: "who"}, "Signed in as ", h("strong", {}, session.user.username),
      session.user.is_admin ? " (admin)" : ""),
    h("button", {type: "button", class: "link-button", onclick: signOut}, "Sign out"));
  menu.onclick = () => {
    const open = menu.getAttribute("aria-expanded") !== "true";
    menu.setAttribute("aria-expanded", String(open));
    document.body.classList.toggle("nav-open", open);
  };
}

function markCurrentNav(path) {
  for (const link of document.querySelectorAll("#site-nav a")) {
    const target = link.dataset.path;
    const current = target === path || (target === "/tasks" && /^\/tasks\/\d+$/.test(path));
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.body.classList.remove("nav-open");
  document.getElementById("menu-button").setAttribute("aria-expanded", "false");
}

function simplePage(main, title, message) {
  document.title = `${title} · taskq`;
  replace(main, h("h1", {tabindex: "-1"}, title), h("p", {}, message),
    h("p", {}, h("a", {href: "#/"}, "Back to the overview")));
}

async function show() {
  if (cleanup) {
    const previous = cleanup;
    cleanup = null;
    try { previous(); } catch (error) { console.error(error); }
  }
  const token = ++generation;
  const {path, params} = currentRoute();
  const main = document.getElementById("main");
  if (!session.user) {
    const onSignedIn = (user) => {
      startSession(user);
      announce(`Signed in as ${user.username}`);
      if (path === "/login" || path === "/register") navigate("/");
      else show();
    };
    if (path === "/register") renderRegister(main, {onSignedIn});
    else renderLogin(main, {onSignedIn, notice: session.notice});
    return;
  }
  if (path === "/login" || path === "/register") {
    navigate("/");
    return;
  }
  markCurrentNav(path);
  const found = match(ROUTES, path);
  if (!found) {
    simplePage(main, "Not found", "There is no such page in the console.");
    return;
  }
  const [route, args] = found;
  if (route.admin && !session.user.is_admin) {
    simplePage(main, "Admins only", "This view is for administrators.");
    return;
  }
  document.title = `${route.title} · taskq`;
  replace(main);
  const context = {
    user: session.user,
    params,
    args,
    events: session.events,
    adminEvents: session.adminEvents,
    isCurrent: () => token === generation,
  };
  let result = null;
  try {
    result = await route.view(main, context);
  } catch (error) {
    if (token === generation) replace(main, h("h1", {tabindex: "-1"}, route.title), errorBox(error));
  }
  if (token !== generation) {
    if (typeof result === "function") result();
    return;
  }
  cleanup = typeof result === "function" ? result : null;
  performance.mark("taskq:view-ready", {detail: route.path});  // read by bench/dashboard_latency.py
  if (!firstView) {
    const heading = main.querySelector("h1");
    if (heading) heading.focus({preventScroll: false});
  }
  firstView = false;
}

async function boot() {
  onSessionEnded(() => endSession("Your session has ended: please sign in again."));
  window.addEventListener("hashchange", show);
  // "#main" would be read as a route: the skip link moves the focus itself.
  document.querySelector(".skip-link").addEventListener("click", (event) => {
    event.preventDefault();
    document.getElementById("main").focus();
  });
  try {
    const {user} = await api("GET", "auth/profile");
    startSession(user);
  } catch (error) {
    if (error.status !== 401) {
      replace(document.getElementById("main"), h("h1", {}, "taskq console"), errorBox(error));
      return;
    }
  }
  show();
}

boot();
