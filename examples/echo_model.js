#!/usr/bin/env node
// The smallest mmserve model in JavaScript (Node.js): a program that speaks docs/worker-protocol.md.
// Serve it with `kind: subprocess` and `command: [node, examples/echo_model.js]`. It answers chat
// with the last message reversed word by word, embeds each text as [length, word count], and
// answers a call (POST /api/v1/{model}/call) with the JSON it was sent and its key count.
"use strict";
const readline = require("readline");

function send(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

function handle(request) {
  const { op, id, body = {} } = request;
  if (op === "ping") return send({ type: "pong", id });
  if (op === "cancel") return; // each request is answered at once: nothing to cancel
  if (op === "chat") {
    const words = body.messages[body.messages.length - 1].content.split(/\s+/).filter(Boolean).reverse();
    words.forEach((word, i) => send({ type: "chunk", id, data: { type: "delta", text: (i ? " " : "") + word } }));
    return send({ type: "result", id, data: { type: "done", finish_reason: "stop",
      prompt_tokens: words.length, completion_tokens: words.length } });
  }
  if (op === "embed") {
    const vectors = body.inputs.map((t) => [t.length, t.split(/\s+/).filter(Boolean).length]);
    return send({ type: "result", id, data: { vectors, prompt_tokens: vectors.length } });
  }
  if (op === "call") {
    return send({ type: "result", id, data: { echo: body, keys: Object.keys(body).length } });
  }
  send({ type: "error", id, error: { kind: "unsupported", message: `no op ${op}` } });
}

send({ type: "ready", protocol: 1, info: { capabilities: ["chat", "embed", "call"], context_length: 4096, dimensions: 2 } });
const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (!line.trim()) return;
  let request;
  try {
    request = JSON.parse(line);
  } catch (error) {
    return send({ type: "error", id: null, error: { kind: "invalid_request", message: String(error) } });
  }
  if (request.op === "shutdown") return process.exit(0);
  try {
    handle(request);
  } catch (error) { // report it; never die on one bad request
    send({ type: "error", id: request.id ?? null, error: { kind: "backend", message: String(error) } });
  }
});
lines.on("close", () => process.exit(0)); // stdin closed: the server is gone
