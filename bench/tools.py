"""Tool calling on qwen2.5-0.5b through mmserve: how often the right tool is called with valid
arguments, and what a grammar costs in tokens/s.

20 fixed prompts, each meant for one of 3 tools (weather, time, currency conversion), sent with
all 3 tools at temperature 0, once with `tool_choice: auto` and once with `required`. A reply
counts as right when it calls the prompt's tool (first call) with arguments that validate
against that tool's parameter schema. Then tokens/s of the same generation length with and
without a JSON-schema grammar (`response_format: json_schema` against plain text), as the
completion tokens of the reply over its wall time, medians over the prompts.

    .venv/bin/python bench/tools.py [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema

from common import serving_mmserve

MODEL = "qwen"


def tool(name: str, description: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": list(properties),
            },
        },
    }


TOOLS = [
    tool("get_weather", "Get the current weather in a city", city={"type": "string"}),
    tool("get_time", "Get the current local time in a city", city={"type": "string"}),
    tool(
        "convert_currency",
        "Convert an amount of money from one currency to another",
        amount={"type": "number"},
        source={"type": "string", "description": "ISO code, e.g. USD"},
        target={"type": "string", "description": "ISO code, e.g. EUR"},
    ),
]
PROMPTS = [
    ("What is the weather in Paris?", "get_weather"),
    ("Is it raining in London right now?", "get_weather"),
    ("How hot is it in Cairo today?", "get_weather"),
    ("Tell me the forecast for Tokyo.", "get_weather"),
    ("Do I need an umbrella in Seattle?", "get_weather"),
    ("Is it snowing in Oslo?", "get_weather"),
    ("What's the temperature in Lima?", "get_weather"),
    ("What time is it in Tokyo?", "get_time"),
    ("What is the local time in New York?", "get_time"),
    ("Tell me the current time in Sydney.", "get_time"),
    ("Is it morning in Berlin now?", "get_time"),
    ("What hour is it in Mumbai?", "get_time"),
    ("Give me the time in Mexico City.", "get_time"),
    ("Convert 100 USD to EUR.", "convert_currency"),
    ("How many yen is 50 dollars?", "convert_currency"),
    ("Change 20 pounds into euros.", "convert_currency"),
    ("What is 1000 EUR in Swiss francs?", "convert_currency"),
    ("How much is 75 Canadian dollars in US dollars?", "convert_currency"),
    ("Exchange 300 euros to Japanese yen.", "convert_currency"),
    ("Convert 12.5 GBP to USD.", "convert_currency"),
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def valid(reply: dict[str, Any]) -> str | None:
    """The tool the reply's first call names, if its arguments validate against that tool's
    schema; else None (no call, an unknown tool, arguments that do not parse or validate)."""
    calls = reply["choices"][0]["message"].get("tool_calls") or []
    name = calls[0]["function"]["name"] if calls else None
    if name not in SCHEMAS:
        return None
    try:
        jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), SCHEMAS[name])
    except (ValueError, jsonschema.ValidationError):
        return None
    return name


def chat(client: httpx.Client, **body: Any) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    reply = client.post("/v1/chat/completions", json={"model": MODEL, "temperature": 0, **body})
    reply.raise_for_status()
    return reply.json(), time.perf_counter() - started


def measure() -> dict[str, Any]:
    config = {"models": [{"name": MODEL, "kind": "llm", "source": "catalog:qwen2.5-0.5b"}]}
    out: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-tools-") as tmp,
        serving_mmserve(Path(tmp), config) as (url, _),
        httpx.Client(base_url=url, timeout=300) as client,
    ):
        for choice in ("auto", "required"):
            called = [
                valid(chat(client, messages=[{"role": "user", "content": p}], tools=TOOLS,
                           tool_choice=choice, max_tokens=120)[0])
                for p, _ in PROMPTS
            ]  # fmt: skip
            hits = sum(c == want for c, (_, want) in zip(called, PROMPTS, strict=True))
            out[choice] = hits / len(PROMPTS)
            out[choice + "_valid"] = sum(c is not None for c in called) / len(PROMPTS)
            print(f"{choice}: {hits}/{len(PROMPTS)} right, {called}", flush=True)
        schema = {
            "type": "object",
            "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
            "required": ["answer", "confidence"],
        }
        speeds: dict[str, list[float]] = {"plain": [], "grammar": []}
        for prompt, _ in PROMPTS:
            messages = [{"role": "user", "content": prompt}]
            for name, extra in (
                ("plain", {}),
                ("grammar", {"response_format": {"type": "json_schema",
                                                 "json_schema": {"name": "a", "schema": schema}}}),
            ):  # fmt: skip
                reply, seconds = chat(client, messages=messages, max_tokens=48, **extra)
                speeds[name].append(reply["usage"]["completion_tokens"] / seconds)
        out["tokens_per_s"] = {k: statistics.median(v) for k, v in speeds.items()}
        print(f"tokens/s: {out['tokens_per_s']}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = measure()
    t = out["tokens_per_s"]
    print(
        f"| right tool, valid arguments | auto {out['auto']:.0%} | required {out['required']:.0%} |"
        f"\n| a valid call of some tool | auto {out['auto_valid']:.0%} | "
        f"required {out['required_valid']:.0%} |"
        f"\n| tokens/s | plain {t['plain']:.1f} | grammar {t['grammar']:.1f} "
        f"(÷ {t['grammar'] / t['plain']:.2f}) |"
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
