// conveyor dashboard: live pages over the API's event stream, and JSON actions for htmx.
//
// One EventSource per tab on <body data-events>. Every event asks the page's live regions
// (hx-trigger="cv-event from:body") to fetch themselves again, at most once per 150 ms. The stream
// is CLOSED while the tab is hidden (no connection held for a tab nobody looks at) and reopened
// when it is visible again, from the last event seen (Last-Event-ID as a query parameter: a new
// EventSource cannot set the header itself); the regions are refreshed once on reopening.
(function () {
  "use strict";
  const body = document.body;
  const url = body.dataset.events;
  const kinds = ["message", "deployment", "step", "traffic", "analysis", "approval"];
  let source = null;
  let lastId = null;
  let timer = null;

  function refresh() {
    if (timer === null) {
      timer = setTimeout(function () { timer = null; htmx.trigger(body, "cv-event"); }, 150);
    }
  }
  function seen(event) {
    if (event.lastEventId) { lastId = event.lastEventId; }
    refresh();
  }
  function open() {
    if (source !== null || document.hidden || !url || !window.EventSource) { return; }
    const sep = url.indexOf("?") < 0 ? "?" : "&";
    source = new EventSource(lastId ? url + sep + "last_event_id=" + encodeURIComponent(lastId) : url);
    kinds.forEach(function (kind) { source.addEventListener(kind, seen); });
    source.onopen = function () { body.dataset.live = "open"; };
    source.onerror = function () { body.dataset.live = "retrying"; };  // EventSource retries itself
  }
  function close() {
    if (source !== null) { source.close(); source = null; body.dataset.live = "closed"; }
  }
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { close(); } else if (source === null) { open(); refresh(); }
  });
  window.addEventListener("pagehide", close);
  open();

  // Actions post JSON to the API (hx-ext="cv-json"); the answer is shown in #flash, then the
  // live regions are refreshed so the page shows what the action changed.
  htmx.defineExtension("cv-json", {
    onEvent: function (name, evt) {
      if (name === "htmx:configRequest") { evt.detail.headers["Content-Type"] = "application/json"; }
    },
    encodeParameters: function (xhr, parameters) {
      xhr.overrideMimeType("text/json");
      // An empty field is left out: the API's default applies (no comment, every environment).
      const body = {};
      parameters.forEach(function (value, key) { if (value !== "") { body[key] = value; } });
      return JSON.stringify(body);
    },
  });
  body.addEventListener("htmx:afterRequest", function (evt) {
    const elt = evt.detail.elt;
    if (!elt.hasAttribute || !elt.hasAttribute("data-action")) { return; }
    const xhr = evt.detail.xhr;
    let text = xhr.status + " " + xhr.statusText;
    try {
      const answer = JSON.parse(xhr.responseText);
      text = answer.detail || answer.message || answer.error || (evt.detail.successful ? "done" : text);
      if (typeof text !== "string") { text = JSON.stringify(text); }
      if (evt.detail.successful && answer.status) {  // a deploy: started, or waiting for approval
        const which = answer.request_id || (answer.deployment_id ? "#" + answer.deployment_id : "");
        text = answer.status.replace(/_/g, " ") + (which ? " (" + which + ")" : "");
      }
      if (typeof answer.token === "string") { showSecret(answer.token); text = "token created"; }
    } catch (e) { /* not JSON: keep the status line */ }
    const flash = document.getElementById("flash");
    if (flash) {
      flash.textContent = (evt.detail.successful ? "" : "Refused: ") + text;
      flash.className = evt.detail.successful ? "flash ok" : "flash error";
    }
    htmx.trigger(body, "cv-event");
  });
  function showSecret(secret) {
    const box = document.getElementById("new-secret");
    if (box) { box.hidden = false; box.querySelector("code").textContent = secret; }
  }
})();
