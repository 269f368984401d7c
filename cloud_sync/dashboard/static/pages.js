/* edgefleet dashboard: one renderer per page (body[data-page]). Written for this project; no third-party code.
 * `logic` holds the pure functions (data in, data out); the renderers fetch, call them and draw. */
"use strict";

(() => {
  const { api, h, fill, table, kv, badge, link, bar, num, pct, bytes, ago, when, short, enc, nowSeconds } = EF;

  // -- pure logic -------------------------------------------------------------------------------------------------
  const logic = {
    /** Devices counted by group and version: {groups, versions, count(group, version)}. */
    versionsByGroup(devices) {
      const counts = new Map();
      const groups = new Set();
      const versions = new Set();
      for (const d of devices) {
        const g = d.group || "(none)";
        const v = d.active_version || "(none)";
        groups.add(g);
        versions.add(v);
        counts.set(`${g}\u0000${v}`, (counts.get(`${g}\u0000${v}`) || 0) + 1);
      }
      const byName = (a, b) => a.localeCompare(b, undefined, { numeric: true });
      return {
        groups: [...groups].sort(byName),
        versions: [...versions].sort(byName),
        count: (g, v) => counts.get(`${g}\u0000${v}`) || 0,
      };
    },

    /** The rollouts an operator must see: running and paused ones, and halted ones that are still the newest of
     *  their group (nothing superseded them yet), newest first. */
    activeRollouts(deps) {
      const newest = new Map();
      for (const d of deps) if (!newest.has(d.group) || newest.get(d.group).created < d.created) newest.set(d.group, d);
      return deps
        .filter((d) => d.state === "running" || d.state === "paused" || (d.state === "halted" && newest.get(d.group) === d))
        .sort((a, b) => b.created - a.created);
    },

    /** A deployment's install jobs split for its progress bar. */
    jobParts(dep) {
      const c = dep.counts || {};
      const bad = [...EF.BAD].reduce((n, s) => n + (c[s] || 0), 0);
      const ok = c.SUCCEEDED || 0;
      const canceled = c.CANCELED || 0;
      const dispatched = Object.values(c).reduce((n, v) => n + v, 0);
      return [
        { n: ok, cls: "ok", label: "succeeded" },
        { n: bad, cls: "bad", label: "failed" },
        { n: canceled, cls: "warn", label: "canceled" },
        { n: dispatched - ok - bad - canceled, cls: "busy", label: "in progress" },
      ];
    },

    /** Whom a deployment targets, in words. */
    targetText(d) {
      const parts = [d.group ? `group ${d.group}` : "every group"];
      if ((d.tags || []).length) parts.push(`tags ${d.tags.join(", ")}`);
      if ((d.devices || []).length) parts.push(`devices ${d.devices.join(", ")}`);
      return parts.join(", ");
    },

    /** A deployment's plan in words (rate and min finished when the API gives them). */
    planText(d) {
      let text = `canary ${pct(d.canary)}, waves ${(d.waves || []).map(pct).join(", ")}, halt above ${pct(d.max_failure)} failed`;
      if (d.min_finished) text += ` once ${d.min_finished} job(s) ended`;
      if (d.rate) text += `, at most ${d.rate} device(s) a minute`;
      return text;
    },

    /** Jobs that went wrong (failed, rejected, rolled back, timed out), install and rollback jobs alike. */
    failing(jobs) {
      return (jobs || []).filter((j) => EF.BAD.has(j.status));
    },

    /** Which actions the deployment's state allows (the coordinator decides; this only greys out the obvious). */
    allowed(state, canCancel) {
      return {
        pause: state === "running",
        resume: state === "paused",
        cancel: canCancel && (state === "running" || state === "paused"),
        rollback: state !== "rolled_back" && state !== undefined,
      };
    },

    /** Whether the API's OpenAPI document has query parameter `name` on GET `path`. */
    offersParam(doc, path, name) {
      const op = doc && doc.paths && doc.paths[path] && doc.paths[path].get;
      return Boolean(op && (op.parameters || []).some((p) => p.name === name && p.in === "query"));
    },

    /** Whether the API's OpenAPI document offers a cancel action for deployments. */
    offersCancel(doc) {
      const paths = (doc && doc.paths) || {};
      if (Object.keys(paths).some((p) => /^\/v1\/deployments\/\{[^}]+\}\/cancel$/.test(p) && paths[p].post)) return true;
      const op = paths["/v1/deployments/{dep_id}/{action}"] && paths["/v1/deployments/{dep_id}/{action}"].post;
      const param = ((op && op.parameters) || []).find((p) => p.name === "action");
      const schema = (param && param.schema) || {};
      const values = (schema.enum || []).concat(...(schema.anyOf || []).map((s) => s.enum || []));
      return values.includes("cancel");
    },

    /** Per-round series of a federated run: [[round, value], ...] for each metric present. */
    roundSeries(rounds, keys) {
      return keys
        .map(([key, name, cls]) => ({ name, cls, points: rounds.map((r) => [r.round, r[key]]) }))
        .filter((s) => s.points.some(([, v]) => typeof v === "number" && Number.isFinite(v)));
    },

    /** What a version's lineage records of its compilation: the recipe (passes), the datasets and the accuracy
     *  gate; null when it records none of them. */
    compileReport(lineage) {
      if (!lineage) return null;
      const out = {};
      for (const k of ["recipe", "datasets", "gate", "source", "parent_version"]) if (lineage[k] !== undefined) out[k] = lineage[k];
      return Object.keys(out).length ? out : null;
    },

    /** Model versions from the artifact list (when the API has one), the deployments and the federated runs. */
    modelVersions(artifacts, deps, runs) {
      const rows = new Map();
      const key = (name, version, id) => id || `${name}\u0000${version}`;
      for (const a of artifacts || []) {
        const id = a.sha256 || a.file_id;
        rows.set(key(a.name, a.version, id), { ...a, artifact_id: id, deployments: (a.deployments || []).slice(), runs: [] });
      }
      for (const d of deps) {
        const k = key(d.name, d.version, d.artifact_id);
        if (!rows.has(k)) rows.set(k, { name: d.name, version: d.version, artifact_id: d.artifact_id, created: d.created, deployments: [], runs: [] });
        const row = rows.get(k);
        const known = row.deployments.find((x) => x.id === d.id);
        if (known) Object.assign(known, { group: d.group, state: d.state, created: d.created });
        else row.deployments.push({ id: d.id, group: d.group, state: d.state, created: d.created });
        if (!row.created) row.created = d.created;
      }
      for (const r of runs) {
        const gate = (r.result && r.result.gate) || {};
        const dep = (r.result && r.result.deployment) || {};
        if (!gate.version) continue;
        for (const row of rows.values()) {
          if (row.version === gate.version && (!dep.id || row.deployments.some((d) => d.id === dep.id))) row.runs.push(r);
        }
      }
      return [...rows.values()].sort((a, b) => (b.created || 0) - (a.created || 0));
    },
  };
  EF.logic = logic;

  const DEVICE_FIELDS = new Set(["fleet", "device_id", "tags", "online", "session", "first_seen", "last_seen", "active_version",
    "archive_sha256", "agent_version", "telemetry_seq", "claimed_tags", "group", "jobs", "telemetry_rejected",
    "telemetry_rate_limited", "inventory", "telemetry", "alerts", "recent", "quality"]);

  function stateNote(text) {
    return h("p", { class: "muted" }, text);
  }

  /** A device that serves its own (personal) head of a version: a --personalize run kept one for it. */
  function ownHead(q) {
    return q.head === "personal" ? h("span", { class: "small muted" }, " (own head)") : null;
  }

  /** How well versions serve devices (the devices' quality records): agreement with the version replaced, confidence,
   * PSI, labelled accuracy and the quality test's verdict; ``first`` names the first column (device or version). */
  function qualityTable(rows, first, opts) {
    const dash = "—";
    return table([
      first === "device"
        ? { label: "device", cell: (q) => [link.device(q.device_id), ownHead(q)] }
        : { label: "version", cell: (q) => [h("span", { class: "mono" }, q.version), ownHead(q)] },
      { label: "compared with", cell: (q) => h("span", { class: "mono" }, q.reference || dash) },
      { label: "inputs compared", cell: (q) => num(q.compared), cls: "num" },
      { label: "agreement", cell: (q) => (q.compared ? pct(q.agreement) : dash), cls: "num" },
      { label: "confidence", cell: (q) => (q.scored ? num(q.confidence, 3) : dash), cls: "num" },
      { label: "confidence shift", cell: (q) => (q.compared ? num(q.confidence_shift, 3) : dash), cls: "num" },
      { label: "PSI", cell: (q) => (q.compared ? num(q.psi, 3) : dash), cls: "num" },
      {
        label: "labelled accuracy",
        cell: (q) => (q.accuracy === null || q.accuracy === undefined ? dash : `${pct(q.accuracy)} of ${num(q.labelled)}`),
        cls: "num",
      },
      {
        label: "verdict",
        cell: (q) => (q.verdict
          ? [h("strong", {}, q.verdict), q.signal ? h("span", { class: "small muted" }, ` (${q.signal})`) : null]
          : dash),
      },
    ], rows.map((q) => ({ ...q, __key: `${q.device_id}:${q.version}` })),
    { rowClass: (q) => (q.verdict === "fail" ? "row-bad" : null), ...opts });
  }

  async function health() {
    try {
      const r = await fetch("/healthz", { cache: "no-store" });
      return r.ok ? await r.json() : null;
    } catch (e) {
      return null;
    }
  }

  function brokerBanner(hz) {
    EF.banner(hz && hz.broker_connected === false
      ? "The coordinator is disconnected from its MQTT broker: devices are shown as last known (they may show offline) " +
        "and no job reaches them until it reconnects."
      : "");
  }

  // -- login ------------------------------------------------------------------------------------------------------
  EF.pages.login = () => {
    const form = document.getElementById("login-form");
    const input = document.getElementById("token");
    const err = document.getElementById("login-error");
    const say = (text) => {
      err.hidden = !text;
      err.textContent = text || "";
    };
    say(sessionStorage.getItem(EF.NOTICE_KEY) || "");
    sessionStorage.removeItem(EF.NOTICE_KEY);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const t = input.value.trim();
      if (!t) return;
      const button = document.getElementById("login-submit");
      button.disabled = true;
      say("");
      try {
        const r = await fetch("/v1/federated/runs?limit=1", { cache: "no-store", headers: { Authorization: "Bearer " + t } });
        if (r.ok) {
          EF.token.set(t);
          location.replace(EF.safeNext(new URLSearchParams(location.search).get("next")));
          return;
        }
        let body = null;
        try {
          body = await r.json();
        } catch (e) {
          body = null;
        }
        say(r.status === 401 ? "The coordinator refused this token." : `${r.status}: ${(body && body.detail) || r.statusText}`);
      } catch (e) {
        say("The coordinator cannot be reached.");
      } finally {
        button.disabled = false;
      }
    });
  };

  // -- fleet overview ---------------------------------------------------------------------------------------------
  EF.pages.fleet = () => {
    let devices = [];
    let now = nowSeconds();
    const filterBox = document.getElementById("device-filter");

    const drawDevices = () => {
      const q = filterBox.value.trim().toLowerCase();
      const shown = devices.filter((d) => !q || [d.device_id, d.group, d.active_version, ...(d.tags || [])].some((v) => String(v || "").toLowerCase().includes(q)));
      fill("devices", table([
        { label: "device", cell: (d) => link.device(d.device_id) },
        { label: "state", cell: (d) => badge(d.online ? "online" : "offline") },
        { label: "last seen", cell: (d) => h("span", { title: when(d.last_seen) }, d.online ? "now" : ago(d.last_seen, now)) },
        { label: "group", cell: (d) => d.group || "—" },
        { label: "version", cell: (d) => h("span", { class: "mono" }, d.active_version || "—") },
        { label: "agent", cell: (d) => d.agent_version || "—" },
        { label: "tags", cell: (d) => (d.tags || []).map((t) => h("span", { class: "tag" }, t)) },
      ], shown.map((d) => ({ ...d, __key: d.device_id })), { empty: devices.length ? "no device matches" : "no device has connected yet", id: "device-table" }));
    };
    filterBox.addEventListener("input", drawDevices);

    EF.poll(async () => {
      const [devs, deps, tel, hz] = await Promise.all([api("/v1/devices"), api("/v1/deployments"), api("/v1/telemetry"), health()]);
      now = nowSeconds();
      devices = devs.slice().sort((a, b) => (a.group || "").localeCompare(b.group || "") || a.device_id.localeCompare(b.device_id));
      brokerBanner(hz);
      const online = devs.filter((d) => d.online).length;
      const active = logic.activeRollouts(deps);
      const drift = (tel.alerts || []).filter((a) => a.kind === "drift");
      const recentDrift = drift.filter((a) => now - a.ts < 86400);
      const card = (label, value, cls, id) => h("div", { class: `stat ${cls || ""}`, id }, h("span", { class: "value" }, value), h("span", { class: "label" }, label));
      fill("summary",
        card("devices", devs.length, "", "stat-devices"),
        card("online", online, online ? "good" : "", "stat-online"),
        card("offline", devs.length - online, devs.length - online ? "bad" : "", "stat-offline"),
        card("active rollouts", active.filter((d) => d.state !== "halted").length, "", "stat-rollouts"),
        card("halted rollouts", active.filter((d) => d.state === "halted").length, active.some((d) => d.state === "halted") ? "bad" : "", "stat-halted"),
        card("drift alerts (24 h)", recentDrift.length, recentDrift.length ? "warn" : "", "stat-drift"),
        card("broker", hz ? (hz.broker_connected ? "connected" : "disconnected") : "unknown", hz && hz.broker_connected ? "good" : "bad", "stat-broker"));
      fill("rollouts", table([
        { label: "deployment", cell: (d) => link.deployment(d.id) },
        { label: "model", cell: (d) => `${d.name} ${d.version}` },
        { label: "targets", cell: (d) => logic.targetText(d) },
        { label: "state", cell: (d) => badge(d.state) },
        { label: "progress", cell: (d) => h("div", { class: "progress" }, bar(logic.jobParts(d), d.targets), h("span", { class: "small" }, `${d.done}/${d.targets}`)) },
      ], active.map((d) => ({ ...d, __key: d.id })), { empty: "no rollout in progress" }));
      fill("alerts", table([
        { label: "device", cell: (a) => link.device(a.device_id) },
        { label: "version", cell: (a) => a.version || "—" },
        { label: "PSI max", cell: (a) => num(a.data.psi_max, 3), cls: "num" },
        { label: "threshold", cell: (a) => num(a.data.threshold, 3), cls: "num" },
        { label: "when", cell: (a) => h("span", { title: when(a.ts) }, ago(a.ts, now)) },
      ], drift.slice(0, 12).map((a) => ({ ...a, __key: String(a.id) })), { empty: "no drift alert" }));
      const v = logic.versionsByGroup(devs);
      fill("versions", v.groups.length ? h("div", { class: "table-wrap" }, h("table", { id: "versions-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "group"), v.versions.map((ver) => h("th", { class: "num mono" }, ver)))),
        h("tbody", {}, v.groups.map((g) => h("tr", { "data-key": g }, h("th", {}, g),
          v.versions.map((ver) => h("td", { class: "num" }, v.count(g, ver) || "·"))))))) : stateNote("no device yet"));
      drawDevices();
    }, 2000);
  };

  // -- device -----------------------------------------------------------------------------------------------------
  EF.pages.device = () => {
    const id = EF.pathId();
    fill("title", h("span", { class: "mono" }, id));
    document.title = `${id} · edgefleet`;
    EF.poll(async () => {
      const [d, hz] = await Promise.all([api(`/v1/devices/${enc(id)}`, { allow: [404] }), health()]);
      brokerBanner(hz);
      const now = nowSeconds();
      if (!d) {
        fill("head", h("p", { class: "error" }, `The coordinator knows no device ${id}.`));
        return;
      }
      const doc = await EF.openapi();
      const windowed = logic.offersParam(doc, "/v1/telemetry", "window");
      const q = new URLSearchParams();
      if (d.group) q.set("group", d.group);
      if (windowed) q.set("window", "1h");
      const tel = await api(`/v1/telemetry${q.toString() ? "?" + q : ""}`);
      const extra = Object.fromEntries(Object.entries(d).filter(([k]) => !DEVICE_FIELDS.has(k)));
      fill("head", h("dl", { class: "kv wide" },
        h("dt", {}, "state"), h("dd", {}, badge(d.online ? "online" : "offline"), " ", d.online ? `session ${d.session}` : `last seen ${ago(d.last_seen, now)}`),
        h("dt", {}, "group"), h("dd", {}, d.group || "—"),
        h("dt", {}, "tags"), h("dd", {}, (d.tags || []).length ? d.tags.map((t) => h("span", { class: "tag" }, t)) : "—"),
        h("dt", {}, "version"), h("dd", { class: "mono", id: "device-version" }, d.active_version || "—"),
        h("dt", {}, "bundle"), h("dd", { class: "mono", title: d.archive_sha256 }, short(d.archive_sha256, 16)),
        h("dt", {}, "first seen"), h("dd", {}, when(d.first_seen)),
        h("dt", {}, "last seen"), h("dd", {}, when(d.last_seen))),
        Object.keys(extra).length ? kv(extra) : null);
      fill("quality", qualityTable(d.quality || [], "version",
        { empty: "no quality report from this device yet", id: "quality-table" }));
      const inv = { agent_version: d.agent_version, claimed_tags: d.claimed_tags, ...(d.inventory || {}) };
      fill("inventory", kv(EF.flat(inv)), d.inventory ? null : stateNote("The coordinator reports no further inventory (OS, architecture, free disk) for this device."));
      const jobs = (d.jobs || []).slice().sort((a, b) => b.created - a.created);
      fill("jobs", table([
        { label: "when", cell: (j) => h("span", { title: when(j.created) }, when(j.updated || j.created)) },
        { label: "deployment", cell: (j) => link.deployment(j.deployment_id) },
        { label: "action", cell: (j) => j.action },
        { label: "from", cell: (j) => h("span", { class: "mono" }, j.from_version || "—") },
        { label: "status", cell: (j) => badge(j.status) },
        { label: "step", cell: (j) => j.step || "—" },
        { label: "reason", cell: (j) => [j.reason || "—", j.message ? h("div", { class: "small muted" }, j.message) : null] },
      ], jobs.map((j) => ({ ...j, __key: j.job_id })), { empty: "no job yet", id: "job-table", rowClass: (j) => (EF.BAD.has(j.status) ? "row-bad" : null) }));
      const rows = (tel.rows || []).filter((r) => !d.active_version || r.version === d.active_version || (d.jobs || []).some((j) => j.from_version === r.version));
      fill("telemetry",
        h("dl", { class: "kv" },
          h("dt", {}, "telemetry records acknowledged"), h("dd", {}, num(d.telemetry_seq)),
          h("dt", {}, "rejected batches"), h("dd", {}, num(d.telemetry_rejected ?? 0)),
          h("dt", {}, "rate-limited batches"), h("dd", {}, num(d.telemetry_rate_limited ?? 0))),
        d.recent ? [h("h3", {}, "latest report from the device"), kv(EF.flat(d.recent))] : null,
        d.telemetry ? [h("h3", {}, "telemetry"), kv(EF.flat(d.telemetry))] : null,
        h("h3", {}, `group ${d.group || "—"}, by version`),
        table([
          { label: "version", cell: (r) => h("span", { class: "mono" }, r.version) },
          { label: "kind", cell: (r) => r.kind },
          { label: "records", cell: (r) => num(r.records), cls: "num" },
          { label: "predictions", cell: (r) => num(r.predictions), cls: "num" },
          { label: "errors", cell: (r) => num(r.errors), cls: "num" },
          { label: "invalid inputs", cell: (r) => num(r.invalid), cls: "num" },
        ], rows, { empty: "no telemetry from this group yet" }),
        tel.window ? [h("h3", {}, `group ${d.group || "—"}, last hour`), table([
          { label: "version", cell: (r) => h("span", { class: "mono" }, r.version) },
          { label: "predictions", cell: (r) => num(r.predictions), cls: "num" },
          { label: "errors", cell: (r) => num(r.errors), cls: "num" },
          { label: "error rate", cell: (r) => pct(r.error_rate), cls: "num" },
          { label: "invalid inputs", cell: (r) => num(r.invalid), cls: "num" },
          { label: "p50 latency", cell: (r) => (r.p50_ms === null ? "—" : `${num(r.p50_ms, 3)} ms`), cls: "num" },
          { label: "p95 latency", cell: (r) => (r.p95_ms === null ? "—" : `${num(r.p95_ms, 3)} ms`), cls: "num" },
        ], tel.window.rows || [], { empty: "nothing in the last hour", id: "window-table" })] : null);
      const drift = (d.alerts || tel.alerts || []).filter((a) => a.device_id === d.device_id && a.kind === "drift").sort((a, b) => a.ts - b.ts);
      const threshold = drift.length ? drift[drift.length - 1].data.threshold : null;
      fill("drift", drift.length ? [
        Charts.chart([
          { name: "PSI max", cls: "s-drift", points: drift.map((a) => [a.ts, a.data.psi_max]) },
          { name: "PSI mean", cls: "s-mean", points: drift.map((a) => [a.ts, a.data.psi_mean]) },
          ...(typeof threshold === "number"
            ? [{ name: "threshold", cls: "s-threshold", points: [[drift[0].ts, threshold], [drift[drift.length - 1].ts, threshold]] }]
            : []),
        ], {
          title: "drift scores (population stability index) of this device's alerts", xFormat: Charts.clock, xTicks: Charts.timeTicks,
          yMin: 0, yFormat: (v) => num(v, 2), height: 180, width: EF.widthOf("drift"),
        }),
        table([
          { label: "when", cell: (a) => when(a.ts) },
          { label: "version", cell: (a) => a.version },
          { label: "PSI max", cell: (a) => num(a.data.psi_max, 3), cls: "num" },
          { label: "worst feature", cell: (a) => num(a.data.worst_feature), cls: "num" },
          { label: "mean shift (z)", cell: (a) => num(a.data.mean_shift_z, 3), cls: "num" },
        ], drift.slice().reverse()),
      ] : stateNote("no drift alert from this device"));
    }, 2000);
  };

  // -- deployments ------------------------------------------------------------------------------------------------
  EF.pages.deployments = () => {
    EF.poll(async () => {
      const deps = (await api("/v1/deployments")).slice().sort((a, b) => b.created - a.created);
      fill("deployments", table([
        { label: "deployment", cell: (d) => link.deployment(d.id) },
        { label: "model", cell: (d) => `${d.name} ${d.version}` },
        { label: "targets", cell: (d) => logic.targetText(d) },
        { label: "state", cell: (d) => badge(d.state) },
        { label: "progress", cell: (d) => h("div", { class: "progress" }, bar(logic.jobParts(d), d.targets), h("span", { class: "small" }, `${d.done}/${d.targets}`)) },
        { label: "created", cell: (d) => when(d.created) },
        { label: "reason", cell: (d) => d.reason || "" },
      ], deps.map((d) => ({ ...d, __key: d.id })), { empty: "nothing deployed yet" }));
    }, 2000);
  };

  const CONFIRM = {
    pause: ["Pause this rollout?", "No further stage starts and no further device gets the job until you resume. Jobs already sent go on.", "Pause"],
    resume: ["Resume this rollout?", "The rollout goes on where it stopped: the next stage starts when the current one has ended.", "Resume"],
    cancel: ["Cancel this rollout?",
      "The rollout stops for good: devices that have not started the job do not get it. Devices that installed it keep it.",
      "Cancel the rollout"],
    rollback: ["Roll back this rollout?",
      "Every device that installed this version is ordered back to the version it ran before, and queued jobs are canceled.",
      "Roll back"],
  };

  EF.pages.deployment = () => {
    const id = EF.pathId();
    fill("title", "Deployment ", h("span", { class: "mono" }, id));
    document.title = `${id} · edgefleet`;
    let dep = null;
    let canCancel = false;
    const buttons = EF.$$("#actions button");
    const result = document.getElementById("action-result");

    const arm = () => {
      const ok = logic.allowed(dep && dep.state, canCancel);
      for (const b of buttons) {
        b.disabled = !dep || !ok[b.dataset.action];
        if (b.dataset.action === "cancel") b.hidden = !canCancel;
      }
    };

    EF.openapi().then((doc) => {
      canCancel = logic.offersCancel(doc);
      arm();
    });

    let poller = null;
    for (const b of buttons) {
      b.addEventListener("click", async () => {
        const action = b.dataset.action;
        const [title, text, yes] = CONFIRM[action];
        const before = dep ? dep.state : "";
        if (!(await EF.confirmAction(title, `${dep.name} ${dep.version} to ${logic.targetText(dep)}: ${text}`, yes))) {
          result.textContent = `${action}: not confirmed, nothing done`;
          result.className = "note";
          return;
        }
        buttons.forEach((x) => { x.disabled = true; });
        try {
          const after = await api(`/v1/deployments/${enc(id)}/${action}`, { method: "POST" });
          dep = after;
          const changed = after.state !== before;
          const now = after.state.replace(/_/g, " ");
          result.textContent = changed ? `${action}: the deployment is now ${now}` : `${action}: nothing changed, the deployment is ${now}`;
          result.className = changed ? "note good" : "note warn";
        } catch (e) {
          result.textContent = `${action} refused: ${e.message}`;
          result.className = "note bad";
        }
        if (poller) poller.now();
      });
    }

    poller = EF.poll(async () => {
      const [d, p] = await Promise.all([api(`/v1/deployments/${enc(id)}`, { allow: [404] }), api(`/v1/deployments/${enc(id)}/progress`, { allow: [404] })]);
      if (!d || !p) {
        fill("head", h("p", { class: "error" }, `The coordinator knows no deployment ${id}.`));
        return;
      }
      dep = d;
      arm();
      const now = nowSeconds();
      document.body.dataset.state = d.state;
      fill("head",
        h("div", { class: "headline" }, h("span", { class: "model" }, `${d.name} ${d.version}`), " → ", logic.targetText(d), " ",
          h("span", { id: "dep-state" }, badge(d.state))),
        d.reason ? h("p", { class: d.state === "halted" ? "reason bad" : "reason", id: "dep-reason" }, d.reason) : null,
        h("div", { class: "progress big" }, bar(logic.jobParts(d), d.targets), h("span", { id: "dep-done" }, `${d.done} of ${d.targets} device(s) done`)),
        h("dl", { class: "kv wide" },
          h("dt", {}, "plan"), h("dd", {}, logic.planText(d)),
          h("dt", {}, "stage"),
          h("dd", { id: "dep-stage" }, p.stages.length ? `${Math.max(0, d.stage) + 1} of ${p.stages.length}${d.stage < 0 ? " (not started)" : ""}` : "—"),
          h("dt", {}, "job timeout"), h("dd", {}, `${num(d.job_timeout)} s`),
          h("dt", {}, "quality probation"), h("dd", { id: "dep-quality" }, Object.keys(d.quality || {}).length
            ? Object.entries(d.quality).map(([k, v]) => `${k}=${v}`).join(", ") : "the devices' own settings"),
          h("dt", {}, "artifact"), h("dd", { class: "mono", title: d.artifact_id }, short(d.artifact_id, 16)),
          h("dt", {}, "created"), h("dd", {}, when(d.created)),
          h("dt", {}, "updated"), h("dd", {}, `${when(d.updated)} (${ago(d.updated, now)})`)));
      const bad = logic.failing(d.jobs);
      const failing = document.getElementById("failing");
      failing.hidden = !bad.length && d.state !== "halted";
      fill("failing-list", table([
        { label: "device", cell: (j) => link.device(j.device_id) },
        { label: "action", cell: (j) => j.action },
        { label: "status", cell: (j) => badge(j.status) },
        { label: "step", cell: (j) => j.step || "—" },
        {
          label: "reason",
          cell: (j) => [h("span", { class: "reason-text" }, j.reason || "no reason reported"), j.message ? h("div", { class: "small" }, j.message) : null],
        },
      ], bad.map((j) => ({ ...j, __key: j.device_id })), { empty: "no device failed (see the reason above)", id: "failing-table" }));
      fill("stages", h("ol", { class: "stages" }, p.stages.map((s) => h("li", { class: `stage ${s.state}`, "data-stage": s.index },
        h("div", { class: "stage-head" }, h("strong", {}, s.label), " ", h("span", { class: "small" }, `${s.size} device(s)`), " ", badge(s.state)),
        bar([{ n: s.succeeded, cls: "ok", label: "succeeded" }, { n: s.failed, cls: "bad", label: "failed" }, { n: s.canceled, cls: "warn", label: "canceled" },
          { n: s.dispatched - s.succeeded - s.failed - s.canceled, cls: "busy", label: "in progress" }], Math.max(s.size, s.dispatched)),
        h("div", { class: "small" }, `${s.dispatched} dispatched · ${s.succeeded} succeeded · ${s.failed} failed`)))));
      const ended = ["completed", "halted", "rolled_back", "canceled"].includes(d.state);
      const last = p.timeline.length ? p.timeline[p.timeline.length - 1].ts : p.created;
      const xMax = ended ? Math.max(last, d.updated) : Math.max(p.now, last);
      fill("chart", Charts.chart([
        { name: "dispatched", cls: "s-dispatched", points: p.timeline.map((t) => [t.ts, t.dispatched]) },
        { name: "succeeded", cls: "s-succeeded", points: p.timeline.map((t) => [t.ts, t.succeeded]) },
        { name: "failed", cls: "s-failed", points: p.timeline.map((t) => [t.ts, t.failed]) },
      ], {
        title: "install jobs over time", step: true, width: EF.widthOf("chart"), integer: true, yMin: 0, yMax: Math.max(1, p.targets), xMin: p.created, xMax,
        xFormat: Charts.clock, xTicks: Charts.timeTicks, markers: p.markers.map((m) => ({ x: m.ts, label: `${m.kind} (stage ${m.stage + 1}) ${m.detail}`, cls: m.kind })),
      }));
      fill("quality", qualityTable(d.device_quality || [], "device",
        { empty: "no device has reported the quality of this version yet", id: "quality-table" }));
      const jobs = (d.jobs || []).slice().sort((a, b) => a.stage - b.stage || a.device_id.localeCompare(b.device_id) || a.action.localeCompare(b.action));
      fill("devices", table([
        { label: "device", cell: (j) => link.device(j.device_id) },
        { label: "stage", cell: (j) => (p.stages[j.stage] ? p.stages[j.stage].label : String(j.stage + 1)) },
        { label: "action", cell: (j) => j.action },
        { label: "status", cell: (j) => badge(j.status) },
        { label: "step", cell: (j) => j.step || "—" },
        { label: "reason", cell: (j) => [j.reason || "", j.message ? h("div", { class: "small muted" }, j.message) : null] },
      ], jobs.map((j) => ({ ...j, __key: `${j.device_id}:${j.action}` })),
      { empty: "no job dispatched yet", id: "job-table", rowClass: (j) => (EF.BAD.has(j.status) ? "row-bad" : null) }));
      fill("events", table([
        { label: "when", cell: (e) => when(e.ts) },
        { label: "event", cell: (e) => e.kind },
        { label: "stage", cell: (e) => String(e.stage + 1) },
        { label: "detail", cell: (e) => e.detail || "" },
      ], (d.events || []).slice().reverse(), { empty: "no event yet" }));
    }, 1000);
  };

  // -- federated runs ---------------------------------------------------------------------------------------------
  const lastMetric = (r, key) => {
    const rounds = r.round_metrics || [];
    for (let i = rounds.length - 1; i >= 0; i -= 1) if (typeof rounds[i][key] === "number") return rounds[i][key];
    return null;
  };

  EF.pages.runs = () => {
    EF.poll(async () => {
      const [runs, retrain] = await Promise.all([api("/v1/federated/runs?limit=200"), api("/v1/retrain")]);
      fill("runs", table([
        { label: "run", cell: (r) => link.run(r.id) },
        { label: "group", cell: (r) => r.group },
        { label: "status", cell: (r) => badge(r.status) },
        { label: "strategy", cell: (r) => r.strategy },
        { label: "rounds", cell: (r) => `${r.rounds_done}/${r.rounds}` },
        { label: "accuracy", cell: (r) => pct(lastMetric(r, "central_accuracy") ?? lastMetric(r, "eval_accuracy")), cls: "num" },
        { label: "gate", cell: (r) => (r.result && r.result.gate ? badge(r.result.gate.promoted ? "promoted" : "not promoted") : "—") },
        { label: "started by", cell: (r) => `${r.trigger}${r.reason ? ": " + r.reason : ""}` },
        { label: "created", cell: (r) => when(r.created) },
      ], runs.map((r) => ({ ...r, __key: r.id })), { empty: "no federated run yet" }));
      fill("retrain", table([
        { label: "group", cell: (r) => r.group },
        { label: "on drift", cell: (r) => (r.on_drift ? "starts a run" : "off") },
        { label: "policy", cell: (r) => EF.plain(r.policy) },
        { label: "updated", cell: (r) => when(r.updated) },
      ], retrain, { empty: "no group retrains on drift" }));
    }, 3000);
  };

  EF.pages.run = () => {
    const id = EF.pathId();
    fill("title", "Federated run ", h("span", { class: "mono" }, id));
    document.title = `run ${id} · edgefleet`;
    EF.poll(async () => {
      const r = await api(`/v1/federated/runs/${enc(id)}`, { allow: [404] });
      if (!r) {
        fill("head", h("p", { class: "error" }, `The coordinator knows no federated run ${id}.`));
        return;
      }
      const rounds = (r.round_metrics || []).slice().sort((a, b) => a.round - b.round);
      fill("head", h("dl", { class: "kv wide" },
        h("dt", {}, "status"), h("dd", { id: "run-status" }, badge(r.status)),
        h("dt", {}, "group"), h("dd", {}, r.group),
        h("dt", {}, "strategy"), h("dd", {}, r.strategy),
        h("dt", {}, "rounds"), h("dd", {}, `${r.rounds_done} of ${r.rounds}`, " ", bar([{ n: r.rounds_done, cls: "ok", label: "rounds done" }], r.rounds)),
        h("dt", {}, "started by"), h("dd", {}, `${r.trigger}${r.reason ? ": " + r.reason : ""}`),
        h("dt", {}, "Flower run"), h("dd", { class: "mono" }, r.flower_run_id || "—"),
        h("dt", {}, "created"), h("dd", {}, when(r.created)),
        h("dt", {}, "updated"), h("dd", {}, when(r.updated))));
      const xo = {
        width: EF.widthOf("loss"), integerX: true, xFormat: (v) => `round ${v}`, height: 200,
        xMin: rounds.length ? Math.min(1, rounds[0].round) : 1, xMax: Math.max(r.rounds, rounds.length ? rounds[rounds.length - 1].round : 1),
      };
      const losses = [["train_loss", "train loss", "s-train"], ["eval_loss", "evaluation loss", "s-eval"], ["central_loss", "central loss", "s-central"]];
      const accuracies = [["train_accuracy", "train accuracy", "s-train"], ["eval_accuracy", "evaluation accuracy", "s-eval"],
        ["central_accuracy", "central accuracy", "s-central"]];
      fill("loss", Charts.chart(logic.roundSeries(rounds, losses),
        { ...xo, title: "loss by round", yMin: 0, yFormat: (v) => num(v, 3), empty: "no loss reported yet" }));
      fill("accuracy", Charts.chart(logic.roundSeries(rounds, accuracies),
        { ...xo, title: "accuracy by round", yMin: 0, yMax: 1, yFormat: pct, empty: "no accuracy reported yet" }));
      const gate = (r.result && r.result.gate) || null;
      fill("gate", gate ? [
        h("p", { id: "gate-verdict" }, badge(gate.promoted ? "promoted" : "not promoted"), " ", gate.reason || ""),
        h("dl", { class: "kv" },
          h("dt", {}, "candidate accuracy"), h("dd", {}, pct(gate.candidate_accuracy)),
          h("dt", {}, "deployed accuracy"), h("dd", {}, pct(gate.deployed_accuracy)),
          h("dt", {}, "margin"), h("dd", {}, pct(gate.margin)),
          h("dt", {}, "signed version"), h("dd", { class: "mono" }, gate.version || "—")),
      ] : stateNote(r.rounds_done < r.rounds ? "the gate runs after the last round" : "no gate result was recorded"));
      const dep = (r.result && r.result.deployment) || null;
      const steps = [
        h("li", {}, h("strong", {}, "started"), ` by ${r.trigger}${r.reason ? ` (${r.reason})` : ""} for group ${r.group}`),
        h("li", {}, h("strong", {}, "trained"), ` ${r.rounds_done} of ${r.rounds} round(s), ${r.strategy}`, r.flower_run_id ? `, Flower run ${r.flower_run_id}` : ""),
        gate ? h("li", {}, h("strong", {}, "gated"), ` ${gate.promoted ? "promoted" : "not promoted"}${gate.version ? ` as version ${gate.version}` : ""}`) : null,
        dep ? h("li", {}, h("strong", {}, "deployed"), " as ", link.deployment(dep.id), ` to group ${dep.group}`) : null,
      ];
      fill("lineage", h("ol", { class: "lineage" }, steps), Object.keys(r.config || {}).length ? [h("h3", {}, "configuration"), kv(r.config)] : null,
        r.result && r.result.privacy ? [h("h3", {}, "privacy"), kv(r.result.privacy)] : null);
      fill("rounds", table([
        { label: "round", cell: (x) => String(x.round), cls: "num" },
        { label: "devices", cell: (x) => num(x.participants), cls: "num" },
        { label: "failures", cell: (x) => num(x.failures), cls: "num" },
        { label: "declined", cell: (x) => num(x.declined), cls: "num" },
        { label: "examples", cell: (x) => num(x.examples), cls: "num" },
        { label: "train loss", cell: (x) => num(x.train_loss, 4), cls: "num" },
        { label: "eval loss", cell: (x) => num(x.eval_loss, 4), cls: "num" },
        { label: "eval accuracy", cell: (x) => pct(x.eval_accuracy), cls: "num" },
        { label: "central accuracy", cell: (x) => pct(x.central_accuracy), cls: "num" },
        { label: "seconds", cell: (x) => num(x.seconds, 3), cls: "num" },
      ], rounds.map((x) => ({ ...x, __key: String(x.round) })), { empty: "no round has ended yet", id: "round-table" }));
    }, 2000);
  };

  // -- models -----------------------------------------------------------------------------------------------------
  EF.pages.models = () => {
    let selected = null;
    let rows = [];
    let listed = false;
    const detail = () => {
      const row = rows.find((x) => (x.artifact_id || `${x.name} ${x.version}`) === selected);
      const card = document.getElementById("detail-card");
      card.hidden = !row;
      if (!row) return;
      fill("detail-title", `${row.name} ${row.version}`);
      const lineage = row.lineage && Object.keys(row.lineage).length ? row.lineage : null;
      const report = row.compile_report || row.report || logic.compileReport(lineage);
      fill("detail",
        h("dl", { class: "kv wide" },
          h("dt", {}, "artifact"), h("dd", { class: "mono" }, row.artifact_id || "—"),
          h("dt", {}, "size"), h("dd", {}, bytes(row.size)),
          h("dt", {}, "registered"), h("dd", {}, when(row.created))),
        h("h3", {}, "lineage"),
        lineage ? kv(lineage, { skip: ["recipe", "datasets", "gate"] }) : null,
        row.runs.length
          ? h("ul", {}, row.runs.map((r) => h("li", {}, "from federated run ", link.run(r.id), ` (group ${r.group}, ${r.rounds_done} round(s), ${r.strategy})`)))
          : null,
        lineage || row.runs.length ? null : stateNote("the API reports no lineage for this version"),
        h("h3", {}, "compile report (recipe, datasets, accuracy gate)"),
        report ? kv(report) : stateNote("no compile recipe or gate is recorded in this version's lineage"),
        h("h3", {}, "deployments"),
        table([
          { label: "deployment", cell: (d) => link.deployment(d.id) },
          { label: "group", cell: (d) => d.group || "every group" },
          { label: "state", cell: (d) => badge(d.state) },
          { label: "created", cell: (d) => when(d.created) },
        ], row.deployments, { empty: "never deployed" }));
    };
    EF.poll(async () => {
      const doc = await EF.openapi();
      const offered = Boolean(doc.paths && doc.paths["/v1/artifacts"] && doc.paths["/v1/artifacts"].get);
      const [artifacts, deps, runs] = await Promise.all([offered ? api("/v1/artifacts") : null, api("/v1/deployments"), api("/v1/federated/runs?limit=200")]);
      const list = Array.isArray(artifacts) ? artifacts : (artifacts && Array.isArray(artifacts.artifacts) ? artifacts.artifacts : null);
      listed = list !== null;
      rows = logic.modelVersions(list, deps, runs);
      fill("models", listed ? null : stateNote("This coordinator has no artifact list (/v1/artifacts): versions are those deployed."), table([
        { label: "model", cell: (r) => r.name },
        { label: "version", cell: (r) => h("span", { class: "mono" }, r.version) },
        { label: "artifact", cell: (r) => h("span", { class: "mono", title: r.artifact_id }, short(r.artifact_id, 12)) },
        { label: "size", cell: (r) => bytes(r.size), cls: "num" },
        { label: "registered", cell: (r) => when(r.created) },
        { label: "deployed to", cell: (r) => r.deployments.map((d) => [link.deployment(d.id, d.group), " ", badge(d.state), " "]) },
        { label: "from run", cell: (r) => (r.runs.length ? r.runs.map((x) => link.run(x.id)) : "—") },
        {
          label: "",
          cell: (r) => h("button", { type: "button", class: "quiet small", onclick: () => { selected = r.artifact_id || `${r.name} ${r.version}`; detail(); } },
            "details"),
        },
      ], rows.map((r) => ({ ...r, __key: r.artifact_id })), { empty: "no model registered yet", id: "model-table" }));
      detail();
    }, 3000);
  };

  EF.start();
})();
