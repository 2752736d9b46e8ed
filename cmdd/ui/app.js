// cmdd console: the views (login, jobs, a job, submit, schedules) over the
// cmdd API; api.js and output.js come first. No framework, no build step.
// Every string from the API or the user reaches the page through
// textContent / text nodes only, never as HTML.
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const {
    ApiError, SessionEnded, api, basic, commandText, duration, el, pairs, saveSession, seconds,
    stateBadge, when,
  } = window.cmdd;
  const { SseParser, Terminal } = window.cmddOutput;
  const PAGE_SIZE = 20;
  const REFRESH_MS = 2000;
  /** A login's token lives this long (seconds); "Log out" revokes it sooner. */
  const LOGIN_TOKEN_SECONDS = 12 * 3600;
  /** What the list shows (the API trims the rest). */
  const LIST_FIELDS = "id,state,owner,command,command_line,created,started,completed,exit_code";
  const FINAL = new Set(["succeeded", "failed", "not_executed", "cancelled", "lost"]);

  function endSession(message) {
    saveSession(null);
    $("login-error").textContent = message || "";
    go("#/login");
  }

  /** Show the view of a hash, also when the address already has it. */
  function go(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  }

  async function logIn(event) {
    event.preventDefault();
    $("login-error").textContent = "";
    const user = $("login-user").value;
    const password = $("login-password").value;
    try {
      const token = await api("POST", "/api/tokens", {
        headers: { Authorization: basic(user, password) },
        body: { description: "web console", expires_in: LOGIN_TOKEN_SECONDS },
      });
      $("login-password").value = "";
      saveSession({ token: token.token, id: token.id, owner: token.owner });
      go("#/jobs");
    } catch (error) {
      $("login-error").textContent = error.status === 401
        ? "Wrong user name or password." : error.message;
    }
  }

  async function useToken(event) {
    event.preventDefault();
    $("login-error").textContent = "";
    const pasted = $("login-token").value.trim();
    saveSession({ token: pasted, id: null, owner: "" });
    try {
      const mine = await api("GET", "/api/tokens");
      const first = (mine.tokens || [])[0];
      saveSession({ token: pasted, id: null, owner: first ? first.owner : "" });
      $("login-token").value = "";
      go("#/jobs");
    } catch (error) {
      // Whatever went wrong (a 401, a token no header can carry), keep no session.
      saveSession(null);
      if (!(error instanceof SessionEnded)) $("login-error").textContent = error.message;
      else $("login-error").textContent = "That token is invalid, expired or revoked.";
    }
  }

  async function logOut() {
    const ending = window.cmdd.currentSession();
    if (ending && ending.id) {
      // Revoke the token this page made; a pasted one is the user's to keep.
      try { await api("DELETE", "/api/tokens/" + encodeURIComponent(ending.id)); } catch (_) { /* gone already */ }
    }
    endSession("");
  }

  function showError(id, error) {
    if (error instanceof SessionEnded) return;
    $(id).textContent = error ? error.message : "";
  }

  // --- views --------------------------------------------------------------

  const VIEWS = ["login-view", "jobs-view", "job-view", "submit-view", "schedules-view"];
  /** Stops what the current view runs (timers, streams) when leaving it. */
  let leave = () => {};

  function show(view) {
    leave();
    leave = () => {};
    VIEWS.forEach((name) => { $(name).hidden = name !== view; });
    $("top").hidden = view === "login-view";
    const session = window.cmdd.currentSession();
    $("who").textContent = session && session.owner ? "signed in as " + session.owner : "";
    ["jobs", "submit", "schedules"].forEach((name) => {
      $("nav-" + name).classList.toggle("current", view.startsWith(name));
    });
  }

  function route() {
    const hash = location.hash || "#/jobs";
    if (!window.cmdd.currentSession()) {
      show("login-view");
      return;
    }
    const job = /^#\/jobs\/([1-9][0-9]*)$/.exec(hash);
    if (job) showJob(job[1]);
    else if (hash === "#/submit") showSubmit();
    else if (hash === "#/schedules") showSchedules();
    else if (hash === "#/login") go("#/jobs");
    else showJobs();
  }

  /** Run fn now and every REFRESH_MS while the view lasts, never twice at once. */
  function every(fn) {
    let busy = false;
    let timer = null;
    let stopped = false;
    const tick = async () => {
      if (busy || stopped) return;
      busy = true;
      try { await fn(); } finally { busy = false; }
    };
    timer = setInterval(tick, REFRESH_MS);
    tick();
    return () => { stopped = true; clearInterval(timer); };
  }

  // --- job list -----------------------------------------------------------

  /** cursors[i] opens page i (the API's own cursors: no skips, no repeats). */
  let cursors = [null];
  let page = 0;
  let nextCursor = null;

  function jobsQuery() {
    const params = new URLSearchParams();
    const state = $("filter-state").value;
    const label = $("filter-label").value.trim();
    const owner = $("filter-owner").value.trim();
    const text = $("filter-q").value.trim();
    if (state) params.append("state", state);
    if (label) params.append("label", label);
    if (owner) params.append("owner", owner);
    if (text) params.append("q", text);
    params.append("limit", String(PAGE_SIZE));
    params.append("fields", LIST_FIELDS);
    if (cursors[page]) params.append("cursor", cursors[page]);
    return params;
  }

  async function loadJobs() {
    let data;
    try {
      data = await api("GET", "/api/jobs?" + jobsQuery().toString());
    } catch (error) {
      showError("jobs-error", error);
      return;
    }
    showError("jobs-error", null);
    nextCursor = data.next ? new URL(data.next, location.href).searchParams.get("cursor") : null;
    const rows = (data.jobs || []).map(jobRow);
    $("jobs-body").replaceChildren(...rows);
    $("jobs-empty").hidden = rows.length > 0;
    $("page-older").disabled = !nextCursor;
    $("page-newer").disabled = page === 0;
    $("page-number").textContent = "page " + (page + 1);
  }

  function jobRow(job) {
    const row = el("tr", null, "link");
    row.dataset.jobId = String(job.id);
    const link = el("a", String(job.id));
    link.href = "#/jobs/" + job.id;
    const id = el("td");
    id.append(link);
    const state = el("td");
    state.append(stateBadge(job.state));
    row.append(id, state, el("td", job.owner), el("td", commandText(job), "command"),
      el("td", when(job.created)), el("td", duration(job)),
      el("td", job.exit_code === null || job.exit_code === undefined ? "" : job.exit_code));
    row.addEventListener("click", () => { location.hash = "#/jobs/" + job.id; });
    return row;
  }

  function showJobs() {
    show("jobs-view");
    leave = every(loadJobs);
  }

  // --- one job --------------------------------------------------------------

  let currentJob = null;

  async function followOutput(id, signal) {
    const terminals = {
      stdout: new Terminal($("job-stdout"), $("stdout-note")),
      stderr: new Terminal($("job-stderr"), $("stderr-note")),
    };
    let ended = false;
    const parser = new SseParser((event, data) => {
      if (event === "stdout" || event === "stderr") terminals[event].write(JSON.parse(data));
      else if (event === "end") {
        ended = true;
        const end = JSON.parse(data);
        ["stdout", "stderr"].forEach((name) => {
          if (end.truncated && end.truncated[name]) {
            terminals[name].notice(`Truncated: the job wrote ${end[name + "_bytes"]} bytes, ` +
              "more than the daemon keeps; the rest was dropped.");
          }
        });
      }
    });
    const response = await api("GET", `/api/jobs/${id}/output`,
      { headers: { Accept: "text/event-stream" }, raw: true, signal });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.feed(decoder.decode(value, { stream: true }));
    }
    parser.feed(decoder.decode() + "\n\n");
    return ended;
  }

  /** Follow the output; reconnect (from the start) if the stream breaks. */
  function streamOutput(id, controller) {
    followOutput(id, controller.signal).then((ended) => {
      if (ended || controller.signal.aborted) return;
      setTimeout(() => { if (!controller.signal.aborted) streamOutput(id, controller); }, REFRESH_MS);
    }, (error) => {
      if (controller.signal.aborted || error instanceof SessionEnded) return;
      showError("job-error", error);
      // A refusal (no such job, deleted, forbidden) will not change by retrying;
      // 429 (too many requests) will.
      if (error instanceof ApiError && error.status >= 400 && error.status < 500
        && error.status !== 429) return;
      setTimeout(() => { if (!controller.signal.aborted) streamOutput(id, controller); }, REFRESH_MS);
    });
  }

  function renderSpec(job) {
    const rows = [
      ["owner", job.owner],
      [job.command_line ? "argv" : "command",
        job.command_line ? JSON.stringify(job.command_line) : job.command],
      ["environment", pairs(job.environment, "=")],
      ["working directory", job.working_directory],
      ["user", job.user],
      ["timeout", job.timeout === undefined || job.timeout === null ? "" : job.timeout + " s"],
      ["labels", pairs(job.labels, "=")],
      ["webhooks", pairs(job.webhooks, " → ")],
      ["run at", job.run_at],
      ["schedule", job.schedule_id],
      ["concurrency key", job.concurrency_key],
      ["stdin", job.stdin],
      ["host", job.host],
      ["created", when(job.created)],
    ];
    const items = [];
    rows.forEach(([name, value]) => {
      if (value === undefined || value === null || value === "") return;
      items.push(el("dt", name), el("dd", value));
    });
    $("job-spec").replaceChildren(...items);
  }

  function renderJob(job) {
    currentJob = job;
    $("job-title").replaceChildren(el("span", "Job " + job.id + " "), stateBadge(job.state));
    renderSpec(job);
    $("job-timeline").replaceChildren(...(job.status_history || []).map((entry) =>
      el("li", entry.state + " — " + when(entry.at) + (entry.late ? " (late)" : ""))));
    $("job-cancel").disabled = FINAL.has(job.state);
    $("job-delete").disabled = !FINAL.has(job.state);
  }

  function renderOutcome(result) {
    const rows = [
      ["exit code", result.exit_code],
      ["signal", result.signal],
      ["reason", result.reason],
      ["duration", seconds(result.duration)],
      ["stdout bytes", result.stdout_bytes],
      ["stderr bytes", result.stderr_bytes],
      ["truncated", ["stdout", "stderr"].filter((n) => result.truncated && result.truncated[n]).join(", ")],
      ["cancelled by", result.cancelled_by],
      ["output error", result.output_error],
    ];
    const items = [];
    rows.forEach(([name, value]) => {
      if (value === undefined || value === null || value === "") return;
      items.push(el("dt", name), el("dd", value));
    });
    $("job-outcome").replaceChildren(...items);
  }

  function renderDeliveries(data) {
    const rows = (data.deliveries || []).map((d) => {
      const row = el("tr");
      row.append(el("td", d.sequence), el("td", d.callback_type), el("td", d.url, "command"),
        el("td", d.state), el("td", d.attempts_total),
        el("td", d.last_status_code !== null && d.last_status_code !== undefined
          ? d.last_status_code : (d.last_error || "")),
        el("td", when(d.next_retry)));
      return row;
    });
    $("deliveries-body").replaceChildren(...rows);
    $("deliveries-empty").hidden = rows.length > 0;
    $("deliveries-table").parentElement.hidden = rows.length === 0;
  }

  /** Whether the error shown on the job page is a refresh's (cleared by the next good one). */
  let refreshFailed = false;

  async function refreshJob(id) {
    let job;
    try {
      job = await api("GET", "/api/jobs/" + id);
    } catch (error) {
      showError("job-error", error);
      refreshFailed = true;
      return;
    }
    if (refreshFailed) showError("job-error", null);
    refreshFailed = false;
    renderJob(job);
    try {
      renderDeliveries(await api("GET", `/api/jobs/${id}/deliveries`));
      if (FINAL.has(job.state) && !$("job-outcome").childElementCount) {
        renderOutcome(await api("GET", "/api/results/" + id));
      }
    } catch (error) {
      showError("job-error", error);
    }
  }

  function showJob(id) {
    show("job-view");
    currentJob = null;
    $("job-title").textContent = "Job " + id;
    ["job-spec", "job-timeline", "job-outcome", "deliveries-body"].forEach((n) => $(n).replaceChildren());
    showError("job-error", null);
    resetDelete();
    const controller = new AbortController();
    streamOutput(id, controller);
    const stop = every(() => refreshJob(id));
    leave = () => { controller.abort(); stop(); };
  }

  async function cancelJob() {
    if (!currentJob) return;
    $("job-cancel").disabled = true;
    try {
      renderJob(await api("PATCH", "/api/jobs/" + currentJob.id, { body: { status: "cancelled" } }));
    } catch (error) {
      showError("job-error", error);
      $("job-cancel").disabled = false;
    }
  }

  let deleteArmed = null;

  function resetDelete() {
    clearTimeout(deleteArmed);
    deleteArmed = null;
    $("job-delete").textContent = "Delete";
  }

  async function deleteJob() {
    if (!currentJob) return;
    if (!deleteArmed) {
      // Two clicks (no confirm() dialog): the second within 5 s deletes.
      $("job-delete").textContent = "Really delete?";
      deleteArmed = setTimeout(resetDelete, 5000);
      return;
    }
    resetDelete();
    try {
      await api("DELETE", "/api/jobs/" + currentJob.id);
      go("#/jobs");
    } catch (error) {
      showError("job-error", error);
    }
  }

  async function download(stream) {
    if (!currentJob) return;
    try {
      const response = await api("GET", `/api/jobs/${currentJob.id}/output/${stream}`, { raw: true });
      const url = URL.createObjectURL(await response.blob());
      const link = document.createElement("a");
      link.href = url;
      link.download = `job-${currentJob.id}.${stream}`;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (error) {
      showError("job-error", error);
    }
  }

  // --- submit -------------------------------------------------------------

  class FieldError extends Error {
    constructor(field, message) {
      super(message);
      this.field = field;
    }
  }

  function parseLines(text, field, what) {
    const out = {};
    text.split("\n").forEach((raw, index) => {
      const line = raw.trim() ? raw : "";
      if (!line) return;
      const equals = line.indexOf("=");
      if (equals < 1) throw new FieldError(field, `line ${index + 1}: write ${what}`);
      out[line.slice(0, equals)] = line.slice(equals + 1);
    });
    return out;
  }

  function buildSpec() {
    const spec = {};
    const command = $("submit-command").value;
    if ($("mode-argv").checked) {
      spec.command_line = command.split("\n").filter((line, i, all) => line !== "" || i < all.length - 1);
    } else {
      spec.command = command;
    }
    const env = parseLines($("submit-env").value, "environment", "NAME=value");
    if (Object.keys(env).length) spec.environment = env;
    const labels = parseLines($("submit-labels").value, "labels", "key=value");
    if (Object.keys(labels).length) spec.labels = labels;
    const cwd = $("submit-cwd").value;
    if (cwd) spec.working_directory = cwd;
    const timeout = $("submit-timeout").value.trim();
    // A number goes as a number (the API says if it is out of range); other
    // text as it is, for the API to name what is wrong.
    if (timeout) spec.timeout = Number.isFinite(Number(timeout)) ? Number(timeout) : timeout;
    return spec;
  }

  function fieldSlot(field) {
    let name = String(field || "").split(/[.[]/)[0];
    if (name === "command_line") name = "command";
    return document.querySelector(`#submit-form .field-error[data-field="${CSS.escape(name)}"]`)
      || document.querySelector('#submit-form .field-error[data-field=""]');
  }

  async function submitJob(event) {
    event.preventDefault();
    document.querySelectorAll("#submit-form .field-error").forEach((p) => { p.textContent = ""; });
    $("submit-button").disabled = true;
    try {
      const job = await api("POST", "/api/jobs", { body: buildSpec() });
      $("submit-form").reset();
      location.hash = "#/jobs/" + job.id;
    } catch (error) {
      if (!(error instanceof SessionEnded)) {
        fieldSlot(error.field).textContent = error.message;
        $("submit-form").querySelector("[data-field]:not(:empty)").scrollIntoView({ block: "nearest" });
      }
    } finally {
      $("submit-button").disabled = false;
    }
  }

  function showSubmit() {
    show("submit-view");
  }

  // --- schedules ----------------------------------------------------------

  async function loadSchedules() {
    let data;
    try {
      data = await api("GET", "/api/schedules");
    } catch (error) {
      showError("schedules-error", error);
      return;
    }
    showError("schedules-error", null);
    const rows = (data.schedules || []).map((s) => {
      const recent = el("td");
      (s.last_jobs || []).forEach((j) => {
        const link = el("a", "#" + j.id + " " + j.state);
        link.href = "#/jobs/" + j.id;
        recent.append(link, " ");
      });
      const row = el("tr");
      row.append(el("td", s.id), el("td", s.cron, "command"), el("td", s.timezone),
        el("td", commandText(s.job || {}), "command"), el("td", when(s.next_run)),
        el("td", when(s.last_run)), el("td", s.paused ? "yes" : "no"), recent);
      return row;
    });
    $("schedules-body").replaceChildren(...rows);
    $("schedules-empty").hidden = rows.length > 0;
  }

  function showSchedules() {
    show("schedules-view");
    leave = every(loadSchedules);
  }

  // --- wiring -------------------------------------------------------------

  function start() {
    window.cmdd.onSessionEnded(endSession);
    $("login-form").addEventListener("submit", logIn);
    $("token-form").addEventListener("submit", useToken);
    $("logout").addEventListener("click", logOut);
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      cursors = [null];
      page = 0;
      loadJobs();
    });
    $("page-older").addEventListener("click", () => {
      if (!nextCursor) return;
      cursors[page + 1] = nextCursor;
      page += 1;
      loadJobs();
    });
    $("page-newer").addEventListener("click", () => {
      if (page === 0) return;
      page -= 1;
      loadJobs();
    });
    $("job-cancel").addEventListener("click", cancelJob);
    $("job-delete").addEventListener("click", deleteJob);
    $("download-stdout").addEventListener("click", () => download("stdout"));
    $("download-stderr").addEventListener("click", () => download("stderr"));
    $("submit-form").addEventListener("submit", submitJob);
    window.addEventListener("hashchange", route);
    route();
  }

  start();
})();
