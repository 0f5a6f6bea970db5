// What the charts plot, from scrapes of GET /metrics: per model, requests/s, generated tokens/s,
// p50/p99 request latency and queue depth. Rates and quantiles come from the difference between
// two scrapes some seconds apart, as Prometheus' rate() and histogram_quantile() would.

const RATE_WINDOW = 5; // seconds: a rate over the last 5 s, so one request is not a spike alone
const LATENCY_WINDOW = 15; // seconds: enough requests for a quantile to mean something

/** Prometheus text format -> [{name, labels, value}] (comments and malformed lines skipped). */
export function parse(text) {
  const samples = [];
  const line = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/;
  const label = /(\w+)="((?:[^"\\]|\\.)*)"/g;
  for (const row of text.split("\n")) {
    const match = line.exec(row);
    if (!match) continue;
    const labels = {};
    for (const [, key, value] of (match[2] || "").matchAll(label))
      labels[key] = value.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

/** One scrape reduced to what the charts need, per model (requests not for a model, such as
 * this page's own polls, are left out). */
export function snapshot(samples, time) {
  const models = new Map();
  const of = (name) => {
    if (!models.has(name))
      models.set(name, { requests: 0, tokens: 0, generates: false, queue: 0, buckets: new Map() });
    return models.get(name);
  };
  for (const { name, labels, value } of samples) {
    if (!labels.model) continue;
    const m = of(labels.model);
    if (name === "mmserve_requests_total") m.requests += value;
    else if (name === "mmserve_generated_tokens_total") {
      m.tokens += value;
      m.generates = true; // the counter appears once the model generated a first token
    } else if (name === "mmserve_queue_depth") m.queue = value;
    else if (name === "mmserve_request_seconds_bucket") {
      const le = labels.le === "+Inf" ? Infinity : Number(labels.le);
      m.buckets.set(le, (m.buckets.get(le) || 0) + value); // summed over routes
    }
  }
  return { time, models };
}

/** The q-quantile of the requests counted between two cumulative bucket maps, interpolated
 * inside its bucket (null when no request was answered in between). */
export function quantile(q, now, before) {
  const bounds = [...now.keys()].sort((a, b) => a - b);
  const counts = bounds.map((le) => (now.get(le) || 0) - ((before && before.get(le)) || 0));
  const total = counts[counts.length - 1] || 0;
  if (total <= 0) return null;
  const rank = q * total;
  for (let i = 0; i < bounds.length; i += 1) {
    if (counts[i] < rank) continue;
    if (bounds[i] === Infinity) return bounds[i - 1] ?? null; // beyond the largest bucket
    const low = i ? bounds[i - 1] : 0;
    const below = i ? counts[i - 1] : 0;
    const inside = counts[i] - below;
    return inside > 0 ? low + ((bounds[i] - low) * (rank - below)) / inside : bounds[i];
  }
  return null;
}

/** The last `span` seconds of snapshots, and the series each chart draws from them. */
export class History {
  constructor(span = 300) {
    this.span = span;
    this.snapshots = [];
  }

  add(snap) {
    this.snapshots.push(snap);
    const oldest = snap.time - this.span - LATENCY_WINDOW;
    while (this.snapshots.length && this.snapshots[0].time < oldest) this.snapshots.shift();
  }

  /** The models of the latest scrape (those that ever generated text, with `generating`). */
  models(generating = false) {
    const last = this.snapshots[this.snapshots.length - 1];
    if (!last) return [];
    return [...last.models].filter(([, m]) => !generating || m.generates).map(([name]) => name);
  }

  /** [[time, value|null], ...] of one model: `metric` is "requests", "tokens", "queue", "p50"
   * or "p99". */
  series(model, metric) {
    const points = [];
    const start = this.snapshots.length ? this.snapshots[this.snapshots.length - 1].time - this.span : 0;
    this.snapshots.forEach((snap, i) => {
      if (snap.time < start) return;
      points.push([snap.time, this.value(model, metric, i)]);
    });
    return points;
  }

  value(model, metric, i) {
    const now = this.snapshots[i].models.get(model);
    if (!now) return null;
    if (metric === "queue") return now.queue;
    const window = metric === "requests" || metric === "tokens" ? RATE_WINDOW : LATENCY_WINDOW;
    const earlier = this.before(i, window);
    if (!earlier) return null;
    const then = earlier.models.get(model);
    if (metric === "p50" || metric === "p99")
      return quantile(metric === "p50" ? 0.5 : 0.99, now.buckets, then && then.buckets);
    const delta = now[metric] - (then ? then[metric] : 0);
    const elapsed = this.snapshots[i].time - earlier.time;
    return delta >= 0 && elapsed > 0 ? delta / elapsed : null; // < 0: the server restarted
  }

  /** The latest snapshot at least `window` seconds older than snapshot i (or the oldest one). */
  before(i, window) {
    const target = this.snapshots[i].time - window;
    for (let j = i - 1; j >= 0; j -= 1) if (this.snapshots[j].time <= target) return this.snapshots[j];
    return i > 0 ? this.snapshots[0] : null;
  }
}
