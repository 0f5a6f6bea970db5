from __future__ import annotations

import pytest

from mmserve import errors


def test_envelope_has_openai_shape() -> None:
    exc = errors.ModelNotFound("no such model", param="model")
    assert exc.status == 404
    assert exc.envelope() == {
        "error": {
            "message": "no such model",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


@pytest.mark.parametrize(
    ("kind", "cls", "status"),
    [
        ("invalid_request", errors.InvalidRequest, 400),
        ("context_length", errors.ContextLengthExceeded, 400),
        ("unsupported", errors.UnsupportedCapability, 400),
        ("crashed", errors.WorkerCrashed, 503),
        ("backend", errors.BackendError, 500),
        ("something-new", errors.BackendError, 500),
    ],
)
def test_worker_kinds_round_trip(kind: str, cls: type[errors.MMServeError], status: int) -> None:
    exc = errors.from_kind(kind, "why")
    assert type(exc) is cls
    assert exc.status == status
    assert exc.message == "why"
