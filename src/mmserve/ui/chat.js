// The playground's chat: a conversation with one chat model over POST /v1/chat/completions,
// streamed (server-sent events), each token shown as it arrives; Stop aborts the request, which
// the server turns into a cancelled generation.

import { lines } from "./api.js";
import { el } from "./dom.js";

export class ChatView {
  /** `parts`: model, temperature, maxTokens, log, form, input, send, stop, reset, stats. */
  constructor(parts, hooks) {
    this.parts = parts;
    this.hooks = hooks;
    this.messages = [];
    this.controller = null;
    parts.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.send();
    });
    parts.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        this.send();
      }
    });
    parts.stop.addEventListener("click", () => this.controller && this.controller.abort());
    parts.reset.addEventListener("click", () => this.reset());
    parts.model.addEventListener("change", () => this.reset());
    this.reset();
  }

  reset() {
    if (this.controller) this.controller.abort();
    this.messages = [];
    this.parts.log.replaceChildren(el("p", { class: "empty" }, "Pick a model and say something."));
    this.parts.stats.textContent = "";
  }

  async send() {
    const text = this.parts.input.value.trim();
    if (!text || this.controller || !this.parts.model.value) return;
    this.parts.input.value = "";
    if (!this.messages.length) this.parts.log.replaceChildren();
    this.messages.push({ role: "user", content: text });
    this.bubble("user", text);
    const reply = this.bubble("assistant streaming", "");
    this.busy(true);
    try {
      const answer = await this.stream(reply);
      this.messages.push({ role: "assistant", content: answer });
    } catch (error) {
      if (error.name === "AbortError" && reply.textContent) {
        // Stopped: the answer is kept as far as it got.
        this.messages.push({ role: "assistant", content: reply.textContent });
      } else {
        if (error.name !== "AbortError") this.bubble("error", error.message);
        this.messages.pop(); // the question goes unanswered: ask it again, or another
      }
    } finally {
      reply.classList.remove("streaming");
      this.busy(false);
    }
  }

  /** Stream one answer into `bubble`; resolves to its text, throws on an error frame. */
  async stream(bubble) {
    const p = this.parts;
    this.controller = new AbortController();
    const body = {
      model: p.model.value,
      messages: this.messages,
      temperature: Number(p.temperature.value),
      max_tokens: Number(p.maxTokens.value),
      stream: true,
      stream_options: { include_usage: true },
    };
    const started = performance.now();
    let first = null;
    let usage = null;
    for await (const line of lines("v1/chat/completions", {
      method: "POST",
      body,
      signal: this.controller.signal,
    })) {
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta.content;
      if (delta) {
        first = first ?? performance.now();
        bubble.textContent += delta;
        p.log.scrollTop = p.log.scrollHeight;
      }
      usage = chunk.usage || usage;
    }
    this.showStats(usage, started, first);
    return bubble.textContent;
  }

  showStats(usage, started, first) {
    const elapsed = (performance.now() - (first ?? started)) / 1000;
    const tokens = usage ? usage.completion_tokens : null;
    const parts = [];
    if (tokens !== null) parts.push(`${tokens} tokens`);
    if (tokens && elapsed > 0) parts.push(`${(tokens / elapsed).toFixed(1)} tokens/s`);
    if (first !== null) parts.push(`first token after ${Math.round(first - started)} ms`);
    this.parts.stats.textContent = parts.join(" · ");
  }

  bubble(kind, text) {
    const node = el("div", { class: `bubble ${kind}` }, text);
    this.parts.log.append(node);
    this.parts.log.scrollTop = this.parts.log.scrollHeight;
    return node;
  }

  busy(on) {
    if (!on) this.controller = null;
    this.parts.send.hidden = on;
    this.parts.stop.hidden = !on;
  }
}
