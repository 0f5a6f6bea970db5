// The playground's vision: an image dropped (or chosen) goes to POST /api/v1/{model}/call as a
// data URL; OCR answers with the text it read, a classifier with its top labels.

import { call } from "./api.js";
import { el } from "./dom.js";

export class VisionView {
  /** `parts`: model, topK, drop, file, preview, text, result. */
  constructor(parts, hooks) {
    this.parts = parts;
    this.hooks = hooks;
    const { drop, file } = parts;
    drop.addEventListener("dragover", (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      const [image] = e.dataTransfer.files;
      if (image) this.send(image);
    });
    drop.addEventListener("keydown", (e) => (e.key === "Enter" || e.key === " ") && file.click());
    file.addEventListener("change", () => file.files[0] && this.send(file.files[0]));
  }

  async send(image) {
    const p = this.parts;
    if (!p.model.value) return;
    const url = await dataUrl(image);
    p.preview.src = url;
    p.preview.hidden = false;
    const size = `${Math.round(image.size / 1024)} KiB`;
    p.text.textContent = `${image.name} · ${size} · drop another to replace it`;
    p.result.replaceChildren(el("p", { class: "muted" }, `${p.model.value} is looking…`));
    try {
      const body = { image: url, top_k: Number(p.topK.value) || 5 };
      const answer = await call(`api/v1/${encodeURIComponent(p.model.value)}/call`, { method: "POST", body });
      p.result.replaceChildren(render(answer));
    } catch (error) {
      p.result.replaceChildren(el("p", { class: "error" }, error.message));
    }
  }
}

function dataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function render(answer) {
  if (Array.isArray(answer.labels)) {
    return el(
      "div",
      { class: "labels", "data-result": "labels" },
      answer.labels.map((l) => [
        el("span", { class: "label" }, l.label),
        el("div", { class: "bar" }, el("span", { style: `width: ${(l.score * 100).toFixed(1)}%` })),
        el("span", { class: "num" }, l.score.toFixed(3)),
      ]),
    );
  }
  if (typeof answer.text === "string") {
    const lines = answer.lines || [];
    return el(
      "div",
      {},
      el("pre", { "data-result": "text" }, answer.text || "(no text found)"),
      lines.length ? el("p", { class: "muted" }, `${lines.length} lines read`) : null,
    );
  }
  return el("pre", { "data-result": "json" }, JSON.stringify(answer, null, 2));
}
