// Throughput chart: completed and failed tasks per second, drawn as inline SVG
// (no library: two polylines, axes and a legend are a few dozen lines).
// Failed is dashed, so the two series differ by more than colour.

import {h, replace, uid} from "./dom.js";

const HEIGHT = 200;
const PAD = {left: 44, right: 12, top: 12, bottom: 28};

/** Counts completions and failures in fixed buckets over a sliding window. */
export class Throughput {
  constructor(windowSeconds = 300, bucketSeconds = 5) {
    this.windowSeconds = windowSeconds;
    this.bucketSeconds = bucketSeconds;
    this.buckets = new Map();  // bucket start (s) -> {completed, failed}
  }

  add(status, atMs = Date.now()) {
    if (status !== "COMPLETED" && status !== "FAILED") return;
    const start = Math.floor(atMs / 1000 / this.bucketSeconds) * this.bucketSeconds;
    const bucket = this.buckets.get(start) || {completed: 0, failed: 0};
    bucket[status === "COMPLETED" ? "completed" : "failed"] += 1;
    this.buckets.set(start, bucket);
  }

  /** [{t, completed, failed}] per bucket of the window, rates per second. */
  series(nowMs = Date.now()) {
    const last = Math.floor(nowMs / 1000 / this.bucketSeconds) * this.bucketSeconds;
    const first = last - this.windowSeconds + this.bucketSeconds;
    for (const start of this.buckets.keys()) if (start < first) this.buckets.delete(start);
    const points = [];
    for (let t = first; t <= last; t += this.bucketSeconds) {
      const bucket = this.buckets.get(t) || {completed: 0, failed: 0};
      points.push({t, completed: bucket.completed / this.bucketSeconds, failed: bucket.failed / this.bucketSeconds});
    }
    return points;
  }
}

function niceMax(value) {
  if (value <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

/** An <figure> with the chart; ``draw(points)`` redraws it. */
export function throughputChart(label) {
  const titleId = uid("chart-title");
  const descId = uid("chart-desc");
  const svg = h("svg", {role: "img", "aria-labelledby": `${titleId} ${descId}`, class: "chart"});
  const caption = h("figcaption", {class: "legend"},
    h("span", {class: "key completed"}, "Completed per second"),
    h("span", {class: "key failed"}, "Failed per second"));
  const figure = h("figure", {class: "chart-figure"}, svg, caption);

  function draw(points) {
    // The drawing is as wide as the element: text keeps its size on any screen.
    const WIDTH = Math.max(240, Math.round(svg.getBoundingClientRect().width) || 640);
    svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
    const max = niceMax(Math.max(...points.map((p) => Math.max(p.completed, p.failed)), 0));
    const innerW = WIDTH - PAD.left - PAD.right;
    const innerH = HEIGHT - PAD.top - PAD.bottom;
    const x = (index) => PAD.left + (points.length > 1 ? (index / (points.length - 1)) * innerW : 0);
    const y = (value) => PAD.top + innerH - (value / max) * innerH;
    const line = (key) => points.map((p, i) => `${x(i).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" ");
    const total = (key) => points.slice(-12).reduce((sum, p) => sum + p[key] * 5, 0);
    const ticks = [0, max / 2, max];
    replace(svg,
      h("title", {id: titleId}, label),
      h("desc", {id: descId},
        `Last ${Math.round(points.length * 5 / 60)} minutes. In the last minute: ${Math.round(total("completed"))} completed, ${Math.round(total("failed"))} failed.`),
      ticks.map((tick) => h("g", {class: "tick"},
        h("line", {x1: PAD.left, x2: WIDTH - PAD.right, y1: y(tick), y2: y(tick), class: "grid"}),
        h("text", {x: PAD.left - 6, y: y(tick) + 4, "text-anchor": "end"}, formatRate(tick)))),
      h("text", {x: PAD.left, y: HEIGHT - 8, class: "axis-label"}, "5 min ago"),
      h("text", {x: WIDTH - PAD.right, y: HEIGHT - 8, "text-anchor": "end", class: "axis-label"}, "now"),
      h("polyline", {points: line("completed"), class: "series completed"}),
      h("polyline", {points: line("failed"), class: "series failed"}));
  }

  return {element: figure, draw};
}

function formatRate(value) {
  return value >= 10 ? String(Math.round(value)) : String(Math.round(value * 10) / 10);
}
