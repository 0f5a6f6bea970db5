// The Logs view: one model's log (GET /api/v1/{model}/logs), followed live as a stream of JSON
// lines while the view is open, filtered in the page by source and text, cleared on the server
// with DELETE. The stream resumes from the last record seen (`since`), so none is shown twice.

import { ApiError, call, lines } from "./api.js";
import { $$, clock, el, fillSelect } from "./dom.js";

const MAX_ROWS = 2000;
const RETRY_MS = 2000;
const SOURCES = { request: "request", event: "event", stderr: "process" };

export class LogsView {
  /** `parts`: the view's elements (select, log, count, filter, follow, clear, form); `hooks`:
   * {notify(message, kind)}. */
  constructor(parts, hooks) {
    this.parts = parts;
    this.hooks = hooks;
    this.visible = false;
    this.seq = 0;
    this.controller = null;
    parts.select.addEventListener("change", () => this.restart());
    parts.follow.addEventListener("change", () => this.restart(false));
    parts.filter.addEventListener("input", () => this.applyFilter());
    parts.form.addEventListener("change", (e) => e.target.name === "source" && this.applyFilter());
    parts.form.addEventListener("submit", (e) => e.preventDefault());
    parts.clear.addEventListener("click", () => this.clear());
  }

  get model() {
    return this.parts.select.value;
  }

  setModels(names) {
    fillSelect(this.parts.select, names);
  }

  show(visible) {
    this.visible = visible;
    if (visible) this.restart(false);
    else this.stop();
  }

  open(model) {
    this.parts.select.value = model;
    this.restart();
  }

  /** Stop reading, and start again from the last record seen (from scratch with `reset`). */
  restart(reset = true) {
    this.stop();
    if (reset) {
      this.seq = 0;
      this.parts.log.replaceChildren();
      this.applyFilter();
    }
    if (this.visible && this.model) this.read(this.parts.follow.checked);
  }

  stop() {
    if (this.controller) this.controller.abort();
    this.controller = null;
  }

  async read(follow) {
    const controller = new AbortController();
    this.controller = controller;
    const path = `api/v1/${encodeURIComponent(this.model)}/logs?since=${this.seq}`;
    try {
      if (!follow) {
        this.append(await call(path, { signal: controller.signal }));
        return;
      }
      for await (const line of lines(`${path}&follow=true`, { signal: controller.signal })) {
        if (line.trim()) this.append([JSON.parse(line)]);
      }
    } catch (error) {
      if (controller.signal.aborted) return;
      this.hooks.notify(`logs of ${this.model}: ${error.message}`);
      if (error instanceof ApiError && error.status < 500) return; // retrying will not help
    }
    // The stream ended (the server restarted, or a proxy timed it out): pick it up again.
    if (this.controller === controller)
      setTimeout(() => this.controller === controller && this.restart(false), RETRY_MS);
  }

  append(records) {
    if (!records.length) return;
    const box = this.parts.log;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    for (const record of records) {
      this.seq = Math.max(this.seq, record.seq);
      box.append(row(record));
    }
    while (box.children.length > MAX_ROWS) box.firstElementChild.remove();
    this.applyFilter();
    if (atBottom) box.scrollTop = box.scrollHeight;
  }

  applyFilter() {
    const shown = new Set($$("input[name=source]:checked", this.parts.form).map((i) => i.value));
    const text = this.parts.filter.value.trim().toLowerCase();
    let visible = 0;
    const rows = [...this.parts.log.children];
    for (const r of rows) {
      r.hidden = !shown.has(r.dataset.source) || (text !== "" && !r.dataset.text.includes(text));
      if (!r.hidden) visible += 1;
    }
    this.parts.count.textContent = rows.length ? `${visible} of ${rows.length} records` : "no records";
  }

  async clear() {
    if (!this.model) return;
    try {
      const { cleared } = await call(`api/v1/${encodeURIComponent(this.model)}/logs`, { method: "DELETE" });
      this.parts.log.replaceChildren();
      this.applyFilter();
      this.hooks.notify(`cleared ${cleared} records of ${this.model}`, "info");
    } catch (error) {
      this.hooks.notify(`clear the logs of ${this.model}: ${error.message}`);
    }
  }
}

function row(record) {
  const failed = record.request && record.request.status >= 400;
  const node = el(
    "div",
    {
      class: `log-row ${record.source}${failed ? " bad" : ""}`,
      "data-source": record.source,
      "data-seq": record.seq,
    },
    el("time", {}, clock(record.time)),
    el("span", { class: "src" }, SOURCES[record.source] || record.source),
    el("span", { class: "msg" }, record.message),
  );
  node.dataset.text = record.message.toLowerCase();
  return node;
}
