"""mmserve as the front door of another mmserve serving a real model (SmolLM2): the gateway's
`kind: http` model relays chat, streams it as it is generated, and says 502 once the upstream
is gone."""

from __future__ import annotations

import time

import openai
import pytest

pytestmark = pytest.mark.slow

PROMPT = [{"role": "user", "content": "Count from one to twenty in words."}]


@pytest.fixture(scope="module")
def upstream(server_factory, tmp_path_factory: pytest.TempPathFactory):
    config = tmp_path_factory.mktemp("real-upstream") / "config.yaml"
    config.write_text("models:\n  - {name: smollm2, kind: llm, source: 'catalog:smollm2'}\n")
    server = server_factory(config)
    server.wait_models()
    return server


@pytest.fixture(scope="module")
def gateway(server_factory, upstream, tmp_path_factory: pytest.TempPathFactory):
    config = tmp_path_factory.mktemp("real-gateway") / "config.yaml"
    base = f"{upstream.url}/v1"
    config.write_text(
        f"models:\n  - {{name: relayed, kind: http, base_url: '{base}', upstream_model: smollm2}}\n"
    )
    server = server_factory(config)
    server.wait_models()
    return server


def test_relayed_answers_match_the_upstream_and_stream_as_generated(upstream, gateway) -> None:
    direct = openai.OpenAI(base_url=f"{upstream.url}/v1", api_key="-", max_retries=0)
    relayed = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="-", max_retries=0)
    ask = {"messages": PROMPT, "max_tokens": 48, "temperature": 0, "seed": 1}
    want = direct.chat.completions.create(model="smollm2", **ask).choices[0].message.content
    got = relayed.chat.completions.create(model="relayed", **ask).choices[0].message.content
    assert got == want and got

    arrivals: list[float] = []
    text = ""
    for chunk in relayed.chat.completions.create(model="relayed", stream=True, **ask):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
            text += chunk.choices[0].delta.content
    assert text == want
    assert len(arrivals) > 10  # one chunk per token, not one buffered answer
    assert arrivals[-1] - arrivals[0] > 0.1  # the first arrived while the rest was generated


def test_upstream_gone_is_a_502(upstream, gateway) -> None:
    upstream.stop()
    relayed = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="-", max_retries=0)
    with pytest.raises(openai.APIStatusError) as gone:
        relayed.chat.completions.create(model="relayed", messages=PROMPT, max_tokens=4)
    assert gone.value.status_code == 502
    assert upstream.url in gone.value.message
