// The Charts view: four charts over the metrics history, one line per model (its colour is the
// same in every chart), redrawn after each scrape while the view is shown.

import { LineChart, PALETTE } from "./charts.js";
import { History, parse, snapshot } from "./metrics.js";

const SPAN = 300; // seconds kept and shown at most
const MIN_SPAN = 60; // ... and at least: a page opened a moment ago shows its last minute

export class TrendsView {
  constructor(root) {
    this.history = new History(SPAN);
    this.visible = false;
    this.colors = new Map();
    this.order = [];
    this.charts = {
      requests: new LineChart("Requests per second", "/s", { floor: 1 }),
      tokens: new LineChart("Generated tokens per second", "/s", { floor: 10 }),
      latency: new LineChart("Latency p50 (solid) and p99 (dashed)", " s", { floor: 0.1 }),
      queue: new LineChart("Queued requests", "", { floor: 1 }),
    };
    root.replaceChildren(...Object.values(this.charts).map((c) => c.node));
  }

  /** One scrape of /metrics (its text), taken now. */
  add(text) {
    this.history.add(snapshot(parse(text), Date.now() / 1000));
    if (this.visible) this.draw();
  }

  show(visible) {
    this.visible = visible;
    if (visible) this.draw();
  }

  /** The configured models, in order: it fixes each one's colour and its place in the legends. */
  setModels(names) {
    this.order = names;
    names.forEach((name) => this.color(name));
  }

  color(model) {
    if (!this.colors.has(model)) this.colors.set(model, PALETTE[this.colors.size % PALETTE.length]);
    return this.colors.get(model);
  }

  draw() {
    const rank = (m) => (this.order.includes(m) ? this.order.indexOf(m) : this.order.length);
    const sorted = (names) => names.sort((a, b) => rank(a) - rank(b));
    const models = sorted(this.history.models());
    const snaps = this.history.snapshots;
    if (!snaps.length) return;
    const end = snaps[snaps.length - 1].time;
    const span = Math.min(SPAN, Math.max(MIN_SPAN, end - snaps[0].time));
    const line = (model, metric, label = model, dashed = false) => ({
      label,
      color: this.color(model),
      dashed,
      points: this.history.series(model, metric),
    });
    this.charts.requests.draw(
      models.map((m) => line(m, "requests")),
      end,
      span,
    );
    this.charts.tokens.draw(
      sorted(this.history.models(true)).map((m) => line(m, "tokens")),
      end,
      span,
    );
    this.charts.queue.draw(
      models.map((m) => line(m, "queue")),
      end,
      span,
    );
    const latency = models.flatMap((m) => [line(m, "p50", `${m} p50`), line(m, "p99", `${m} p99`, true)]);
    // Only the models that answered requests: a legend of twelve idle lines says nothing.
    const answered = latency.filter((l) => l.points.some((p) => p[1] !== null));
    this.charts.latency.draw(answered, end, span);
  }
}
