// Live execution page: follows /ui/executions/{id}/events (Server-Sent Events) and updates the
// page in place: the execution's status badge, each step row's badge (data-step-id rows, their
// [data-step-status] badge; a row is added for a step that started after the page was made), and a "Live" panel with step and item changes, agent turns and
// tool calls, and the token stream of `ai` and `agent` steps (docs/UI.md, "Live execution
// page"). Loaded from this origin (the CSP allows no inline script); only textContent is
// written, never HTML. Without JavaScript the page reloads itself instead (<noscript> refresh).
"use strict";

(function () {
  const panel = document.querySelector("[data-live-events]");
  if (!panel) return;
  const refreshSeconds = Number(panel.dataset.refreshSeconds || "2");
  const fallback = () => window.setTimeout(() => window.location.reload(), refreshSeconds * 1000);
  if (typeof window.EventSource === "undefined") {
    fallback();
    return;
  }
  const log = panel.querySelector("[data-live-log]");
  const tokens = panel.querySelector("[data-live-tokens]");
  const state = panel.querySelector("[data-live-state]");
  const terminal = new Set(["succeeded", "failed", "cancelled"]);
  const maxLines = 200;
  let edited = false; // a comment typed in a decision form must not be lost to a reload
  document.addEventListener("input", () => { edited = true; });

  function badge(status) {
    const span = document.createElement("span");
    const safe = String(status).replace(/[^a-z_]/g, "");
    span.className = "badge badge-" + safe;
    span.textContent = safe;
    return span;
  }

  function setBadge(holder, status) {
    if (holder) holder.replaceChildren(badge(status));
  }

  // A step's row; one that had not started when the page was made gets a row of its own at its
  // first event (the page lists rows of started steps only).
  function stepRow(stepId) {
    const id = String(stepId);
    const found = document.querySelector('[data-step-id="' + CSS.escape(id) + '"]');
    if (found) return found;
    const title = document.getElementById("steps-title");
    if (!title) return null;
    let list = title.parentElement.querySelector("ol.steps");
    if (!list) {
      list = document.createElement("ol");
      list.className = "steps";
      title.after(list);
    }
    const row = document.createElement("li");
    row.className = "step";
    row.dataset.stepId = id;
    const head = document.createElement("h3");
    const name = document.createElement("code");
    name.textContent = id;
    const status = document.createElement("span");
    status.setAttribute("data-step-status", "");
    head.append(name, " ", status);
    row.append(head);
    list.append(row);
    return row;
  }

  function line(text) {
    panel.hidden = false;
    const item = document.createElement("li");
    item.textContent = text;
    log.append(item);
    while (log.children.length > maxLines) log.firstElementChild.remove();
  }

  function where(data) {
    let text = "step " + data.step_id;
    if (data.item_index !== undefined && data.item_index !== null) text += " item " + data.item_index;
    return text;
  }

  function tokenArea(stepId) {
    let area = tokens.querySelector('[data-token-step="' + CSS.escape(String(stepId)) + '"]');
    if (!area) {
      const head = document.createElement("h3");
      head.textContent = "Output of step " + stepId;
      area = document.createElement("pre");
      area.className = "json live-text";
      area.dataset.tokenStep = String(stepId);
      tokens.append(head, area);
      tokens.hidden = false;
      panel.hidden = false;
    }
    return area;
  }

  function summary(data) {
    const shown = Object.assign({}, data);
    delete shown.step_id;
    delete shown.item_index;
    return JSON.stringify(shown);
  }

  const source = new EventSource(panel.dataset.liveEvents);
  state.textContent = "Following the execution live.";

  source.addEventListener("step", (event) => {
    const data = JSON.parse(event.data);
    if (data.item_index === undefined || data.item_index === null) {
      const row = stepRow(data.step_id);
      if (row) setBadge(row.querySelector("[data-step-status]"), data.status);
    }
    let text = where(data) + ": " + data.status;
    if (data.attempt) text += " (attempt " + data.attempt + ")";
    if (data.error_code) text += ", " + data.error_code;
    line(text);
  });

  source.addEventListener("agent.turn", (event) => {
    const data = JSON.parse(event.data);
    line(where(data) + ", turn: " + summary(data));
  });

  source.addEventListener("agent.tool_call", (event) => {
    const data = JSON.parse(event.data);
    line(where(data) + ", tool call: " + summary(data));
  });

  source.addEventListener("token", (event) => {
    const data = JSON.parse(event.data);
    tokenArea(data.step_id).textContent += data.text || "";
  });

  source.addEventListener("execution", (event) => {
    const data = JSON.parse(event.data);
    setBadge(document.querySelector("[data-live-status]"), data.status);
    line("execution: " + data.status);
    if (!terminal.has(data.status)) return;
    source.close(); // the server ends the stream too; do not reconnect
    state.textContent = "The execution has ended.";
    if (!edited) window.setTimeout(() => window.location.reload(), 500);
  });

  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      // Refused (signed out, not found, too many streams): fall back to reloading the page.
      state.textContent = "Live updates are unavailable; the page reloads instead.";
      if (!edited) fallback();
    }
  });
})();
