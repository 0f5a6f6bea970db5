// The models table: one row per configured model, updated in place every poll (so a device typed
// into a row's field survives the refresh), and the admin buttons: load, unload, add and remove
// a replica. Each button calls the API and shows its error message as is.

import { call } from "./api.js";
import { bytes, el, put } from "./dom.js";

const STARTED = new Set(["ready", "loading"]);

export class ModelsView {
  /**
   * @param tbody the table's body
   * @param hooks {notify(message, kind), confirm(title, text, ok), openLogs(name), refresh()}
   */
  constructor(tbody, hooks) {
    this.tbody = tbody;
    this.hooks = hooks;
    this.admin = false;
    this.rows = new Map(); // model name -> {tr, cells, actions}
    this.pending = new Set(); // models with a button's call in flight
  }

  setAdmin(admin) {
    if (admin === this.admin) return;
    this.admin = admin;
    this.rows.clear();
    this.tbody.replaceChildren();
  }

  /** `models`: the status entries of GET /api/v1/ (or, without admin, of GET /v1/models);
   * `serverPid`: the server's own process, where in-process (vision) replicas run. */
  update(models, serverPid = null) {
    this.serverPid = serverPid;
    const names = new Set(models.map((m) => m.name));
    for (const [name, row] of this.rows) {
      if (!names.has(name)) {
        row.tr.remove();
        this.rows.delete(name);
      }
    }
    models.forEach((model, index) => {
      const row = this.rows.get(model.name) || this.addRow(model.name);
      if (this.tbody.children[index] !== row.tr)
        this.tbody.insertBefore(row.tr, this.tbody.children[index] || null);
      this.fill(row, model);
    });
  }

  addRow(name) {
    const detail = { hidden: !this.admin }; // GET /v1/models, for a key without admin, has none
    const cells = {
      model: el("td"),
      state: el("td"),
      replicas: el("td", detail),
      memory: el("td", { class: "num", ...detail }),
      requests: el("td", { class: "num", ...detail }),
      error: el("td", detail),
    };
    const tr = el("tr", { "data-model": name }, Object.values(cells));
    const row = { tr, cells, model: null };
    if (this.admin) {
      row.actions = this.actions(row, name);
      tr.append(el("td", {}, row.actions.box));
    }
    this.rows.set(name, row);
    return row;
  }

  fill(row, m) {
    row.model = m;
    const { cells } = row;
    const sub = [m.backend, ...(m.aliases || []).map((a) => `alias ${a}`)].filter(Boolean).join(" · ");
    put(
      cells.model,
      el("span", { class: "name" }, m.name),
      el("span", { class: "tag" }, m.kind),
      m.pinned ? el("span", { class: "tag" }, "pinned") : null,
      sub ? el("div", { class: "sub" }, sub) : null,
    );
    put(
      cells.state,
      el("span", { class: `state ${m.state}`, "data-state": m.state }, m.state),
      m.restarts ? el("div", { class: "sub" }, `${m.restarts} restarts`) : null,
    );
    if (!this.admin) return;
    put(cells.replicas, replicaLines(m, this.serverPid));
    cells.memory.textContent = m.resident_bytes ? bytes(m.resident_bytes) : "—";
    put(
      cells.requests,
      el("div", {}, `${m.in_flight} running`),
      el("div", { class: "sub" }, `${m.waiting} queued`),
    );
    put(
      cells.error,
      m.last_error ? el("div", { class: "last-error", title: m.last_error }, m.last_error) : null,
    );
    this.enable(row);
  }

  actions(row, name) {
    const button = (action, label, handler, cls) =>
      el(
        "button",
        { type: "button", "data-action": action, class: cls, onclick: () => this.run(row, label, handler) },
        label,
      );
    const device = el("input", {
      value: "cpu",
      "aria-label": `device for a new ${name} replica`,
      list: "devices",
      "data-field": "device",
    });
    const buttons = {
      load: button("load", "Load", () => call(`api/v1/${enc(name)}/activate`, { method: "POST" }), "primary"),
      unload: button("unload", "Unload", () => this.unload(row), "danger"),
      add: button("add", "+ replica", () =>
        call(`api/v1/${enc(name)}/add`, { method: "POST", body: { device: device.value.trim() } }),
      ),
      remove: button("remove", "− replica", () => call(`api/v1/${enc(name)}/remove`, { method: "POST" })),
    };
    buttons.add.title = "start one more replica (a process) on the device";
    buttons.remove.title = "stop the least busy replica, once its requests finish";
    const logs = el(
      "button",
      { type: "button", class: "link", "data-action": "logs", onclick: () => this.hooks.openLogs(name) },
      "logs",
    );
    const pending = el("span", { class: "pending", "aria-live": "polite" });
    const box = el(
      "div",
      { class: "actions" },
      buttons.load,
      buttons.unload,
      device,
      buttons.add,
      buttons.remove,
      logs,
      pending,
    );
    return { box, buttons, pending };
  }

  enable(row) {
    const m = row.model;
    const busy = this.pending.has(m.name);
    const { buttons } = row.actions;
    buttons.load.disabled = busy || STARTED.has(m.state) || m.state === "unloading";
    buttons.unload.disabled = busy || m.state === "unloaded" || m.state === "unloading";
    buttons.add.disabled = busy || m.state === "unloading";
    buttons.remove.disabled = busy || !(m.replicas || []).length;
  }

  async unload(row) {
    const m = row.model;
    const pids = (m.replicas || []).map((r) => r.pid).filter(Boolean);
    const text =
      `Every replica of ${m.name} stops` +
      (pids.length ? ` (pid ${pids.join(", ")})` : "") +
      (m.resident_bytes ? ` and its ${bytes(m.resident_bytes)} are freed` : "") +
      `. ${m.in_flight} requests are in flight. It loads again on its next request or with Load.`;
    if (!(await this.hooks.confirm(`Unload ${m.name}?`, text, "Unload"))) return null;
    return call("unloadmodel", { method: "POST", body: { model: m.name } });
  }

  /** Run one button's call: the row's buttons are off meanwhile; an error is shown as the API
   * worded it; the table refreshes right after. */
  async run(row, label, handler) {
    const name = row.model.name;
    this.pending.add(name);
    this.enable(row);
    row.actions.pending.textContent = `${label.toLowerCase()}…`;
    try {
      await handler();
    } catch (error) {
      this.hooks.notify(`${label} ${name}: ${error.message}`);
    } finally {
      this.pending.delete(name);
      row.actions.pending.textContent = "";
      this.enable(row);
      this.hooks.refresh();
    }
  }
}

// A llama-server replica has slots: "1/4 slots busy"; others count their requests in flight.
function busyness(r) {
  const slots = r.details && r.details.slots;
  return slots ? `${slots.busy}/${slots.total} slots busy` : `${r.in_flight} busy`;
}

function replicaLines(m, serverPid) {
  const where = (r) => (!r.pid ? "remote" : r.pid === serverPid ? "in server" : `pid ${r.pid}`);
  const running = (m.replicas || []).map((r) =>
    el(
      "div",
      { class: "replica", "data-pid": r.pid ?? "" },
      [where(r), r.device, busyness(r), r.resident_bytes ? bytes(r.resident_bytes) : null]
        .filter(Boolean)
        .join(" · "),
    ),
  );
  const starting = (m.starting || []).map((r) =>
    el("div", { class: "replica starting" }, `starting on ${r.device}…`),
  );
  const all = [...running, ...starting];
  return all.length ? all : ["—"];
}

const enc = encodeURIComponent;
