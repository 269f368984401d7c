/* edgefleet dashboard: charts as inline SVG. Written for this project; no third-party code.
 * The geometry (scales, ticks, paths) is pure; chart() turns it into SVG elements. */
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";

  /** A linear map of [d0, d1] onto [r0, r1] (a flat domain maps to the middle of the range). */
  function linear([d0, d1], [r0, r1]) {
    if (d1 === d0) return () => (r0 + r1) / 2;
    const k = (r1 - r0) / (d1 - d0);
    return (v) => r0 + (v - d0) * k;
  }

  /** About `n` round tick values covering [lo, hi]. */
  function ticks(lo, hi, n = 5) {
    if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [];
    if (hi === lo) return [lo];
    const raw = (hi - lo) / Math.max(1, n);
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
    return out;
  }

  /** The extent [min, max] of the finite values (null when there are none). */
  function extent(values) {
    const v = values.filter((x) => typeof x === "number" && Number.isFinite(x));
    return v.length ? [Math.min(...v), Math.max(...v)] : null;
  }

  /** Points [[x, y], ...] as an SVG path; `step`: horizontal then vertical (a count that changes at x),
   *  held on to `xEnd` when given. Points with a missing y break the line. */
  function pathOf(points, x, y, { step = false, xEnd = null } = {}) {
    let d = "";
    let prev = null;
    for (const [px, py] of points) {
      if (typeof py !== "number" || !Number.isFinite(py)) {
        prev = null;
        continue;
      }
      const X = x(px).toFixed(1);
      const Y = y(py).toFixed(1);
      if (prev === null) d += `M${X},${Y}`;
      else if (step) d += `H${X}V${Y}`;
      else d += `L${X},${Y}`;
      prev = [px, py];
    }
    if (step && prev !== null && xEnd !== null && xEnd > prev[0]) d += `H${x(xEnd).toFixed(1)}`;
    return d;
  }

  function el(tag, attrs, ...kids) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) node.setAttribute(k, String(v));
    for (const kid of kids) if (kid !== null && kid !== undefined) node.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    return node;
  }

  function clock(ts) {
    return new Date(ts * 1000).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  /**
   * A line chart: series [{name, cls, points: [[x, y], ...]}]; options: title, step, xMin/xMax/yMin/yMax,
   * xFormat/yFormat, markers [{x, label, cls}] (vertical lines), integer (y ticks whole numbers), dots, width (pixels:
   * the container's, so that text keeps its size).
   * Returns a <figure> with the SVG and a legend.
   */
  function chart(series, opts = {}) {
    const W = Math.max(320, Math.round(opts.width || 640));
    const H = opts.height || 220;
    const M = { l: 46, r: 14, t: 12, b: 28 };
    const xs = series.flatMap((s) => s.points.map((p) => p[0])).concat((opts.markers || []).map((m) => m.x));
    const ys = series.flatMap((s) => s.points.map((p) => p[1]));
    const xe = extent(xs.concat([opts.xMin, opts.xMax].filter((v) => v !== undefined && v !== null)));
    const ye = extent(ys.concat([opts.yMin, opts.yMax].filter((v) => v !== undefined && v !== null)));
    const fig = document.createElement("figure");
    fig.className = "chart-fig";
    if (!xe || !ye) {
      const p = document.createElement("p");
      p.className = "muted";
      p.textContent = opts.empty || "no data yet";
      fig.append(p);
      return fig;
    }
    const [x0, x1] = [opts.xMin ?? xe[0], opts.xMax ?? xe[1]];
    let [y0, y1] = [opts.yMin ?? ye[0], opts.yMax ?? ye[1]];
    if (y0 === y1) [y0, y1] = [y0 - 1, y1 + 1];
    const x = linear([x0, x1], [M.l, W - M.r]);
    const y = linear([y0, y1], [H - M.b, M.t]);
    const xFormat = opts.xFormat || ((v) => String(v));
    const yFormat = opts.yFormat || ((v) => String(v));
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img", "aria-label": opts.title || "chart" });
    if (opts.title) svg.append(el("title", {}, opts.title));
    const grid = el("g", { class: "grid" });
    let yt = ticks(y0, y1, 4);
    if (opts.integer) yt = yt.filter((v) => Number.isInteger(v));
    for (const v of yt) {
      grid.append(el("line", { x1: M.l, x2: W - M.r, y1: y(v).toFixed(1), y2: y(v).toFixed(1) }));
      grid.append(el("text", { x: M.l - 6, y: (y(v) + 4).toFixed(1), "text-anchor": "end", class: "tick" }, yFormat(v)));
    }
    let xt = opts.xTicks ? opts.xTicks(x0, x1) : ticks(x0, x1, 6);
    if (opts.integerX) xt = xt.filter((v) => Number.isInteger(v));
    if (!xt.length) xt = x0 === x1 ? [x0] : [x0, x1];
    for (const v of xt) {
      const X = x(v);
      const anchor = X > W - M.r - 40 ? "end" : X < M.l + 40 ? "start" : "middle";
      grid.append(el("text", { x: X.toFixed(1), y: H - 8, "text-anchor": anchor, class: "tick" }, xFormat(v)));
    }
    grid.append(el("line", { x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b, class: "axis" }));
    svg.append(grid);
    for (const m of opts.markers || []) {
      const X = x(m.x).toFixed(1);
      svg.append(el("line", { x1: X, x2: X, y1: M.t, y2: H - M.b, class: `marker ${m.cls || ""}` }, el("title", {}, m.label)));
    }
    for (const s of series) {
      const g = el("g", { class: `series ${s.cls || ""}`, "data-series": s.name });
      g.append(el("path", { d: pathOf(s.points, x, y, { step: opts.step, xEnd: opts.step ? x1 : null }), fill: "none" }));
      if (opts.dots !== false) {
        for (const [px, py] of s.points) {
          if (typeof py !== "number" || !Number.isFinite(py)) continue;
          g.append(el("circle", { cx: x(px).toFixed(1), cy: y(py).toFixed(1), r: opts.step ? 2 : 3 },
            el("title", {}, `${s.name}: ${yFormat(py)} at ${xFormat(px)}`)));
        }
      }
      svg.append(g);
    }
    fig.append(svg);
    const legend = document.createElement("figcaption");
    legend.className = "legend";
    for (const s of series) {
      const item = document.createElement("span");
      item.className = `key ${s.cls || ""}`;
      item.textContent = s.name;
      legend.append(item);
    }
    fig.append(legend);
    return fig;
  }

  /** Ticks on a time axis (seconds): about five, at round clock times. */
  function timeTicks(lo, hi) {
    const span = hi - lo;
    const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];
    const step = steps.find((s) => span / s <= 6) || 86400 * Math.ceil(span / 86400 / 6);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) out.push(v);
    return out;
  }

  return { linear, ticks, extent, pathOf, chart, clock, timeTicks };
})();
