// Server-sent events: live updates without polling.
//
// EventSource sends no headers, so each connection carries a short-lived
// stream token from POST /events/token in its URL. EventSource reconnects by
// itself with Last-Event-ID, but with the URL it first had, whose token
// expires; so on any error the page closes it and reopens it with a new
// token and ``last_event_id`` = the last id seen. The server replays what was
// missed from the task history, then continues live: no gap, no duplicate.
// A stream that drops before its first event has no id to resume from: its
// listeners are told to read their REST snapshot again (``onResync``).

import {api, apiUrl} from "./api.js";

export const EVENT_TYPES = [
  "waiting", "pending", "processing", "retrying", "completed", "failed", "cancelled", "deleted", "progress",
];
const FIRST_DELAY_MS = 250;
const MAX_DELAY_MS = 10000;
const CLOSE_DELAY_MS = 5000;

export class LiveStream {
  /**
   * ``path``: an events endpoint. ``onEvent(type, data, id)`` for every event;
   * ``onState(state)`` with "connecting", "live", "reconnecting", "closed";
   * ``isDone()``: true when a closed stream must stay closed (a finished task
   * whose stream the server ended); ``lastId``: resume after this id;
   * ``onResync()`` after a reconnect that had no id to resume from.
   */
  constructor(path, {onEvent, onState = () => {}, onResync = () => {}, isDone = () => false, lastId = null}) {
    this.path = path;
    this.onEvent = onEvent;
    this.onState = onState;
    this.onResync = onResync;
    this.everOpened = false;
    this.isDone = isDone;
    this.lastId = lastId;
    this.source = null;
    this.stopped = true;
    this.delay = FIRST_DELAY_MS;
    this.timer = null;
  }

  start() {
    if (!this.stopped) return this;
    this.stopped = false;
    this.connect();
    return this;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    this.source = null;
    this.onState("closed");
  }

  async connect() {
    if (this.stopped) return;
    this.onState(this.lastId ? "reconnecting" : "connecting");
    let token;
    try {
      ({token} = await api("POST", "events/token"));
    } catch (error) {
      if (error.status === 401) {  // the session is over: the login view takes it from here
        this.stop();
        return;
      }
      this.retryLater();
      return;
    }
    if (this.stopped) return;
    const resumeFrom = this.lastId;
    const url = apiUrl(this.path, {token, last_event_id: resumeFrom});
    const source = new EventSource(url);
    this.source = source;
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (event) => this.receive(type, event));
    }
    source.onopen = () => {
      this.delay = FIRST_DELAY_MS;
      const missedUnknown = this.everOpened && !resumeFrom;
      this.everOpened = true;
      this.onState("live");
      if (missedUnknown) this.onResync();
    };
    source.onerror = () => {
      source.close();
      if (this.source !== source) return;
      this.source = null;
      if (this.isDone()) {
        this.stopped = true;
        this.onState("closed");
        return;
      }
      this.retryLater();
    };
  }

  receive(type, event) {
    if (event.lastEventId) this.lastId = event.lastEventId;
    let data = null;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    this.onEvent(type, data, event.lastEventId || null);
  }

  retryLater() {
    if (this.stopped) return;
    this.onState("reconnecting");
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), this.delay);
    this.delay = Math.min(this.delay * 2, MAX_DELAY_MS);
  }
}

/**
 * One stream shared by every view that wants it: ``subscribe(fn)`` returns the
 * unsubscribe function. The user's stream stays open for the whole session;
 * the admin stream closes when no view listens any more.
 */
export class Hub {
  constructor(path, {keepOpen = false} = {}) {
    this.path = path;
    this.keepOpen = keepOpen;
    this.listeners = new Set();
    this.stateListeners = new Set();
    this.resyncListeners = new Set();
    this.progressListeners = new Set();
    this.state = "closed";
    this.stream = null;
    this.closeTimer = null;
  }

  open() {
    if (this.stream) return;
    this.stream = new LiveStream(this.path, {
      onEvent: (type, data, id) => {
        for (const listener of [...this.listeners]) {
          // Progress is not a transition: only a listener that asked for it hears it.
          if (type === "progress" && !this.progressListeners.has(listener)) continue;
          listener(type, data, id);
        }
      },
      onState: (state) => {
        this.state = state;
        for (const listener of [...this.stateListeners]) listener(state);
      },
      onResync: () => {
        for (const listener of [...this.resyncListeners]) listener();
      },
    }).start();
  }

  close() {
    clearTimeout(this.closeTimer);
    if (this.stream) this.stream.stop();
    this.stream = null;
  }

  /**
   * ``listener(type, data, id)`` for every transition (and, with ``progress``, every
   * ``progress`` event); ``resync()`` when events may have been missed (read the REST
   * snapshot again). Returns the unsubscribe.
   */
  subscribe(listener, resync = null, {progress = false} = {}) {
    this.listeners.add(listener);
    if (progress) this.progressListeners.add(listener);
    if (resync) this.resyncListeners.add(resync);
    clearTimeout(this.closeTimer);
    this.open();
    return () => {
      this.listeners.delete(listener);
      this.progressListeners.delete(listener);
      if (resync) this.resyncListeners.delete(resync);
      if (!this.keepOpen && this.listeners.size === 0) {
        // Moving from one admin view to the next keeps the same connection.
        this.closeTimer = setTimeout(() => { if (this.listeners.size === 0) this.close(); }, CLOSE_DELAY_MS);
      }
    };
  }

  onState(listener) {
    this.stateListeners.add(listener);
    listener(this.state);
    return () => this.stateListeners.delete(listener);
  }
}
