// Views live after "#": "#/tasks?status=FAILED&page=2". The server serves one
// page; reloading, bookmarking and the back button all keep the view.

/** The current route: {path: "/tasks", params: URLSearchParams}. */
export function currentRoute() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = hash.split("?");
  return {path: path || "/", params: new URLSearchParams(query)};
}

/** The href of a route, with its query (empty values left out). */
export function href(path, params = {}) {
  const search = new URLSearchParams();
  const entries = params instanceof URLSearchParams ? params.entries() : Object.entries(params);
  for (const [key, value] of entries) {
    if (value !== undefined && value !== null && value !== "") search.set(key, value);
  }
  const query = search.toString();
  return `#${path}${query ? `?${query}` : ""}`;
}

/** Go to a route (a new history entry, so Back returns). */
export function navigate(path, params) {
  const target = href(path, params);
  if (location.hash === target) window.dispatchEvent(new HashChangeEvent("hashchange"));
  else location.hash = target;
}

/**
 * Match ``path`` against routes like "/tasks/:id"; [route, {id}] or null.
 */
export function match(routes, path) {
  for (const route of routes) {
    const names = [];
    const pattern = new RegExp(
      `^${route.path.replace(/:(\w+)/g, (_, name) => { names.push(name); return "([^/]+)"; })}$`,
    );
    const found = pattern.exec(path);
    if (found) {
      const args = {};
      names.forEach((name, index) => { args[name] = decodeURIComponent(found[index + 1]); });
      return [route, args];
    }
  }
  return null;
}
