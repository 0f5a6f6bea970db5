"""The OpenAPI document: each route's real error statuses in OpenAI's envelope, no 422, and a
schema for every request body."""

from __future__ import annotations

from typing import Any

import pytest

from mmserve.api import statuses
from mmserve.api.app import create_app
from mmserve.config import Settings
from mmserve.errors import RELAYED_STATUSES, UpstreamRejected

ENVELOPE = {"$ref": "#/components/schemas/ErrorResponse"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return create_app(Settings.model_validate({"models": []})).openapi()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, ops in document["paths"].items() for m, op in ops.items()]


def test_no_operation_documents_a_422(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        assert "422" not in operation["responses"], (method, path)
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_every_error_status_has_the_envelope(document: dict[str, Any]) -> None:
    ready = ("get", "/ready", "503")  # not ready: which models, not an error envelope
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")) and (method, path, status) != ready:
                schema = response["content"]["application/json"]["schema"]
                assert schema == ENVELOPE, (method, path, status)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("post", "/v1/chat/completions", {"400", "401", "403", "404", "413", "429", "500", "502",
                                          "503", "504"}),
        ("get", "/v1/models", {"401", "403", "500"}),
        ("get", "/v1/models/{model_id}", {"401", "403", "404", "500"}),
        ("post", "/api/v1/models", {"400", "401", "403", "404", "409", "413", "429", "500",
                                    "503"}),
        ("get", "/health", {"500"}),
        ("get", "/ready", {"500", "503"}),
    ],
)  # fmt: skip
def test_routes_document_the_statuses_they_answer(
    document: dict[str, Any], method: str, path: str, expected: set[str]
) -> None:
    responses = document["paths"][path][method]["responses"]
    assert {s for s in responses if s[0] in "45"} == expected


def test_streaming_routes_document_their_event_stream(document: dict[str, Any]) -> None:
    for path in ("/v1/chat/completions", "/v1/completions"):
        content = document["paths"][path]["post"]["responses"]["200"]["content"]
        assert set(content) == {"application/json", "text/event-stream"}


@pytest.mark.parametrize(
    ("path", "required"),
    [
        ("/v1/embeddings", {"model", "input"}),
        ("/loadmodel", set()),  # a configured model or a file: see its anyOf
        ("/api/v1/{model}/call", set()),
    ],
)
def test_bodies_have_schemas(document: dict[str, Any], path: str, required: set[str]) -> None:
    body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    schema = resolve(document, body["schema"])
    assert set(schema.get("required", [])) == required
    assert schema.get("properties") or schema.get("anyOf")


def test_a_runtime_model_has_one_schema_per_kind(document: dict[str, Any]) -> None:
    body = document["paths"]["/api/v1/models"]["post"]["requestBody"]["content"]
    schema = body["application/json"]["schema"]
    kinds = {
        resolve(document, form)["properties"]["kind"]["const"]: resolve(document, form)
        for form in schema["oneOf"]
    }
    assert set(kinds) == {"llm", "embedding", "vision", "http", "subprocess"}
    assert set(kinds["http"]["required"]) == {"name", "kind", "base_url"}
    assert set(kinds["subprocess"]["required"]) == {"name", "kind", "command"}
    assert all(form["additionalProperties"] is False for form in kinds.values())


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return document["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def test_a_relayed_status_is_one_the_relaying_routes_document() -> None:
    documented = {s for s in statuses.INFERENCE if isinstance(s, int)}
    assert documented >= RELAYED_STATUSES
    teapot = UpstreamRejected(418, "no", type=None, code=None, param=None)
    assert teapot.status == 400
    assert UpstreamRejected(429, "slow down", type=None, code=None, param=None).status == 429
