"""One exception tree for mmserve. Each class knows its HTTP status and OpenAI error type.

    MMServeError                       500 internal_error
    |-- ConfigError                    (start-up only; the CLI prints it and exits)
    |-- InvalidRequest                 400 invalid_request_error
    |   |-- UnsupportedCapability      400 invalid_request_error  code=unsupported_capability
    |   `-- ContextLengthExceeded      400 invalid_request_error  code=context_length_exceeded
    |-- Unauthorized                   401 invalid_request_error  code=invalid_api_key
    |-- PermissionDenied               403 permission_error       code=forbidden
    |-- ModelNotFound                  404 invalid_request_error  code=model_not_found
    |   `-- ModelFileNotFound          404 invalid_request_error  code=file_not_found
    |-- Conflict                       409 invalid_request_error  code=conflict
    |-- PayloadTooLarge                413 invalid_request_error  code=payload_too_large
    |-- TooManyRequests                429 rate_limit_error       code=queue_full (+ Retry-After)
    |-- ModelUnavailable               503 service_unavailable    code=model_unavailable
    |   |-- WorkerCrashed              503 service_unavailable    code=worker_crashed
    |   `-- RequestCancelled           503 service_unavailable    code=request_cancelled
    |-- BackendError                   500 internal_error         code=backend_error
    |-- UpstreamError                  502 upstream_error         code=bad_gateway
    |   `-- UpstreamTimeout            504 upstream_error         code=upstream_timeout
    `-- UpstreamRejected               the upstream's own 4xx (one of RELAYED_STATUSES, else 400),
                                       type, code and message

Foreign exceptions (llama.cpp, torch, httpx) are translated at the backend boundary
(`mmserve.workers.main`) into a worker error *kind*; `from_kind` turns that kind back into
one of these classes in the server. One handler in `api.app` renders the envelope.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "RELAYED_STATUSES",
    "BackendError",
    "ConfigError",
    "Conflict",
    "ContextLengthExceeded",
    "InvalidRequest",
    "MMServeError",
    "ModelFileNotFound",
    "ModelNotFound",
    "ModelUnavailable",
    "PayloadTooLarge",
    "PermissionDenied",
    "RequestCancelled",
    "TooManyRequests",
    "Unauthorized",
    "UnsupportedCapability",
    "UpstreamError",
    "UpstreamRejected",
    "UpstreamTimeout",
    "WorkerCrashed",
    "from_kind",
]


class MMServeError(Exception):
    """The server failed: a bug or a broken model, never the request's fault (see the log).

    The base of every error mmserve raises on purpose; its subclasses are the other statuses.
    """

    # Instance attributes in principle (an upstream's 4xx keeps its own status: UpstreamRejected);
    # each class sets its defaults.
    status: int = 500
    type: str = "internal_error"
    code: str | None = None
    # The name a worker uses for this error on the wire (see docs/worker-protocol.md).
    kind: ClassVar[str] = "internal"

    def __init__(
        self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}  # e.g. Retry-After on a 429

    def envelope(self) -> dict[str, Any]:
        """The body OpenAI's API returns for an error."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class ConfigError(MMServeError):
    """The configuration is invalid; raised only while starting up."""

    kind = "config"


class InvalidRequest(MMServeError):
    """The request is wrong: the message names the field and says what it takes."""

    status = 400
    type = "invalid_request_error"
    kind = "invalid_request"


class UnsupportedCapability(InvalidRequest):
    """The model exists but cannot do what the route asks (chat on an embedding model...)."""

    code = "unsupported_capability"
    kind = "unsupported"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"
    kind = "context_length"


class ModelNotFound(MMServeError):
    """No model (or model file) of that name; the message lists the available ones."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    kind = "model_not_found"


class ModelFileNotFound(ModelNotFound):
    code = "file_not_found"
    kind = "file_not_found"


class Unauthorized(MMServeError):
    """No API key, or not one of the configured keys."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    kind = "unauthorized"


class PermissionDenied(MMServeError):
    """The operator has not allowed this (a model path outside `model_dirs`...)."""

    status = 403
    type = "permission_error"
    code = "forbidden"
    kind = "forbidden"


class Conflict(MMServeError):
    """The request clashes with the server's current state (a name already in use...)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"
    kind = "conflict"


class PayloadTooLarge(MMServeError):
    """The request body is larger than the server takes (max_body_bytes)."""

    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"
    kind = "payload_too_large"


class TooManyRequests(MMServeError):
    """The model's queue is full: come back after Retry-After seconds."""

    status = 429
    type = "rate_limit_error"
    code = "queue_full"
    kind = "queue_full"


class ModelUnavailable(MMServeError):
    """The model is known but cannot serve now: it failed to load, or is stopping."""

    status = 503
    type = "service_unavailable"
    code = "model_unavailable"
    kind = "unavailable"


class WorkerCrashed(ModelUnavailable):
    code = "worker_crashed"
    kind = "crashed"


class RequestCancelled(ModelUnavailable):
    """The request was stopped by the server (its model is being unloaded), not by its client."""

    code = "request_cancelled"
    kind = "cancelled"


class BackendError(MMServeError):
    """The engine failed on a request that looked valid: a bug or a broken model, not the user."""

    code = "backend_error"
    kind = "backend"


class UpstreamError(MMServeError):
    """A remote model's server failed (5xx), or answered with something that is not its API."""

    status = 502
    type = "upstream_error"
    code = "bad_gateway"
    kind = "upstream"


class UpstreamTimeout(UpstreamError):
    """A remote model's server did not answer in time (its `timeout`)."""

    status = 504
    code = "upstream_timeout"
    kind = "upstream_timeout"


class UpstreamRejected(MMServeError):
    """A remote model's server refused the request (4xx): its status and message pass through.

    Its status, that is, when it is one the relaying routes document (`RELAYED_STATUSES`);
    another 4xx (a 422...) says the same thing as a 400, and is answered as one.
    """

    kind = "upstream_rejected"

    def __init__(
        self, status: int, message: str, *, type: str | None, code: str | None, param: str | None
    ) -> None:
        super().__init__(message, param=param)
        self.status = status if status in RELAYED_STATUSES else InvalidRequest.status
        self.type = type or "invalid_request_error"
        self.code = code


# The upstream statuses a relayed request answers with as they are (see UpstreamRejected).
RELAYED_STATUSES = frozenset({400, 401, 403, 404, 413, 429})

_BY_KIND: dict[str, type[MMServeError]] = {
    cls.kind: cls
    for cls in (
        InvalidRequest,
        UnsupportedCapability,
        ContextLengthExceeded,
        ModelNotFound,
        ModelUnavailable,
        WorkerCrashed,
        RequestCancelled,
        BackendError,
        UpstreamError,
        UpstreamTimeout,
    )
}


def from_kind(kind: str, message: str) -> MMServeError:
    """Rebuild the error a worker reported by its wire kind (unknown kinds are backend errors)."""
    return _BY_KIND.get(kind, BackendError)(message)
