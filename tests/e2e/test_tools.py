"""Tool calls and structured outputs on a real tool-calling model (Qwen2.5-Coder-0.5B on
llama-server), through the official openai client and LangChain."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from pydantic import BaseModel
from tests.conftest import ServerProcess

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the current time in a timezone",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}
TOOLS = [WEATHER, TIME]
PARIS = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server(server_factory, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    config = tmp_path_factory.mktemp("tools") / "mmserve.yaml"
    config.write_text(
        "models:\n"
        "  - {name: qwen, kind: llm, source: 'catalog:qwen2.5-0.5b', parallel: 2}\n"
        "  - {name: smollm2, kind: llm, source: 'catalog:smollm2', parallel: 2}\n"
    )
    server = server_factory(config)
    models = server.wait_models(timeout=300)
    assert all(m["state"] == "ready" for m in models), models
    return server


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def ask(client: openai.OpenAI, **kwargs: object) -> object:
    fields = {"temperature": 0, "max_tokens": 120, **kwargs}
    return client.chat.completions.create(model="qwen", messages=PARIS, tools=TOOLS, **fields)


def valid_call(call: object, name: str = "get_weather") -> dict:
    assert call.type == "function" and call.id.startswith("call_")  # type: ignore[attr-defined]
    assert call.function.name == name  # type: ignore[attr-defined]
    arguments = json.loads(call.function.arguments)  # type: ignore[attr-defined]
    schema = next(t for t in TOOLS if t["function"]["name"] == name)["function"]["parameters"]
    jsonschema.validate(arguments, schema)
    return arguments


def test_auto_gives_a_weather_call_with_a_city(client: openai.OpenAI) -> None:
    reply = ask(client, tool_choice="auto")
    choice = reply.choices[0]  # type: ignore[attr-defined]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert valid_call(call)["city"] == "Paris"


@pytest.mark.parametrize(
    "choice",
    ["required", {"type": "function", "function": {"name": "get_time"}}],
    ids=["required", "named"],
)
def test_required_and_named_always_give_a_valid_call(client: openai.OpenAI, choice) -> None:
    name = "get_time" if isinstance(choice, dict) else None
    questions = ["What is the weather in Paris?", "Tell me a joke.", "What time is it in Tokyo?"]
    for question in questions:
        reply = client.chat.completions.create(
            model="qwen", messages=[{"role": "user", "content": question}], tools=TOOLS,
            tool_choice=choice, temperature=0, max_tokens=120,
        )  # fmt: skip
        choice_ = reply.choices[0]
        assert choice_.finish_reason == "tool_calls", choice_
        for call in choice_.message.tool_calls or []:
            valid_call(call, name or call.function.name)
        assert choice_.message.tool_calls
        if name:
            assert [c.function.name for c in choice_.message.tool_calls] == [name]


def test_the_tool_result_sent_back_gives_a_text_answer(client: openai.OpenAI) -> None:
    first = ask(client).choices[0].message  # type: ignore[attr-defined]
    (call,) = first.tool_calls
    history = [
        *PARIS,
        first.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 18})},
    ]
    reply = client.chat.completions.create(
        model="qwen", messages=history, tools=TOOLS, temperature=0, max_tokens=60
    )
    answer = reply.choices[0]
    assert answer.finish_reason == "stop" and not answer.message.tool_calls
    assert "18" in (answer.message.content or "")


def test_tool_choice_none_answers_in_words(client: openai.OpenAI) -> None:
    reply = ask(client, tool_choice="none", max_tokens=20).choices[0]  # type: ignore[attr-defined]
    assert not reply.message.tool_calls and reply.message.content
    assert not reply.message.content.lstrip().startswith(("{", "<", "[", "`"))


def test_a_streamed_call_is_reassembled_by_the_clients_own_helpers(
    client: openai.OpenAI,
) -> None:
    with client.chat.completions.stream(
        model="qwen", messages=PARIS, tools=TOOLS, tool_choice="required", temperature=0,
        max_tokens=120,
    ) as stream:  # fmt: skip
        deltas = list(stream)
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    assert valid_call(call)["city"] == "Paris"
    assert final.choices[0].finish_reason == "tool_calls"
    # The name came first, then the arguments in more than one fragment.
    fragments = [e for e in deltas if e.type == "tool_calls.function.arguments.delta"]
    assert len(fragments) > 1


def test_json_schema_replies_validate(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "population": {"type": "integer", "minimum": 0},
            "landmarks": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        },
        "required": ["name", "population", "landmarks"],
        "additionalProperties": False,
    }
    cities = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo"]
    for model in ("qwen", "smollm2"):
        for i in range(10):
            reply = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": f"Describe {cities[i % 5]} as JSON."}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "city", "schema": schema, "strict": True},
                },
                temperature=0.7,
                seed=i,
                max_tokens=200,
            )
            jsonschema.validate(json.loads(reply.choices[0].message.content or ""), schema)


def test_schema_keywords_llama_cpp_cannot_enforce_are_refused(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="qwen", messages=PARIS,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        )  # fmt: skip
    assert "uniqueItems" in refused.value.message
    assert refused.value.param == "response_format.json_schema.schema.properties.tags.uniqueItems"


def test_a_template_without_tools_says_so(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="smollm2", messages=PARIS, tools=TOOLS)
    assert "cannot call tools" in refused.value.message and refused.value.param == "tools"


def test_a_malformed_tool_is_a_400_naming_the_field(client: openai.OpenAI) -> None:
    bad = {"type": "function", "function": {"name": "x", "parameters": {"type": "string"}}}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="qwen", messages=PARIS, tools=[bad])
    assert refused.value.param == "tools[0].function.parameters"


class City(BaseModel):
    name: str
    country: str


def test_langchain_structured_output_and_bind_tools(server: ServerProcess) -> None:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        model="qwen", base_url=f"{server.url}/v1", api_key="unused", temperature=0, max_retries=0
    )
    question = "Paris is the capital of which country? Answer with the city and its country."
    for method in ("json_schema", "function_calling"):
        city = chat.with_structured_output(City, method=method).invoke(question)
        assert isinstance(city, City) and city.name, method

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return "sunny"

    message = chat.bind_tools([get_weather]).invoke("What is the weather in Paris?")
    assert [c["name"] for c in message.tool_calls] == ["get_weather"]
    assert message.tool_calls[0]["args"]["city"] == "Paris"


def test_a_remote_model_relays_tools_unchanged(
    server: ServerProcess, server_factory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    config = tmp_path_factory.mktemp("gateway") / "mmserve.yaml"
    config.write_text(
        "models:\n"
        f"  - {{name: relayed, kind: http, base_url: '{server.url}/v1', upstream_model: qwen}}\n"
    )
    gateway = server_factory(config)
    gateway.wait_models()
    relayed = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="-", max_retries=0)
    reply = relayed.chat.completions.create(
        model="relayed", messages=PARIS, tools=TOOLS, tool_choice="required", temperature=0,
        max_tokens=120, n=2, logprobs=True,
    )  # fmt: skip
    assert len(reply.choices) == 2
    for choice in reply.choices:
        assert choice.finish_reason == "tool_calls"
        assert valid_call(choice.message.tool_calls[0])["city"] == "Paris"
