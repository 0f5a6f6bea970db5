#!/usr/bin/env python3
"""The smallest mmserve model in Python: a program that speaks docs/worker-protocol.md.

Serve it with `kind: subprocess` and `command: [python3, examples/echo_model.py]`. It echoes the
last chat message word by word, embeds each text as [length, vowel count], and answers a call
(POST /api/v1/{model}/call) with the JSON it was sent and its key count. No mmserve import:
any language that reads and writes lines of JSON can do the same (examples/echo_model.js).
"""

import json, sys

def send(message):  # one JSON object per line, flushed at once
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()

send({"type": "ready", "protocol": 1,
      "info": {"capabilities": ["chat", "embed", "call"], "context_length": 4096, "dimensions": 2}})
for line in sys.stdin:  # the loop ends when the parent closes stdin
    if not line.strip():
        continue
    request = json.loads(line)
    op, rid, body = request["op"], request.get("id"), request.get("body", {})
    if op == "shutdown":
        break
    try:
        if op == "ping":
            send({"type": "pong", "id": rid})
        elif op == "chat":
            words = body["messages"][-1]["content"].split()
            for i, word in enumerate(words):
                send({"type": "chunk", "id": rid, "data": {"type": "delta", "text": (" " if i else "") + word}})
            send({"type": "result", "id": rid, "data": {"type": "done", "finish_reason": "stop",
                  "prompt_tokens": len(words), "completion_tokens": len(words)}})
        elif op == "embed":
            vectors = [[float(len(t)), float(sum(c in "aeiou" for c in t))] for t in body["inputs"]]
            send({"type": "result", "id": rid, "data": {"vectors": vectors, "prompt_tokens": len(vectors)}})
        elif op == "call":
            send({"type": "result", "id": rid, "data": {"echo": body, "keys": len(body)}})
        elif op != "cancel":
            send({"type": "error", "id": rid, "error": {"kind": "unsupported", "message": f"no op {op!r}"}})
    except Exception as exc:  # report it; never die on one bad request
        send({"type": "error", "id": rid, "error": {"kind": "backend", "message": repr(exc)}})
