// warmgw status page: polls GET admin/v1/status every second (and admin/v1/profile every
// few seconds) with the operator's bearer token and draws it. Plain DOM, no library, no
// build step; all data goes in as text.
"use strict";

(() => {
  const API = "admin/v1/";
  const TOKEN_KEY = "warmgw.adminToken";
  const POLL_MS = 1000;
  const PROFILE_MS = 5000; // the traffic profile changes slowly
  const TOP_SHAPES = 10;
  const WINDOW_S = 120; // chart window
  const CHARTED = new Set(["ramping", "ready"]);
  const SERIES_COLORS = [
    "#2563eb", "#db2777", "#0d9488", "#ea580c", "#7c3aed", "#65a30d", "#0891b2", "#b45309",
    "#4f46e5", "#be123c",
  ];
  const POOL_COLORS = {
    blue: "#2563eb", green: "#16a34a", red: "#dc2626", purple: "#9333ea",
    orange: "#ea580c", yellow: "#ca8a04", canary: "#ca8a04",
  };
  const POOL_FALLBACK = ["#0f766e", "#9333ea", "#c2410c", "#475569", "#be185d"];

  class AuthError extends Error {}

  const app = {
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    gen: 0, // bumped on sign-in and sign-out, so a stale poll loop stops
    timer: 0,
    last: null, // the last status seen
    lastOkAt: 0,
    profileAt: 0, // when the profile was last asked for
    lastActive: null,
    pools: "", // the pool list the cutover <select> was built from
    history: new Map(), // replica -> [{t, w, r}], for the charts
    colors: new Map(), // replica -> series colour
    poolColors: new Map(),
    pending: null, // the action waiting for "Confirm"
    busy: false,
  };

  const $ = (id) => document.getElementById(id);

  // -- DOM helpers ---------------------------------------------------------------------

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k === "data") Object.assign(el.dataset, v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function svg(tag, attrs, text) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function show(el, on) {
    el.hidden = !on;
  }

  // -- formatting ----------------------------------------------------------------------

  const pct = (x) => `${Math.round(x * 1000) / 10}%`;
  const num = (x) => (x === null || x === undefined ? "–" : x.toLocaleString("en-US"));

  function dur(s) {
    if (s === null || s === undefined) return "–";
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  }

  function clock(ms) {
    return new Date(ms).toLocaleTimeString("en-GB", { hour12: false });
  }

  function poolColor(name) {
    if (!app.poolColors.has(name)) {
      const fixed = POOL_COLORS[name.toLowerCase()];
      const i = app.poolColors.size % POOL_FALLBACK.length;
      app.poolColors.set(name, fixed || POOL_FALLBACK[i]);
    }
    return app.poolColors.get(name);
  }

  function poolTag(name, extra) {
    const el = h("span", { class: `pool-tag ${extra || ""}`, data: { pool: name } },
      h("span", { class: "swatch" }), name);
    el.firstChild.style.background = poolColor(name);
    return el;
  }

  function statePill(state) {
    return h("span", { class: `state state-${state}`, data: { state } }, state);
  }

  function seriesColor(name) {
    if (!app.colors.has(name)) {
      const used = new Set(app.colors.values());
      const free = SERIES_COLORS.find((c) => !used.has(c));
      app.colors.set(name, free || SERIES_COLORS[app.colors.size % SERIES_COLORS.length]);
    }
    return app.colors.get(name);
  }

  // -- the admin API ---------------------------------------------------------------------

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${app.token}` };
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(API + path, init);
    let data = null;
    try {
      data = await res.json();
    } catch {
      data = null;
    }
    if (res.status === 401) throw new AuthError(errorText(res.status, data));
    return { status: res.status, ok: res.ok, data };
  }

  function errorText(status, data) {
    const message = data && data.error && data.error.message;
    return message ? String(message) : `HTTP ${status}`;
  }

  // -- signing in and out ------------------------------------------------------------------

  function showLogin(message) {
    stopPolling();
    show($("dash"), false);
    show($("topbar-info"), false);
    show($("login-view"), true);
    const err = $("login-error");
    err.textContent = message || "";
    show(err, Boolean(message));
    $("token").value = "";
    $("token").focus();
  }

  function signOut(message) {
    app.token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    app.last = null;
    app.profileAt = 0;
    app.history.clear();
    showLogin(message);
  }

  function showDash() {
    show($("login-view"), false);
    show($("dash"), true);
    show($("topbar-info"), true);
  }

  async function onLogin(ev) {
    ev.preventDefault();
    const token = $("token").value.trim();
    if (!token) {
      showLogin("Enter the token.");
      return;
    }
    const button = $("login-submit");
    button.disabled = true;
    app.token = token;
    try {
      const r = await api("GET", "status");
      if (!r.ok) throw new Error(errorText(r.status, r.data));
      sessionStorage.setItem(TOKEN_KEY, token);
      showDash();
      onStatus(r.data);
      startPolling();
    } catch (e) {
      app.token = "";
      if (e instanceof AuthError) showLogin(`The gateway refused this token (401): ${e.message}.`);
      else showLogin(`Cannot reach the admin API: ${e.message}`);
    } finally {
      button.disabled = false;
    }
  }

  // -- polling -----------------------------------------------------------------------------

  function stopPolling() {
    app.gen += 1;
    clearTimeout(app.timer);
  }

  function startPolling() {
    stopPolling();
    const gen = app.gen;
    app.timer = setTimeout(() => poll(gen), POLL_MS);
  }

  async function poll(gen) {
    try {
      const r = await api("GET", "status");
      if (gen !== app.gen) return;
      if (r.ok) onStatus(r.data);
      else setConn("down", `status call failed: ${errorText(r.status, r.data)}`);
      if (r.ok && Date.now() - app.profileAt >= PROFILE_MS) await pollProfile(gen);
    } catch (e) {
      if (gen !== app.gen) return;
      if (e instanceof AuthError) {
        signOut(`Signed out: the gateway refused the token (401): ${e.message}.`);
        return;
      }
      setConn("down", "gateway unreachable");
    }
    if (gen === app.gen) app.timer = setTimeout(() => poll(gen), POLL_MS);
  }

  async function pollProfile(gen) {
    app.profileAt = Date.now();
    const r = await api("GET", "profile");
    if (gen !== app.gen) return;
    if (r.ok) renderProfile(r.data);
    else $("coverage-text").textContent = `profile unavailable: ${errorText(r.status, r.data)}`;
  }

  async function refreshNow() {
    stopPolling(); // a poll already under way is dropped, so two loops never run
    await poll(app.gen);
  }

  function setConn(kind, text) {
    const conn = $("conn");
    conn.dataset.conn = kind;
    const when = app.lastOkAt ? clock(app.lastOkAt) : "never";
    $("conn-text").textContent = kind === "live" ? `live · ${when}` : `${text} · last update ${when}`;
    const banner = $("banner");
    banner.textContent = kind === "live" ? "" : `${text[0].toUpperCase()}${text.slice(1)}; ` +
      `the figures below are from ${when} and may be stale.`;
    show(banner, kind !== "live");
  }

  // -- rendering ---------------------------------------------------------------------------

  function onStatus(data) {
    app.last = data;
    app.lastOkAt = Date.now();
    setConn("live");
    $("strategy").textContent = `strategy ${data.strategy}`;
    record(data.replicas, app.lastOkAt / 1000);
    renderPolicy(data.policy);
    renderPools(data.pools, data.policy);
    renderCutoverForm(data.policy, data.pools);
    renderReplicas(data.replicas, data.pools);
    renderCharts();
    renderCutovers(data.cutovers);
    renderTransitions(data.transitions);
  }

  function renderPolicy(policy) {
    const active = $("active-pool");
    active.replaceWith(Object.assign(poolTag(policy.active, "big"), { id: "active-pool" }));
    const prev = $("previous-pool");
    prev.replaceChildren(policy.previous ? poolTag(policy.previous) : "none");

    const shares = Object.entries(policy.shares).sort((a, b) => b[1] - a[1]);
    $("shares").replaceChildren(...shares.map(([p, s]) =>
      h("span", { class: "share", data: { pool: p } }, `${p} ${pct(s)}`)));
    const bar = $("sharebar");
    bar.replaceChildren(...shares.filter(([, s]) => s > 0).map(([p, s]) => {
      const seg = h("span", { class: "seg", title: `${p}: ${pct(s)}` }, s >= 0.12 ? p : "");
      seg.style.width = pct(s);
      seg.style.background = poolColor(p);
      return seg;
    }));

    const run = policy.cutover_in_progress;
    const box = $("inprogress");
    box.classList.toggle("running", Boolean(run));
    if (!run) {
      box.replaceChildren("No cutover in progress");
      return;
    }
    const prog = h("span", { class: "progress" }, h("span", { class: "fill" }));
    prog.firstChild.style.width = pct(run.share);
    box.replaceChildren(
      h("div", null, h("strong", null, `Gradual cutover #${run.id} in progress: `),
        `${run.frm} → ${run.to}, ${run.to} has ${pct(run.share)} of traffic`),
      prog,
      h("div", { class: "hint" }, `Roll back to return all traffic to ${run.frm}.`),
    );
  }

  function renderPools(pools, policy) {
    const rows = Object.entries(pools).map(([name, p]) => h("tr", { data: { pool: name } },
      h("td", null, poolTag(name), name === policy.active ? h("span", { class: "badge" }, "active")
        : null),
      h("td", { class: "num" }, pct(p.share)),
      h("td", { class: "num" }, p.replicas),
      h("td", { class: `num ${p.warm < p.replicas ? "warn" : ""}` }, p.warm),
      h("td", { class: "num" }, p.ready),
      h("td", { class: "num" }, p.inflight),
    ));
    $("pools").tBodies[0].replaceChildren(...rows);
  }

  function renderCutoverForm(policy, pools) {
    const names = Object.keys(pools);
    const select = $("cut-to");
    const key = names.join("\n");
    if (key !== app.pools) {
      const keep = select.value;
      select.replaceChildren(...names.map((n) => h("option", { value: n }, n)));
      if (names.includes(keep)) select.value = keep;
      app.pools = key;
    }
    if (policy.active !== app.lastActive) {
      // the active pool changed (here or elsewhere): propose the first other pool
      const other = names.find((n) => n !== policy.active);
      if (other) select.value = other;
      app.lastActive = policy.active;
      if (app.pending) cancelConfirm();
    }
    const run = policy.cutover_in_progress;
    const back = run ? run.frm : policy.previous;
    const rb = $("rollback");
    rb.disabled = !back || app.busy;
    rb.textContent = back ? `Roll back to ${back}…` : "Roll back…";
    rb.title = back ? "" : "nothing to roll back to: no cutover has happened";
    $("cut-go").disabled = app.busy || names.length === 0;
  }

  function weightBar(w, idle) {
    const bar = h("span", { class: "wbar" }, h("span", { class: "fill" }));
    bar.firstChild.style.width = `${Math.max(0, Math.min(1, w)) * 100}%`;
    return h("span", { class: "weight", title: idle ? "warm, but its pool's share is 0" : null },
      bar, h("span", { class: "wnum" }, w.toFixed(2)),
      idle ? h("span", { class: "standby" }, "standby") : null);
  }

  function ratioCell(r) {
    if (r === null || r === undefined) return h("td", { class: "num muted" }, "–");
    const cls = r >= 2 ? "bad" : r >= 1.3 ? "warn" : "";
    return h("td", { class: `num ${cls}` }, `${r.toFixed(2)}×`);
  }

  // warm, but its pool gets no traffic: it stands by for a rollback or a cutover
  function standby(r, pools) {
    const pool = pools[r.pool];
    return CHARTED.has(r.state) && pool !== undefined && pool.share === 0;
  }

  function renderReplicas(replicas, pools) {
    const rows = replicas.map((r) => {
      const errRate = r.requests ? r.errors / r.requests : 0;
      return h("tr", { data: { replica: r.name, state: r.state } },
        h("td", { class: "name", title: `${r.url}\nmodels: ${r.models.join(", ") || "–"}` },
          r.name, h("span", { class: "sub" }, r.url.replace(/^https?:\/\//, ""))),
        h("td", null, poolTag(r.pool)),
        h("td", null, statePill(r.state)),
        h("td", { class: "num" }, dur(r.since_s)),
        h("td", null, weightBar(r.weight, standby(r, pools))),
        ratioCell(r.latency_ratio),
        h("td", { class: "num" }, r.inflight),
        h("td", { class: "num" }, num(r.requests)),
        h("td", { class: `num ${r.errors ? "bad" : ""}`, title: r.requests ? pct(errRate) : "" },
          num(r.errors)),
        h("td", { class: "reason" }, r.reason || ""),
      );
    });
    if (!rows.length) {
      rows.push(h("tr", null, h("td", { colspan: 10, class: "empty" }, "No replicas configured.")));
    }
    $("replicas").tBodies[0].replaceChildren(...rows);
    $("replica-count").textContent = `${replicas.length}`;
  }

  function renderCutovers(cutovers) {
    const rows = cutovers.map((c) => h("tr", { data: { cutover: c.id } },
      h("td", null, c.id),
      h("td", null, poolTag(c.frm), " → ", poolTag(c.to)),
      h("td", null, c.mode),
      h("td", null, h("span", { class: `outcome outcome-${c.outcome}` }, c.outcome)),
      h("td", { class: "num" }, c.finished === null ? "–" : dur(c.finished - c.started)),
      h("td", { class: "num" }, c.drained === null ? "–" : dur(c.drained - c.started)),
      h("td", { class: "reason" }, c.reason),
    ));
    if (!rows.length) {
      rows.push(h("tr", null, h("td", { colspan: 7, class: "empty" }, "No cutover yet.")));
    }
    $("cutovers").tBodies[0].replaceChildren(...rows);
  }

  function renderTransitions(transitions) {
    const rows = [...transitions].reverse().map((t) => h("tr", null,
      h("td", { class: "num" }, dur(t.ago_s)),
      h("td", null, t.replica),
      h("td", { class: "nowrap" }, statePill(t.from), " → ", statePill(t.to)),
      h("td", { class: "reason" }, t.reason),
    ));
    if (!rows.length) {
      rows.push(h("tr", null, h("td", { colspan: 4, class: "empty" }, "No transitions yet.")));
    }
    $("transitions").tBodies[0].replaceChildren(...rows);
  }

  // -- the traffic profile ------------------------------------------------------------------

  function span(s) {
    if (s >= 3600 && s % 3600 === 0) return `${s / 3600} h`;
    if (s >= 60 && s % 60 === 0) return `${s / 60} min`;
    return `${s} s`;
  }

  function bytes(n) {
    return n < 1024 ? `${n} B` : `${(n / 1024).toFixed(1)} KiB`;
  }

  function promptTokens(p, bucket) {
    if (p.lo === null) return `~${bucket[0]}–${bucket[1]}`; // estimated only: the bucket
    return p.lo === p.hi ? `${p.lo}` : `${p.lo}–${p.hi}`;
  }

  function renderProfile(data) {
    const cov = data.coverage;
    const fig = $("coverage");
    const ratio = cov.ratio;
    fig.textContent = ratio === null ? "–" : pct(ratio);
    const grade = ratio === null ? "muted" : ratio >= 0.99 ? "ok" : ratio >= 0.9 ? "warn" : "bad";
    fig.className = `figure ${grade}`;
    const last = span(cov.window_s);
    $("coverage-text").textContent = ratio === null
      ? `coverage: no user request in the last ${last}`
      : `of the last ${last}'s user requests were of a shape their replica's warmup had sent`;
    const p = data.profile;
    $("profile-shapes").textContent =
      `${num(p.shapes)} (top ${data.shapes.length} cover ${pct(p.top_share)})`;
    const sp = data.specs;
    $("profile-specs").textContent = sp.enabled ? `${num(sp.kept)} (${bytes(sp.bytes)})` : "off";

    const names = new Set(data.replicas.map((r) => r.name));
    const rows = data.replicas.map((r) => {
      const hits = data.cold_hits[r.name] || {};
      const why = Object.entries(hits).sort().map(([k, n]) => `${k} ${n}`).join(", ");
      return h("tr", { data: { replica: r.name } },
        h("td", null, r.name),
        h("td", { class: "num" }, num(r.warmed_shapes)),
        h("td", { class: `num ${r.cold_hits ? "bad" : ""}` }, num(r.cold_hits)),
        h("td", { class: "reason" }, why));
    });
    for (const [name, hits] of Object.entries(data.cold_hits)) {
      if (names.has(name)) continue; // a replica gone since
      const n = Object.values(hits).reduce((a, b) => a + b, 0);
      rows.push(h("tr", { data: { replica: name } }, h("td", { class: "muted" }, `${name} (gone)`),
        h("td", { class: "num muted" }, "–"), h("td", { class: "num bad" }, num(n)),
        h("td", { class: "reason" }, Object.entries(hits).sort().map(([k, c]) => `${k} ${c}`)
          .join(", "))));
    }
    if (!rows.length) {
      rows.push(h("tr", null, h("td", { colspan: 4, class: "empty" }, "No replicas.")));
    }
    $("cold-hits").tBodies[0].replaceChildren(...rows);

    const shown = data.shapes.slice(0, TOP_SHAPES);
    const shapeRows = shown.map((s) => {
      const bar = h("span", { class: "sbar" }, h("span", { class: "fill" }));
      bar.firstChild.style.width = `${Math.max(0, Math.min(1, s.share)) * 100}%`;
      return h("tr", { data: { shape: s.shape }, title: s.shape },
        h("td", { class: "num nowrap" }, bar, pct(s.share)),
        h("td", null, s.model),
        h("td", { class: "nowrap" }, `${s.kind}/${s.stream ? "stream" : "json"}`),
        h("td", { class: "num" }, promptTokens(s.prompt_tokens, s.bucket_tokens)),
        h("td", { class: "features" }, s.features.text,
          s.pinned ? h("span", { class: "badge", title: "a cold hit: warmups send it" }, "pinned")
            : null));
    });
    if (!shapeRows.length) {
      shapeRows.push(h("tr", null, h("td", { colspan: 5, class: "empty" },
        "No user traffic learned yet.")));
    }
    $("shapes").tBodies[0].replaceChildren(...shapeRows);
    const more = $("shapes-more");
    more.textContent = data.shapes.length > shown.length
      ? `${data.shapes.length - shown.length} more: warmgw profile lists them all` : "";
    show(more, data.shapes.length > shown.length);
  }

  // -- charts ----------------------------------------------------------------------------------

  function record(replicas, t) {
    const seen = new Set();
    for (const r of replicas) {
      seen.add(r.name);
      const charted = CHARTED.has(r.state);
      let points = app.history.get(r.name);
      if (!points) {
        if (!charted) continue;
        points = [];
        app.history.set(r.name, points);
      }
      points.push(charted ? { t, w: r.weight, r: r.latency_ratio } : { t, w: null, r: null });
    }
    for (const [name, points] of app.history) {
      if (!seen.has(name)) points.push({ t, w: null, r: null });
      while (points.length && points[0].t < t - WINDOW_S - 5) points.shift();
      if (!points.some((p) => p.w !== null)) {
        app.history.delete(name);
        app.colors.delete(name);
      }
    }
  }

  function renderCharts() {
    const now = app.lastOkAt / 1000;
    let maxRatio = 2;
    let oldest = now;
    for (const points of app.history.values()) {
      for (const p of points) {
        if (p.r !== null) maxRatio = Math.max(maxRatio, p.r);
        if (p.w !== null) oldest = Math.min(oldest, p.t);
      }
    }
    // the window grows in 30 s steps up to WINDOW_S, so a fresh page's data fills the chart
    const span = Math.min(WINDOW_S, Math.max(30, Math.ceil((now - oldest) / 30) * 30));
    $("chart-span").textContent = span >= 60 ? `${span / 60} min` : `${span} s`;
    maxRatio = Math.min(10, Math.ceil(maxRatio * 2) / 2);
    drawChart($("chart-weight"), now, span, "w", { max: 1, ticks: [0, 0.25, 0.5, 0.75, 1] });
    const step = maxRatio > 4 ? 2 : maxRatio > 2 ? 1 : 0.5;
    const ticks = [];
    for (let v = 0; v <= maxRatio + 1e-9; v += step) ticks.push(v);
    drawChart($("chart-ratio"), now, span, "r", { max: maxRatio, ticks, ref: 1 });
    renderLegend();
  }

  function ago(s) {
    if (s === 0) return "now";
    return `−${s >= 60 && s % 60 === 0 ? `${s / 60} min` : `${s} s`}`;
  }

  function drawChart(el, now, span, field, opts) {
    const W = el.clientWidth || 560;
    const H = el.clientHeight || 150;
    el.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const m = { l: 34, r: 8, t: 8, b: 20 };
    const x = (t) => m.l + (1 - (now - t) / span) * (W - m.l - m.r);
    const y = (v) => m.t + (1 - Math.min(v, opts.max) / opts.max) * (H - m.t - m.b);
    const parts = [];
    for (const v of opts.ticks) {
      parts.push(svg("line", { x1: m.l, x2: W - m.r, y1: y(v), y2: y(v), class: "grid" }));
      parts.push(svg("text", { x: m.l - 5, y: y(v) + 3.5, class: "axis", "text-anchor": "end" },
        Number.isInteger(v) ? String(v) : v.toFixed(2).replace(/0$/, "")));
    }
    const every = span <= 30 ? 10 : span <= 60 ? 15 : 30;
    for (let back = span; back >= 0; back -= every) {
      parts.push(svg("text", { x: x(now - back), y: H - 5, class: "axis",
        "text-anchor": back === span ? "start" : back === 0 ? "end" : "middle" }, ago(back)));
    }
    if (opts.ref !== undefined) {
      parts.push(svg("line", { x1: m.l, x2: W - m.r, y1: y(opts.ref), y2: y(opts.ref),
        class: "ref" }));
    }
    let any = false;
    for (const [name, points] of app.history) {
      let d = "";
      let prevT = null;
      for (const p of points) {
        const v = p[field];
        if (v === null || p.t < now - span) {
          prevT = null;
          continue;
        }
        const gap = prevT === null || p.t - prevT > 3.5 * (POLL_MS / 1000);
        d += `${gap ? "M" : "L"}${x(p.t).toFixed(1)},${y(v).toFixed(1)}`;
        prevT = p.t;
      }
      if (!d) continue;
      any = true;
      const path = svg("path", { d, class: "series", "data-replica": name });
      path.style.stroke = seriesColor(name);
      parts.push(path);
    }
    if (!any) {
      parts.push(svg("text", { x: (m.l + W - m.r) / 2, y: (m.t + H - m.b) / 2, class: "empty",
        "text-anchor": "middle" }, field === "w" ? "No ramping or ready replica yet"
        : "No latency ratio yet: it needs traffic"));
    }
    el.replaceChildren(...parts);
  }

  function renderLegend() {
    const items = [...app.history.keys()].sort().map((name) => {
      const sw = h("span", { class: "swatch line" });
      sw.style.background = seriesColor(name);
      return h("span", { class: "legend-item" }, sw, name);
    });
    $("legend").replaceChildren(...items);
  }

  // -- actions: cutover and rollback -------------------------------------------------------------

  function selectedMode() {
    const checked = document.querySelector('input[name="mode"]:checked');
    return checked ? checked.value : "instant";
  }

  function askConfirm(text, run) {
    app.pending = run;
    $("confirm-text").textContent = text;
    show($("confirm"), true);
    show($("cut-actions"), false);
    $("confirm-yes").focus();
  }

  function cancelConfirm() {
    app.pending = null;
    show($("confirm"), false);
    show($("cut-actions"), true);
  }

  function message(kind, text) {
    const el = $("action-msg");
    el.className = `msg ${kind}`;
    el.textContent = text;
    show(el, Boolean(text));
  }

  function onCutover(ev) {
    ev.preventDefault();
    if (!app.last) return;
    const active = app.last.policy.active;
    const to = $("cut-to").value;
    const mode = selectedMode();
    const force = $("cut-force").checked;
    const body = { to, mode, force, from: active };
    let how = mode;
    if (mode === "gradual") {
      const duration = Number($("cut-duration").value);
      if (!(duration > 0)) {
        message("error", "The gradual duration must be a number of seconds above 0.");
        return;
      }
      body.duration = duration;
      how = `gradual over ${duration} s`;
    }
    askConfirm(`Move traffic ${active} → ${to}, ${how}${force ? ", forced" : ""}?`,
      () => act("cutover", body, `Cutover ${active} → ${to}`));
  }

  function onRollback() {
    if (!app.last) return;
    const p = app.last.policy;
    const back = p.cutover_in_progress ? p.cutover_in_progress.frm : p.previous;
    const force = $("cut-force").checked;
    askConfirm(`Roll back: move all traffic to ${back}${force ? ", forced" : ""}?`,
      () => act("rollback", { force }, `Rollback to ${back}`));
  }

  async function act(path, body, what) {
    app.busy = true;
    message("info", `${what}: sending…`);
    try {
      const r = await api("POST", path, body);
      if (r.ok) {
        const c = r.data.cutover;
        const state = c.outcome === "running" ? "started" : c.outcome;
        message("ok", `${what}: ${state} (cutover #${c.id}, ${c.mode}).`);
      } else {
        message("error", `${what} refused (${r.status}): ${errorText(r.status, r.data)}`);
      }
    } catch (e) {
      if (e instanceof AuthError) {
        signOut(`Signed out: the gateway refused the token (401): ${e.message}.`);
        return;
      }
      message("error", `${what} failed: ${e.message}`);
    } finally {
      app.busy = false;
    }
    await refreshNow();
  }

  // -- wiring --------------------------------------------------------------------------------------

  function init() {
    $("login-form").addEventListener("submit", onLogin);
    $("logout").addEventListener("click", (ev) => {
      ev.preventDefault();
      signOut("Signed out.");
    });
    $("cutover-form").addEventListener("submit", onCutover);
    $("rollback").addEventListener("click", onRollback);
    $("confirm-no").addEventListener("click", cancelConfirm);
    $("confirm-yes").addEventListener("click", () => {
      const run = app.pending;
      cancelConfirm();
      if (run) run();
    });
    for (const radio of document.querySelectorAll('input[name="mode"]')) {
      radio.addEventListener("change", () => {
        $("cut-duration").disabled = selectedMode() !== "gradual";
      });
    }
    let resize = 0;
    window.addEventListener("resize", () => {
      clearTimeout(resize);
      resize = setTimeout(() => app.last && renderCharts(), 150);
    });

    if (app.token) {
      showDash();
      refreshNow();
    } else {
      showLogin("");
    }
  }

  init();
})();
