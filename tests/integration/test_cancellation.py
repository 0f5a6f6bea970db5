"""A client that leaves mid-stream cancels its request in the worker."""

from __future__ import annotations

import time

import httpx
import openai


def test_disconnect_mid_stream_frees_the_worker(fake_server) -> None:
    # "slow" has one replica that runs one request at a time at 20 tokens/s: 400 tokens would
    # hold it for 20 s if the disconnect did not cancel the generation.
    body = {
        "model": "slow",
        "stream": True,
        "max_tokens": 400,
        "messages": [{"role": "user", "content": "x"}],
    }
    with httpx.stream(
        "POST", f"{fake_server.url}/v1/chat/completions", json=body, timeout=30
    ) as response:
        data = (line for line in response.iter_lines() if line)
        assert all(next(data).startswith("data: ") for _ in range(3))
    client = openai.OpenAI(
        base_url=f"{fake_server.url}/v1", api_key="unused", max_retries=0, timeout=10
    )
    started = time.monotonic()
    with client:  # closes its connection: an open socket left to gc is a ResourceWarning
        reply = client.completions.create(model="slow", prompt="next", max_tokens=2)
    assert reply.choices[0].text == "word1 word2"
    assert time.monotonic() - started < 8, "the abandoned stream kept the worker busy"
    slow = next(m for m in fake_server.status()["models"] if m["name"] == "slow")
    assert slow["replicas"][0]["in_flight"] == 0
