// riac-node operator UI: shared behaviour, the live queue and keyboard navigation.
// Plain JavaScript, no build step, no network beyond this node.
"use strict";

const RIAC = (window.RIAC = window.RIAC || {});

RIAC.csrf = () => {
  const m = document.querySelector('meta[name="csrf-token"]');
  return m ? m.content : "";
};

// True when a key press belongs to a form field, not to page navigation.
RIAC.typing = (e) => {
  const t = e.target;
  return e.ctrlKey || e.metaKey || e.altKey ||
    (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName)));
};

function ageText(ts) {
  const s = Math.max(0, (Date.now() - Date.parse(ts)) / 1000);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 129600) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " days ago";
}

RIAC.decorate = (root) => {
  root.querySelectorAll("time[data-ts]").forEach((t) => { t.title = ageText(t.dataset.ts); });
  root.querySelectorAll("[data-pct]").forEach((el) => { el.style.width = el.dataset.pct + "%"; });
  root.querySelectorAll("img.ref-thumb").forEach((img) => {
    img.addEventListener("error", () => {
      const d = document.createElement("div");
      d.className = "ref-thumb none";
      d.textContent = "no image on this node";
      img.replaceWith(d);
    }, { once: true });
  });
};

// ---------- queue ----------
function initQueue() {
  const table = document.getElementById("queue");
  if (!table) return;
  const tbody = table.tBodies[0];
  const live = document.getElementById("live");
  let selected = null; // scan id

  const rows = () => Array.from(tbody.querySelectorAll("tr.scan-row"));
  const select = (tr, scroll) => {
    rows().forEach((r) => r.classList.remove("selected"));
    if (!tr) { selected = null; return; }
    tr.classList.add("selected");
    selected = tr.dataset.scan;
    if (scroll) tr.scrollIntoView({ block: "nearest" });
  };
  const move = (d) => {
    const rs = rows();
    if (!rs.length) return;
    let i = rs.findIndex((r) => r.dataset.scan === selected);
    i = i < 0 ? 0 : Math.min(rs.length - 1, Math.max(0, i + d));
    select(rs[i], true);
  };
  tbody.addEventListener("click", (e) => {
    const tr = e.target.closest("tr.scan-row");
    if (tr && !e.target.closest("a")) location.href = tr.dataset.href;
  });
  document.addEventListener("keydown", (e) => {
    if (RIAC.typing(e)) return;
    const k = e.key;
    if (k === "j" || k === "ArrowDown") { move(1); e.preventDefault(); }
    else if (k === "k" || k === "ArrowUp") { move(-1); e.preventDefault(); }
    else if (k === "Enter" || k === "o") {
      const tr = rows().find((r) => r.dataset.scan === selected);
      if (tr) location.href = tr.dataset.href;
    } else if (k === "r") {
      const tr = rows().find((r) => r.classList.contains("needs-review"));
      if (tr) select(tr, true); else location.href = "/?review=needed";
    } else if (k === "/") {
      const f = document.querySelector('form.filters input[name="container"]');
      if (f) { f.focus(); e.preventDefault(); }
    }
  });
  const first = rows()[0];
  if (first) select(first, false);

  if (!table.dataset.live || !window.EventSource) {
    if (live) live.textContent = "";
    return;
  }
  let busy = false, again = false;
  const refresh = async () => {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const before = new Set(rows().map((r) => r.dataset.scan));
      const r = await fetch(table.dataset.rows, { headers: { Accept: "text/html" }, credentials: "same-origin" });
      if (r.status === 401 || r.redirected) { location.reload(); return; }
      if (!r.ok) return;
      tbody.innerHTML = await r.text();
      RIAC.decorate(tbody);
      let fresh = 0;
      rows().forEach((tr) => { if (!before.has(tr.dataset.scan)) { tr.classList.add("fresh"); fresh++; } });
      const keep = rows().find((tr) => tr.dataset.scan === selected) || rows()[0];
      select(keep, false);
      if (live && fresh) {
        live.classList.add("flash-new");
        live.textContent = "● " + fresh + " new";
        setTimeout(() => { live.classList.remove("flash-new"); live.textContent = "● live"; }, 4000);
      }
    } catch (_) { /* the stream reconnects; the next event refreshes */ }
    finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  };
  let firstEvent = true;
  const es = new EventSource("/api/v1/events");
  es.addEventListener("changed", () => {
    if (live) live.classList.add("on");
    // The first event only says the stream is up; the page already shows this state.
    if (firstEvent) { firstEvent = false; return; }
    refresh();
  });
  es.addEventListener("error", () => {
    if (live) { live.classList.remove("on"); live.textContent = "○ reconnecting"; }
    firstEvent = true;
    setTimeout(() => { if (live && es.readyState === 1) live.textContent = "● live"; }, 3000);
  });
  es.addEventListener("open", () => { if (live) { live.classList.add("on"); live.textContent = "● live"; } });
}

// ---------- scan page navigation ----------
function initScanNav() {
  if (!document.getElementById("nav-queue") && !document.getElementById("nav-scan")) return;
  const go = (id) => { const a = document.getElementById(id); if (a) location.href = a.href; };
  document.addEventListener("keydown", (e) => {
    if (RIAC.typing(e)) return;
    switch (e.key) {
      case "j": go("nav-older"); break;
      case "k": go("nav-newer"); break;
      case "q": go("nav-queue"); break;
      case "r": go("nav-review"); break;
      case "Escape": go("nav-scan"); break;
      case "t": {
        const a = document.querySelector('a[href$="/transit"]');
        if (a) location.href = a.href;
        break;
      }
      default: return;
    }
  });
  const form = document.getElementById("decision-form");
  if (form) {
    form.addEventListener("submit", (e) => {
      const note = form.querySelector("textarea[name=note]");
      if (note && note.value.trim().length < 3) {
        e.preventDefault();
        note.setCustomValidity("A note is required: what you saw and why.");
        note.reportValidity();
      }
    });
    form.querySelector("textarea[name=note]").addEventListener("input", (e) => e.target.setCustomValidity(""));
  }
}

// ---------- status page ----------
async function initStatus() {
  const box = document.getElementById("uplink");
  if (!box) return;
  const say = (html) => { box.innerHTML = html; };
  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
  try {
    const r = await fetch(box.dataset.src, { headers: { Accept: "application/json" } });
    if (r.status === 404) {
      say('<p class="muted" id="uplink-absent">This build has no MQTT uplink: verdicts wait in the outbox until one is installed.</p>');
      return;
    }
    if (!r.ok) { say('<p class="warn">The uplink did not answer (HTTP ' + r.status + ").</p>"); return; }
    const u = await r.json();
    const when = (t) => (t ? esc(String(t).replace("T", " ").replace(/\.\d+Z$/, " UTC")) : "never");
    const row = (id, k, v, warn) =>
      '<tr><th>' + esc(k) + '</th><td id="' + id + '"' + (warn ? ' class="warn"' : "") + ">" + v + "</td></tr>";
    if (!u.enabled) {
      say('<p class="warn" id="uplink-disabled">No broker is configured ([uplink] broker): verdicts wait in the outbox until one is.</p>');
      return;
    }
    const ob = u.outbox || {};
    const ep = u.entry_packages || {};
    const cmd = u.commands || {};
    const quota = ob.alert && ob.alert !== "ok";
    say('<table class="kv" id="uplink-state">' +
      row("uplink-conn", "Connection", esc(u.state) + " since " + when(u.state_since), u.state !== "connected") +
      row("uplink-broker", "Broker", esc(u.broker || "") + " as " + esc(u.client_id || "")) +
      row("uplink-last", "Last connected", when(u.last_connected_at)) +
      (u.last_error ? row("uplink-error", "Last error", esc(u.last_error), true) : "") +
      row("uplink-puback", "Last acknowledged", when(u.last_puback_at) + " (" + esc(u.acknowledged) + " since start)") +
      row("uplink-quota", "Outbox quota", (100 * (ob.used_fraction || 0)).toFixed(1) + "% used, " + esc(ob.alert || "ok"), quota) +
      row("uplink-entries", "Entry packages", esc(ep.received || 0) + " received, " + esc(ep.rejected || 0) + " refused, " + esc(ep.queued || 0) + " to send") +
      row("uplink-commands", "Commands", esc(cmd.received || 0) + " received, " + esc(cmd.failed || 0) + " failed" + (u.commands_require_signature ? " (signed only)" : " (UNSIGNED accepted: uplink.allow_unsigned_commands)"), !u.commands_require_signature) +
      row("uplink-key", "Node public key", '<span class="mono">' + esc(u.node_public_key || "none") + "</span>") +
      "</table>");
  } catch (e) {
    say('<p class="warn">Cannot reach the uplink status.</p>');
  }
}

document.addEventListener("DOMContentLoaded", () => {
  RIAC.decorate(document);
  initQueue();
  initScanNav();
  initStatus();
  // Status figures move on their own: refresh the page every 30 s unless the user is busy.
  if (document.body.dataset.page === "status") {
    setTimeout(() => { if (!document.querySelector(":focus")) location.reload(); }, 30000);
  }
});
