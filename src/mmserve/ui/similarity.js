// The playground's embeddings: two sentences through POST /v1/embeddings, and how alike the
// model finds them (the cosine of their vectors).

import { call } from "./api.js";

export function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i += 1) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return na && nb ? dot / Math.sqrt(na * nb) : 0;
}

export class SimilarityView {
  /** `parts`: model, form, a, b, result, score, bar, meta. */
  constructor(parts, hooks) {
    this.parts = parts;
    this.hooks = hooks;
    parts.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.compare();
    });
  }

  async compare() {
    const p = this.parts;
    if (!p.model.value) return;
    const started = performance.now();
    try {
      const answer = await call("v1/embeddings", {
        method: "POST",
        body: { model: p.model.value, input: [p.a.value, p.b.value] },
      });
      const [a, b] = answer.data.map((d) => d.embedding);
      const score = cosine(a, b);
      p.score.textContent = score.toFixed(3);
      p.bar.style.width = `${Math.max(0, score) * 100}%`;
      p.meta.textContent = `${a.length} dimensions · ${Math.round(performance.now() - started)} ms`;
      p.result.hidden = false;
    } catch (error) {
      this.hooks.notify(`embeddings: ${error.message}`);
    }
  }
}
