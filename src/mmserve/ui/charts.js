// Line charts drawn by hand in SVG: a time axis over the history's span, a y axis rounded up to a
// 1-2-5 step, one coloured line per model (dashed for a second series such as p99), gaps where a
// value is unknown. No library: about a hundred lines do what the dashboard needs.

import { el, short } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 600;
const HEIGHT = 170;
const PAD = { left: 44, right: 10, top: 8, bottom: 20 };
export const PALETTE = [
  "#4f46e5",
  "#0891b2",
  "#16a34a",
  "#d97706",
  "#db2777",
  "#7c3aed",
  "#64748b",
  "#dc2626",
];

function svg(tag, attributes = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

/** The smallest 1, 2 or 5 times a power of ten at or above `value`. */
export function niceCeiling(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (step * power >= value * 0.999) return step * power;
  return 10 * power;
}

/** One chart: a titled card holding an <svg> and a legend, redrawn by draw(). */
export class LineChart {
  constructor(title, unit, { floor = 0 } = {}) {
    this.unit = unit;
    this.floor = floor; // the y axis goes at least this high: 0.3 req/s is not a full chart
    this.svg = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": title });
    this.legend = el("div", { class: "legend" });
    this.node = el(
      "div",
      { class: "chart", "data-chart": title },
      el("h3", {}, title),
      this.svg,
      this.legend,
    );
  }

  /** `lines`: [{label, color, dashed, points: [[t, v|null]]}]; `end`: the newest time; `span`:
   * seconds shown. */
  draw(lines, end, span) {
    const values = lines.flatMap((l) => l.points.map((p) => p[1])).filter((v) => v !== null);
    const top = niceCeiling(Math.max(this.floor, ...values));
    const x = (t) => PAD.left + ((t - (end - span)) / span) * (WIDTH - PAD.left - PAD.right);
    const y = (v) => HEIGHT - PAD.bottom - (v / top) * (HEIGHT - PAD.top - PAD.bottom);
    this.svg.replaceChildren(...this.axes(top, y, x, end, span));
    for (const line of lines) {
      const d = pathOf(line.points, x, y);
      if (!d) continue;
      const series = { class: `series${line.dashed ? " dashed" : ""}`, stroke: line.color };
      this.svg.append(svg("path", { d, ...series, "data-series": line.label }));
      const [t, v] = line.points.filter((p) => p[1] !== null).pop(); // the latest value, as a dot
      this.svg.append(svg("circle", { cx: x(t), cy: y(v), r: 2.5, fill: line.color }));
    }
    if (!values.length) {
      const middle = { x: WIDTH / 2, y: HEIGHT / 2, class: "empty", "text-anchor": "middle" };
      this.svg.append(svg("text", middle, "nothing yet"));
    }
    this.legend.replaceChildren(...lines.map((line) => legendItem(line, this.unit)));
  }

  axes(top, y, x, end, span) {
    const parts = [];
    const steps = divisions(top);
    for (let i = 0; i <= steps; i += 1) {
      const v = (top * i) / steps;
      parts.push(svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(v), y2: y(v), class: "grid" }));
      parts.push(
        svg("text", { x: PAD.left - 6, y: y(v) + 3, class: "axis", "text-anchor": "end" }, short(v)),
      );
    }
    const tick = span > 120 ? 60 : 15; // seconds between time labels
    for (let ago = Math.floor(span / tick) * tick; ago >= 0; ago -= tick) {
      const label = ago === 0 ? "now" : tick === 60 ? `-${ago / 60}m` : `-${ago}s`;
      parts.push(
        svg(
          "text",
          { x: x(end - ago), y: HEIGHT - 5, class: "axis", "text-anchor": ago ? "middle" : "end" },
          label,
        ),
      );
    }
    return parts;
  }
}

/** Grid lines for a 1-2-5 ceiling so that each falls on a round number: 1 -> 0.2 steps,
 * 2 -> 0.5, 5 -> 1. */
function divisions(top) {
  const leading = Math.round(top / 10 ** Math.floor(Math.log10(top)));
  return leading === 2 ? 4 : 5;
}

/** An SVG path through the points, broken where a value is null. */
function pathOf(points, x, y) {
  let d = "";
  let pen = false;
  for (const [t, v] of points) {
    if (v === null) {
      pen = false;
      continue;
    }
    d += `${pen ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
    pen = true;
  }
  return d;
}

function legendItem(line, unit) {
  const known = line.points.filter((p) => p[1] !== null);
  const last = known.length ? known[known.length - 1][1] : null;
  const attributes = {
    style: `--swatch: ${line.color}`,
    class: line.dashed ? "dashed" : null,
    "data-label": line.label,
    "data-last": last ?? "",
  };
  return el("span", attributes, `${line.label} `, el("b", {}, `${short(last)}${unit}`));
}
