"""One exception hierarchy; each error knows its HTTP status and its wire code per protocol.

    SluicegateError                 500  InternalServerException
    ├── ValidationError             400  ValidationException
    │   └── PayloadTooLarge         400  ValidationException  (Bedrock has no 413)
    ├── AccessDenied                403  AccessDeniedException
    ├── NotFound                    404  ResourceNotFoundException
    ├── UnknownOperation            404  UnknownOperationException
    ├── ModelTimeout                408  ModelTimeoutException
    ├── Throttled                   429  ThrottlingException
    ├── ModelStreamError            424  ModelStreamErrorException
    ├── Cancelled                   499  InternalServerException  (the client is gone anyway)
    └── ServiceUnavailable          503  ServiceUnavailableException

Routes translate at one boundary: before the first byte as the protocol's error response,
after it in-band (an event stream exception frame, an SSE error event, a WebSocket message).
"""

from __future__ import annotations


class SluicegateError(Exception):
    """Base of every error a client may see; the message says what to fix."""

    status = 500
    bedrock = "InternalServerException"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def bedrock_event(self) -> str:
        """The lowerCamel union member name used for in-band event stream exceptions."""
        return self.bedrock[0].lower() + self.bedrock[1:]


class ValidationError(SluicegateError):
    status = 400
    bedrock = "ValidationException"


class PayloadTooLarge(ValidationError):
    pass


class AccessDenied(SluicegateError):
    status = 403
    bedrock = "AccessDeniedException"


class NotFound(SluicegateError):
    status = 404
    bedrock = "ResourceNotFoundException"


class UnknownOperation(SluicegateError):
    status = 404
    bedrock = "UnknownOperationException"


class ModelTimeout(SluicegateError):
    status = 408
    bedrock = "ModelTimeoutException"


class Throttled(SluicegateError):
    status = 429
    bedrock = "ThrottlingException"


class ModelStreamError(SluicegateError):
    status = 424
    bedrock = "ModelStreamErrorException"


class Cancelled(SluicegateError):
    status = 499


class ServiceUnavailable(SluicegateError):
    status = 503
    bedrock = "ServiceUnavailableException"


BY_NAME: dict[str, type[SluicegateError]] = {
    cls.__name__: cls
    for cls in (
        SluicegateError,
        ValidationError,
        PayloadTooLarge,
        AccessDenied,
        NotFound,
        UnknownOperation,
        ModelTimeout,
        Throttled,
        ModelStreamError,
        Cancelled,
        ServiceUnavailable,
    )
}


def from_event(code: str, message: str) -> SluicegateError:
    """Rebuild an error from an ErrorEvent's code (unknown codes become internal errors)."""
    return BY_NAME.get(code, SluicegateError)(message)
