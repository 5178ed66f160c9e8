"""Errors the core raises; the server maps each class to an HTTP status in one table."""

from __future__ import annotations


class SwitchboardError(Exception):
    """Base class: `message` is shown to the client, `param` names the offending field, `retry_after` (seconds)
    says when the same request may succeed (sent as Retry-After)."""

    code: str = "switchboard_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        if code is not None:
            self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, param={self.param!r}, code={self.code!r})"


class InvalidRequest(SwitchboardError):
    code = "invalid_request"


class InvalidValue(InvalidRequest, ValueError):
    """A value the core rejects (a setting, a strategy parameter, an experiment's arms): the caller's mistake.

    Also a ValueError, so pure modules validate the usual way; only this class, never a bare ValueError, reaches
    a client as a 400."""

    code = "invalid_value"


class ModelNotFound(SwitchboardError):
    code = "model_not_found"


class CapabilityMissing(SwitchboardError):
    code = "capability_not_available"


class ModelUnavailable(SwitchboardError):
    """The model exists but cannot serve now: failed load, crashed worker, out of memory."""

    code = "model_unavailable"


class WorkerCrashed(ModelUnavailable):
    code = "worker_crashed"


class WorkerDied(WorkerCrashed):
    """A local worker process died under its requests: its lifecycle counts the crash against the model, once,
    however many requests it ended."""

    code = "worker_crashed"


class HubUnavailable(ModelUnavailable):
    """The Hugging Face hub cannot be reached, or failed: nothing a request did, and no local model's fault."""

    code = "hub_unavailable"


class InsufficientMemory(ModelUnavailable):
    code = "insufficient_memory"


class Unauthorized(SwitchboardError):
    code = "invalid_api_key"


class Forbidden(SwitchboardError):
    code = "forbidden"


class PayloadTooLarge(SwitchboardError):
    code = "payload_too_large"


class HeadersTooLarge(SwitchboardError):
    """The request line and headers together exceed the server's limit (app/server/guard.py)."""

    code = "headers_too_large"


class QuotaExceeded(SwitchboardError):
    """Every model that could serve has used its hourly quota; `retry_after` says when to come back."""

    code = "quota_exceeded"
    retry_after: float

    def __init__(self, message: str, *, retry_after: float, param: str | None = None) -> None:
        super().__init__(message, param=param, retry_after=retry_after)


class QueueFull(SwitchboardError):
    """Too many requests wait already (for this model, or for the whole server): come back shortly."""

    code = "queue_full"


class RequestTimeout(SwitchboardError):
    """The request ran past `request_timeout_s`; its job was cancelled in the worker."""

    code = "request_timeout"
