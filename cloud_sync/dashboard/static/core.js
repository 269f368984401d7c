/* edgefleet dashboard: the token, calls to the /v1 API, DOM helpers, polling, the confirmation dialog.
 * Written for this project; no third-party code. The HTML pages carry no data: every value shown comes from the
 * coordinator's /v1 JSON API, called with the operator's token (kept in this tab's sessionStorage only). */
"use strict";

const EF = (() => {
  const TOKEN_KEY = "edgefleet.token";
  const NOTICE_KEY = "edgefleet.notice";

  const token = {
    get: () => sessionStorage.getItem(TOKEN_KEY),
    set: (t) => sessionStorage.setItem(TOKEN_KEY, t),
    clear: () => sessionStorage.removeItem(TOKEN_KEY),
  };

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  /** The error answer's detail as one line (a 422 may carry a list of refused fields). */
  function detailOf(body, fallback) {
    if (body && typeof body.detail === "string") return body.detail;
    if (body && Array.isArray(body.detail)) return body.detail.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
    return fallback;
  }

  /** Where the login page sends the operator back to: a dashboard path only (never another site). */
  function safeNext(next) {
    return typeof next === "string" && /^\/ui\/[^\\]*$/.test(next) && !next.startsWith("//") ? next : "/ui/";
  }

  function toLogin(notice) {
    if (notice) sessionStorage.setItem(NOTICE_KEY, notice);
    location.replace("/ui/login?next=" + encodeURIComponent(location.pathname + location.search));
  }

  /** Call the API with the token; JSON back. 401: the token is dropped and the operator signs in again. */
  async function api(path, { method = "GET", allow = [], tokenOverride = null } = {}) {
    const t = tokenOverride || token.get();
    if (!t) {
      toLogin("");
      throw new ApiError(401, "not signed in");
    }
    let r;
    try {
      r = await fetch(path, { method, cache: "no-store", headers: { Authorization: "Bearer " + t, Accept: "application/json" } });
    } catch (e) {
      throw new ApiError(0, "the coordinator cannot be reached");
    }
    let body = null;
    try {
      body = await r.json();
    } catch (e) {
      body = null;
    }
    if (r.status === 401 && !tokenOverride) {
      token.clear();
      toLogin("The coordinator refused the token (revoked or expired?): sign in again.");
      throw new ApiError(401, detailOf(body, "unauthorized"));
    }
    if (!r.ok && !allow.includes(r.status)) throw new ApiError(r.status, detailOf(body, `${r.status} ${r.statusText}`));
    return r.ok ? body : null;
  }

  let openapiDoc = null;

  /** The API's OpenAPI document (public), fetched once per page: which routes this coordinator offers. */
  function openapi() {
    if (!openapiDoc) {
      openapiDoc = fetch("/openapi.json", { cache: "no-store" }).then((r) => (r.ok ? r.json() : {})).catch(() => ({}));
    }
    return openapiDoc;
  }

  // -- DOM ------------------------------------------------------------------------------------------------------
  /** An element: h("a", {href, class, text, onclick}, ...children). Text is always text (never parsed as HTML). */
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    return dress(el, attrs, kids);
  }

  function dress(el, attrs, kids) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") el.textContent = String(v);
      else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }

  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  function fill(target, ...kids) {
    const el = typeof target === "string" ? document.getElementById(target) : target;
    if (el) el.replaceChildren(...kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false));
    return el;
  }

  /** A table: columns [{label, cell(row) -> node|text, cls}], rows; `empty` shown when there are none. */
  function table(columns, rows, { empty = "none", rowClass = null, id = null } = {}) {
    if (!rows.length) return h("p", { class: "muted" }, empty);
    return h("div", { class: "table-wrap" },
      h("table", { id },
        h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.cls }, c.label)))),
        h("tbody", {}, rows.map((r) => h("tr", { class: rowClass ? rowClass(r) : null, "data-key": r.__key },
          columns.map((c) => h("td", { class: c.cls }, c.cell(r))))))));
  }

  /** Key/value rows of an object (nested objects as JSON). */
  function kv(obj, { skip = [] } = {}) {
    const keys = Object.keys(obj || {}).filter((k) => !skip.includes(k));
    if (!keys.length) return h("p", { class: "muted" }, "nothing reported");
    return h("dl", { class: "kv" }, keys.map((k) => [h("dt", {}, k.replace(/_/g, " ")), h("dd", {}, plain(obj[k], k))]));
  }

  function plain(v, key = "") {
    if (typeof v === "number" && v > 1e9 && v < 1e10 && /(^|_| )(ts|seen|created|updated|reported|start|end|since|until)$/.test(key)) return when(v);
    if (typeof v === "number" && /bytes$/.test(key)) return bytes(v);
    if (v === null || v === undefined || v === "") return "—";
    if (Array.isArray(v)) return v.length ? v.map((x) => (typeof x === "object" ? JSON.stringify(x) : String(x))).join(", ") : "—";
    if (typeof v === "object") return JSON.stringify(v);
    if (typeof v === "number") return num(v);
    return String(v);
  }

  // -- formatting (pure) ------------------------------------------------------------------------------------------
  function num(v, digits = 4) {
    if (typeof v !== "number" || !Number.isFinite(v)) return "—";
    return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(digits)));
  }

  function pct(v) {
    return typeof v === "number" && Number.isFinite(v) ? `${Number((v * 100).toPrecision(3))}%` : "—";
  }

  function bytes(n) {
    if (typeof n !== "number" || !Number.isFinite(n)) return "—";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }

  /** "12 s ago", "5 min ago", ... for wall-clock seconds `ts` at `now` (seconds). */
  function ago(ts, now) {
    if (!ts) return "never";
    const s = Math.max(0, now - ts);
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }

  function when(ts) {
    if (!ts) return "—";
    const d = new Date(ts * 1000);
    return d.toLocaleString(undefined, { year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function short(id, n = 12) {
    return id && id.length > n ? id.slice(0, n) + "…" : id || "—";
  }

  const nowSeconds = () => Date.now() / 1000;

  // -- badges and links -------------------------------------------------------------------------------------------
  const BAD = new Set(["FAILED", "REJECTED", "ROLLED_BACK", "TIMED_OUT"]);
  const ENDED = new Set([...BAD, "SUCCEEDED", "CANCELED"]);

  function badge(state) {
    const s = String(state || "unknown");
    let tone = "neutral";
    if (["SUCCEEDED", "completed", "online", "deployed", "promoted", "succeeded", "finished", "done"].includes(s)) tone = "good";
    else if (BAD.has(s) || ["halted", "rolled_back", "offline", "canceled", "cancelled"].includes(s) || s.startsWith("failed")) tone = "bad";
    else if (["paused", "CANCELED", "QUEUED", "stopped", "not promoted"].includes(s)) tone = "warn";
    else if (["running", "IN_PROGRESS", "DOWNLOADING", "aggregated", "starting", "current"].includes(s)) tone = "busy";
    return h("span", { class: `badge ${tone}`, "data-state": s }, s.replace(/_/g, " "));
  }

  const enc = encodeURIComponent;
  const link = {
    device: (id) => h("a", { href: `/ui/devices/${enc(id)}`, class: "mono" }, id),
    deployment: (id, text) => h("a", { href: `/ui/deployments/${enc(id)}`, class: "mono" }, text || id),
    run: (id, text) => h("a", { href: `/ui/federated/${enc(id)}`, class: "mono" }, text || id),
  };

  /** A bar of parts [{n, cls, label}] out of `total`. */
  function bar(parts, total) {
    const el = h("div", { class: "bar", role: "img", "aria-label": parts.map((p) => `${p.n} ${p.label}`).join(", ") + ` of ${total}` });
    for (const p of parts) {
      if (!p.n || !total) continue;
      const seg = h("span", { class: `seg ${p.cls}`, title: `${p.n} ${p.label}` });
      seg.style.width = `${(100 * p.n) / total}%`;
      el.append(seg);
    }
    return el;
  }

  /** The drawing width for a chart in element `id` (its content box), 640 when it has none yet. */
  function widthOf(id) {
    const el = document.getElementById(id);
    return el && el.clientWidth ? el.clientWidth : 640;
  }

  /** A nested document as one level of "a · b" keys, for a key/value list. */
  function flat(obj, prefix = "", out = {}) {
    for (const [k, v] of Object.entries(obj || {})) {
      const key = prefix ? `${prefix} · ${k}` : k;
      if (v && typeof v === "object" && !Array.isArray(v)) flat(v, key, out);
      else out[key] = v;
    }
    return out;
  }

  /** The last path segment of the page's URL: the id a device, deployment or run page shows. */
  function pathId() {
    const parts = location.pathname.split("/").filter(Boolean);
    return decodeURIComponent(parts[parts.length - 1] || "");
  }

  // -- live updates -----------------------------------------------------------------------------------------------
  let lastOk = 0;

  function live(ok, note) {
    const el = document.getElementById("live");
    if (!el) return;
    if (ok) {
      lastOk = Date.now();
      el.textContent = "live · " + new Date().toLocaleTimeString();
      el.className = "live ok";
      el.title = "updated " + new Date().toLocaleTimeString();
    } else {
      el.textContent = "stale: " + note;
      el.className = "live stale";
    }
  }

  /** Run `fn` now and every `ms` milliseconds (while the tab is visible); the header shows whether it worked. */
  function poll(fn, ms) {
    let timer = null;
    let running = false;
    const run = async () => {
      if (running) return;
      running = true;
      try {
        await fn();
        live(true);
      } catch (e) {
        if (e.status !== 401) {
          live(false, e.message);
          console.warn("update failed:", e.message);
        }
      } finally {
        running = false;
        timer = setTimeout(run, document.hidden ? ms * 5 : ms);
      }
    };
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) {
        clearTimeout(timer);
        run();
      }
    });
    run();
    return { now: () => { clearTimeout(timer); run(); } };
  }

  function banner(text) {
    const el = document.getElementById("banner");
    if (!el) return;
    el.hidden = !text;
    el.textContent = text || "";
  }

  // -- confirmation -----------------------------------------------------------------------------------------------
  /** Ask before an action: resolves true only when the operator confirms in the dialog. */
  function confirmAction(title, text, yes) {
    const dlg = document.getElementById("confirm");
    fill("confirm-title", title);
    fill("confirm-text", text);
    fill("confirm-yes", yes || "Confirm");
    return new Promise((resolve) => {
      dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
      dlg.returnValue = "";
      dlg.showModal();
    });
  }

  function start() {
    const name = document.body.dataset.page;
    const out = document.getElementById("logout");
    if (out) out.addEventListener("click", () => {
      token.clear();
      location.replace("/ui/login");
    });
    if (name !== "login" && !token.get()) {
      toLogin("");
      return;
    }
    const page = EF.pages[name];
    if (page) page();
  }

  return {
    ApiError, api, token, safeNext, toLogin, NOTICE_KEY, h, dress, $, $$, fill, table, kv, plain, num, pct, bytes, ago,
    when, short, nowSeconds, BAD, ENDED, badge, link, bar, pathId, poll, live, banner, confirmAction, start, pages: {},
    enc, openapi, widthOf, flat,
  };
})();
