// cmdd console: the session (token in sessionStorage), API calls, and
// helpers that make DOM nodes from text (never from HTML).
(() => {
  "use strict";

  const SESSION_KEY = "cmdd.session";
  /** Called with a message when the API refuses the session's token. */
  let sessionEnded = () => {};

  /** {token, id, owner}: in sessionStorage (this tab only), never a cookie or URL. */
  let session = readSession();

  function readSession() {
    try {
      const value = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
      return value && typeof value.token === "string" ? value : null;
    } catch (_) {
      return null;
    }
  }

  function saveSession(value) {
    session = value;
    if (value) sessionStorage.setItem(SESSION_KEY, JSON.stringify(value));
    else sessionStorage.removeItem(SESSION_KEY);
  }

  class ApiError extends Error {
    constructor(status, body) {
      const error = (body && body.error) || {};
      super(error.message || `the server answered ${status}`);
      this.status = status;
      this.code = error.code || "";
      this.field = error.field || null;
    }
  }

  class SessionEnded extends Error {}

  /** One API call; JSON in and out. A 401 for our token ends the session. */
  async function api(method, path, options = {}) {
    const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
    const bearer = !headers.Authorization;
    if (bearer) {
      if (!session) throw new SessionEnded();
      headers.Authorization = "Bearer " + session.token;
    }
    const init = { method, headers, credentials: "omit", cache: "no-store", signal: options.signal };
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    const response = await fetch(path, init);
    if (response.status === 401 && bearer) {
      sessionEnded("Your session has ended: the token is invalid, expired or revoked. Log in again.");
      throw new SessionEnded();
    }
    if (options.raw && response.ok) return response;
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (_) {
      body = null;
    }
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  /** Basic credentials for UTF-8 user names and passwords. */
  function basic(user, password) {
    const bytes = new TextEncoder().encode(user + ":" + password);
    let binary = "";
    bytes.forEach((b) => { binary += String.fromCharCode(b); });
    return "Basic " + btoa(binary);
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function stateBadge(state) {
    return el("span", state, "state state-" + String(state).replace(/[^a-z_]/g, ""));
  }

  function when(text) {
    if (!text) return "";
    const date = new Date(text);
    return isNaN(date) ? String(text) : date.toLocaleString();
  }

  function seconds(value) {
    if (value === null || value === undefined || isNaN(value)) return "";
    if (value < 60) return value.toFixed(1) + " s";
    const minutes = Math.floor(value / 60);
    if (minutes < 60) return `${minutes} min ${Math.round(value % 60)} s`;
    return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
  }

  function duration(job) {
    if (!job.started) return "";
    const end = job.completed ? new Date(job.completed) : new Date();
    return seconds((end - new Date(job.started)) / 1000);
  }

  function commandText(spec) {
    if (typeof spec.command === "string") return spec.command;
    if (Array.isArray(spec.command_line)) return spec.command_line.map(quote).join(" ");
    return "";
  }

  function quote(word) {
    return /^[A-Za-z0-9_\/.,:=@%+-]+$/.test(word) ? word : "'" + word.replace(/'/g, "'\\''") + "'";
  }

  function pairs(object, separator) {
    return Object.entries(object || {}).map(([k, v]) => k + separator + v).join("\n");
  }

  window.cmdd = Object.freeze({
    ApiError, SessionEnded, api, basic, commandText, duration, el, pairs, seconds, stateBadge, when,
    currentSession: () => session,
    saveSession,
    onSessionEnded: (hook) => { sessionEnded = hook; },
  });
})();
