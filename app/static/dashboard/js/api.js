// The JSON API, as the console's only source of data.
//
// The session lives in HttpOnly cookies the page cannot read. What the page
// can read is the CSRF cookie, whose value it repeats in X-CSRF-TOKEN on every
// request that changes something (flask-jwt-extended's double submit). When
// the access cookie has expired the API answers 401: the page refreshes the
// session once (one refresh shared by every request waiting on it) and tries
// again; a second 401 means the session is over.

// Relative to the page (always …/dashboard/), so a path prefix in front of
// taskq keeps working.
export const API_ROOT = new URL("../api/v1/", document.baseURI);

export class ApiError extends Error {
  constructor(status, message, fieldErrors = {}, retryAfter = null) {
    super(message);
    this.status = status;
    this.fieldErrors = fieldErrors || {};
    this.retryAfter = retryAfter;
  }
}

/** The value of a readable cookie, or null. */
export function readCookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return null;
}

let sessionEnded = () => {};
/** ``callback()`` runs when a request finds the session over (expired or revoked). */
export function onSessionEnded(callback) {
  sessionEnded = callback;
}

/** The URL of an API path with its query (empty values left out). */
export function apiUrl(path, query) {
  const url = new URL(path, API_ROOT);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  return url;
}

async function send(method, path, {body, query, headers = {}, csrfCookie = "csrf_access_token"} = {}) {
  const all = {Accept: "application/json", ...headers};
  if (body !== undefined) all["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD") {
    const csrf = readCookie(csrfCookie);
    if (csrf) all["X-CSRF-TOKEN"] = csrf;
  }
  return fetch(apiUrl(path, query), {
    method,
    headers: all,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
}

async function parse(response) {
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const retry = response.headers.get("Retry-After");
    throw new ApiError(
      response.status,
      (data && data.error) || `HTTP ${response.status}`,
      data && data.field_errors,
      retry ? Number(retry) : null,
    );
  }
  return data;
}

let refreshing = null;

/** Trade the refresh cookie for a new pair of cookies; true when it worked. */
export function refreshSession() {
  if (!refreshing) {
    refreshing = (async () => {
      if (!readCookie("csrf_refresh_token")) return false;
      try {
        const response = await send("POST", "auth/token/refresh", {csrfCookie: "csrf_refresh_token"});
        return response.ok;
      } catch {
        return false;
      }
    })().finally(() => { refreshing = null; });
  }
  return refreshing;
}

/**
 * A request to the API; the parsed JSON body, or an ApiError in the API's
 * error shape. ``auth: false`` for sign-in calls (a 401 there is a wrong
 * password, not an expired session).
 */
export async function api(method, path, options = {}) {
  let response = await send(method, path, options);
  if (response.status === 401 && options.auth !== false) {
    if (readCookie("csrf_refresh_token")) {
      await refreshSession();
      // Retried even when this refresh lost: another tab may have rotated the cookies.
      response = await send(method, path, options);
    }
    if (response.status === 401) sessionEnded();
  }
  return parse(response);
}

export const get = (path, query) => api("GET", path, {query});
export const post = (path, body) => api("POST", path, {body});
export const del = (path) => api("DELETE", path);
