// tocsin's pages work without this file; with it, they update themselves: a page that names a
// live stream (data-live on <body>) reloads its #live part when the server says something
// changed, and relative times ("3 min ago") stay current. No inline script: the CSP forbids it.
(function () {
  "use strict";

  function ago(iso) {
    var seconds = Math.floor((Date.now() - Date.parse(iso)) / 1000);
    if (isNaN(seconds)) return null;
    if (seconds < 45) return "just now";
    var units = [["d", 86400], ["h", 3600], ["min", 60]];
    for (var i = 0; i < units.length; i++) {
      if (seconds >= units[i][1]) return Math.floor(seconds / units[i][1]) + " " + units[i][0] + " ago";
    }
    return "1 min ago";
  }

  function refreshTimes(root) {
    var times = root.querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var text = ago(times[i].getAttribute("datetime"));
      if (text) times[i].textContent = text;
    }
  }

  // What a person typed or opened in the live part survives its reload.
  function keep(root) {
    var kept = { values: {}, open: {} };
    root.querySelectorAll("textarea[id], input[id]").forEach(function (field) {
      if (field.type !== "hidden") kept.values[field.id] = field.value;
    });
    root.querySelectorAll("details").forEach(function (details, i) { kept.open[i] = details.open; });
    return kept;
  }

  function restore(root, kept) {
    Object.keys(kept.values).forEach(function (id) {
      var field = document.getElementById(id);
      if (field && root.contains(field) && kept.values[id]) field.value = kept.values[id];
    });
    root.querySelectorAll("details").forEach(function (details, i) {
      if (kept.open[i]) details.open = true;
    });
  }

  var busy = false, again = false;
  function reload() {
    var live = document.getElementById("live");
    if (!live) return;
    // Never pull the page from under someone typing in or focused on the live part.
    if (live.contains(document.activeElement) && document.activeElement !== document.body) {
      again = true;
      return;
    }
    if (busy) { again = true; return; }
    busy = true;
    var url = document.body.getAttribute("data-page") || window.location.href;
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        if (fresh) {
          var kept = keep(live);
          live.innerHTML = fresh.innerHTML;
          restore(live, kept);
          refreshTimes(live);
          document.body.setAttribute("data-refreshed", String(Date.now()));
          var status = document.getElementById("live-status");
          if (status) status.textContent = "Updated at " + new Date().toLocaleTimeString();
        }
      })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) { again = false; setTimeout(reload, 500); }
      });
  }

  function listen() {
    var url = document.body.getAttribute("data-live");
    if (!url || !window.EventSource) return;
    var source = new EventSource(url);
    // Every open page hears the same event at once: spread their reloads over 1.5 s so the
    // daemon is not asked for them all in the same moment.
    function soon() { setTimeout(reload, Math.random() * 1500); }
    source.addEventListener("tickets", soon);
    source.addEventListener("subjects", soon);
  }

  document.addEventListener("focusout", function () {
    if (again) { again = false; setTimeout(reload, 300); }
  });
  document.addEventListener("DOMContentLoaded", function () {
    refreshTimes(document);
    setInterval(function () { refreshTimes(document); }, 30000);
    listen();
  });
})();
