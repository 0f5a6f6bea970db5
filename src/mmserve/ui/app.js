// The dashboard's entry point: find out what the key may do, then poll the server every second
// and hand what it says to the views.
//
// Access, probed once per key:
//   GET /v1/models  401 -> ask for a key (showing the API's message when a key was given)
//   GET /api/v1/    200 -> admin: the full table, buttons, charts, logs
//                   403 -> inference only: states from /v1/models, the playground; no buttons

import { ApiError, apiKey, call } from "./api.js";
import { $, $$, bytes, el, fillSelect } from "./dom.js";
import { ChatView } from "./chat.js";
import { LogsView } from "./logs.js";
import { ModelsView } from "./models.js";
import { SimilarityView } from "./similarity.js";
import { TrendsView } from "./trends.js";
import { VisionView } from "./vision.js";

const POLL_MS = 1000;

const page = {
  admin: false,
  tab: "models",
  generation: 0, // bumped when the key changes: a poll loop of the old key stops
  offline: false, // the last poll failed (its notice goes away with the next good one)
};

// ---- notices and dialogs ------------------------------------------------------------------------

/** A message at the top of the page: an error stays until dismissed, an "info" fades after 4 s. */
function notify(message, kind = "error") {
  const box = $("#notice");
  box.classList.toggle("info", kind === "info");
  $("#notice-text").textContent = message;
  box.hidden = false;
  if (kind === "info")
    setTimeout(() => $("#notice-text").textContent === message && (box.hidden = true), 4000);
}

function confirmDialog(title, text, ok) {
  const box = $("#confirm-dialog");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = ok;
  box.hidden = false;
  $("#confirm-cancel").focus();
  return new Promise((resolve) => {
    const done = (answer) => {
      box.hidden = true;
      $("#confirm-ok").onclick = $("#confirm-cancel").onclick = box.onkeydown = null;
      resolve(answer);
    };
    $("#confirm-ok").onclick = () => done(true);
    $("#confirm-cancel").onclick = () => done(false);
    box.onkeydown = (e) => e.key === "Escape" && done(false);
  });
}

function askKey(message) {
  page.generation += 1; // stop polling with the key that failed
  $("#key-dialog").hidden = false;
  $("#key-error").textContent = message || "";
  $("#key-error").hidden = !message;
  $("#key-input").value = "";
  $("#key-input").focus();
}

$("#key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  apiKey.set($("#key-input").value.trim());
  $("#key-dialog").hidden = true;
  start();
});
$("#change-key").addEventListener("click", () => {
  apiKey.clear();
  askKey("");
});
$("#notice-close").addEventListener("click", () => ($("#notice").hidden = true));

// ---- views --------------------------------------------------------------------------------------

const models = new ModelsView($("#models tbody"), {
  notify,
  confirm: confirmDialog,
  openLogs: (name) => {
    showTab("logs");
    logs.open(name);
  },
  refresh: () => poll(page.generation).catch(() => {}), // the loop reports failures
});
const trends = new TrendsView($("#charts"));
const logs = new LogsView(
  {
    select: $("#log-model"),
    log: $("#log"),
    count: $("#log-count"),
    filter: $("#log-filter"),
    follow: $("#log-follow"),
    clear: $("#log-clear"),
    form: $("#log-controls"),
  },
  { notify },
);
const chat = new ChatView(
  {
    model: $("#chat-model"),
    temperature: $("#chat-temperature"),
    maxTokens: $("#chat-max-tokens"),
    log: $("#chat-log"),
    form: $("#chat-form"),
    input: $("#chat-input"),
    send: $("#chat-send"),
    stop: $("#chat-stop"),
    reset: $("#chat-reset"),
    stats: $("#chat-stats"),
  },
  { notify },
);
const similarity = new SimilarityView(
  {
    model: $("#embed-model"),
    form: $("#embed-form"),
    a: $("#embed-a"),
    b: $("#embed-b"),
    result: $("#embed-result"),
    score: $("#embed-score"),
    bar: $("#embed-bar"),
    meta: $("#embed-meta"),
  },
  { notify },
);
const vision = new VisionView(
  {
    model: $("#vision-model"),
    topK: $("#vision-top-k"),
    drop: $("#drop"),
    file: $("#vision-file"),
    preview: $("#vision-preview"),
    text: $("#drop-text"),
    result: $("#vision-result"),
  },
  { notify },
);

function showTab(name) {
  page.tab = name;
  for (const button of $$("#tabs button"))
    button.setAttribute("aria-selected", String(button.dataset.tab === name));
  for (const view of $$("main > .view")) view.hidden = view.id !== `view-${name}`;
  trends.show(name === "charts");
  logs.show(name === "logs");
}

$("#tabs").addEventListener("click", (e) => e.target.dataset.tab && showTab(e.target.dataset.tab));
$("#play-tabs").addEventListener("click", (e) => {
  const name = e.target.dataset.play;
  if (!name) return;
  for (const button of $$("#play-tabs button"))
    button.setAttribute("aria-selected", String(button === e.target));
  for (const part of $$("#view-playground .play")) part.hidden = part.id !== `play-${name}`;
});

// ---- access and polling -------------------------------------------------------------------------

/** What the key may do: "admin", "inference", or null (no valid key: the dialog is up). */
async function probe() {
  try {
    await call("v1/models");
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401) throw error;
    askKey(apiKey.get() ? error.message : ""); // no key yet: just ask, no error to show
    return null;
  }
  try {
    await call("api/v1/");
    return "admin";
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) return "inference";
    throw error;
  }
}

function showAccess(access) {
  page.admin = access === "admin";
  for (const node of $$("[data-needs-admin]")) node.hidden = !page.admin;
  $("#models-hint").hidden = page.admin;
  const key = apiKey.get();
  $("#access").textContent = key ? `key …${key.slice(-4)} (${access})` : "no API keys";
  $("#change-key").hidden = !key;
  models.setAdmin(page.admin);
  if (!page.admin && ["charts", "logs"].includes(page.tab)) showTab("models");
}

function showRoom(status) {
  const room = $("#room");
  if (!status) {
    room.replaceChildren();
    return;
  }
  const limit = status.max_loaded_models ? ` / ${status.max_loaded_models}` : "";
  const memory = status.max_memory ? ` / ${bytes(status.max_memory)}` : "";
  const used = status.max_memory ? Math.min(100, (100 * status.resident_bytes) / status.max_memory) : null;
  room.replaceChildren(
    el("span", {}, "loaded ", el("b", {}, `${status.loaded_models}${limit}`)),
    el(
      "span",
      {},
      "memory ",
      el("b", {}, `${bytes(status.resident_bytes)}${memory}`),
      used === null
        ? null
        : [
            " ",
            el("span", { class: "meter", title: "of max_memory" }, el("span", { style: `width: ${used}%` })),
          ],
    ),
    el("span", {}, "evictions ", el("b", {}, String(status.evictions))),
  );
}

/** One refresh: the models (and, for admin, the room and a metrics sample). */
async function poll(generation) {
  let entries;
  let serverPid = null;
  if (page.admin) {
    const [status, metrics] = await Promise.all([call("api/v1/"), call("metrics")]);
    if (generation !== page.generation) return;
    entries = status.models;
    serverPid = status.server && status.server.pid;
    showRoom(status);
    trends.setModels(entries.map((m) => m.name));
    trends.add(metrics);
  } else {
    const listing = await call("v1/models");
    if (generation !== page.generation) return;
    entries = listing.data.map((card) => ({ ...card, name: card.id }));
    showRoom(null);
  }
  models.update(entries, serverPid);
  logs.setModels(entries.map((m) => m.name));
  fillPlayground(entries);
}

function fillPlayground(entries) {
  const can = (m, capability) => (m.capabilities || []).includes(capability);
  const names = (keep) => entries.filter(keep).map((m) => m.name);
  fillSelect(
    $("#chat-model"),
    names((m) => can(m, "chat") && m.kind !== "vision"),
  );
  fillSelect(
    $("#embed-model"),
    names((m) => can(m, "embed")),
  );
  fillSelect(
    $("#vision-model"),
    names((m) => can(m, "vision")),
  );
}

async function loop(generation) {
  while (generation === page.generation) {
    try {
      await poll(generation);
      if (page.offline) $("#notice").hidden = true;
      page.offline = false;
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) return askKey(error.message);
      notify(`cannot reach the server: ${error.message}`);
      page.offline = true;
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function start() {
  const generation = ++page.generation;
  let access;
  try {
    access = await probe();
  } catch (error) {
    notify(`cannot reach the server: ${error.message}`);
    setTimeout(start, 2000);
    return;
  }
  if (access === null || generation !== page.generation) return;
  showAccess(access);
  loop(generation);
}

start();
