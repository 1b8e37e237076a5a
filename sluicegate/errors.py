"""One exception hierarchy; each error knows its HTTP status, its AWS error shape name, and its
error type on the Anthropic and OpenAI APIs (`anthropic`, `openai`; the type names those APIs
document).

    SluicegateError                 500  InternalServerException
    ├── ValidationError             400  ValidationException
    │   ├── PayloadTooLarge         400  ValidationException  (Bedrock has no 413)
    │   └── InvalidParameterValue   400  InvalidParameterValueException  (Lambda API)
    ├── AccessDenied                403  AccessDeniedException
    ├── NotFound                    404  ResourceNotFoundException
    ├── UnknownOperation            404  UnknownOperationException
    ├── ModelTimeout                408  ModelTimeoutException
    ├── Throttled                   429  ThrottlingException
    ├── ModelStreamError            424  ModelStreamErrorException
    ├── Forbidden                   403  ForbiddenException        (@connections API)
    ├── Gone                        410  GoneException             (@connections API)
    ├── MessageTooLarge             413  PayloadTooLargeException  (@connections API)
    ├── LimitExceeded               429  LimitExceededException    (@connections API)
    ├── Cancelled                   499  InternalServerException  (the client is gone anyway)
    ├── RequestTooLarge             413  RequestTooLargeException  (Lambda's 6 MB payloads)
    ├── ServiceException            500  ServiceException  (the Lambda API's own faults)
    └── ServiceUnavailable          503  ServiceUnavailableException

Routes translate at one boundary: before the first byte as the protocol's error response,
after it in-band (an event stream exception frame, an SSE error event, a WebSocket message).
"""

from __future__ import annotations


class SluicegateError(Exception):
    """Base of every error a client may see; the message says what to fix."""

    status = 500
    aws = "InternalServerException"
    anthropic = "api_error"
    openai = "server_error"
    # Seconds a client should wait before retrying (a Retry-After header), if it should.
    retry_after: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def aws_event(self) -> str:
        """The lowerCamel union member name used for in-band event stream exceptions."""
        return self.aws[0].lower() + self.aws[1:]


class ValidationError(SluicegateError):
    status = 400
    aws = "ValidationException"
    anthropic = "invalid_request_error"
    openai = "invalid_request_error"


class PayloadTooLarge(ValidationError):
    anthropic = "request_too_large"


class InvalidParameterValue(ValidationError):
    aws = "InvalidParameterValueException"


class AccessDenied(SluicegateError):
    status = 403
    aws = "AccessDeniedException"
    anthropic = "permission_error"
    openai = "permission_error"


class NotFound(SluicegateError):
    status = 404
    aws = "ResourceNotFoundException"
    anthropic = "not_found_error"
    openai = "not_found_error"


class UnknownOperation(SluicegateError):
    status = 404
    aws = "UnknownOperationException"
    anthropic = "not_found_error"
    openai = "not_found_error"


class ModelTimeout(SluicegateError):
    status = 408
    aws = "ModelTimeoutException"
    anthropic = "timeout_error"
    openai = "timeout_error"


class Throttled(SluicegateError):
    status = 429
    aws = "ThrottlingException"
    retry_after = 1
    anthropic = "rate_limit_error"
    openai = "rate_limit_error"


class ModelStreamError(SluicegateError):
    status = 424
    aws = "ModelStreamErrorException"
    anthropic = "api_error"
    openai = "server_error"


class Forbidden(SluicegateError):
    status = 403
    aws = "ForbiddenException"


class Gone(SluicegateError):
    status = 410
    aws = "GoneException"


class MessageTooLarge(SluicegateError):
    status = 413
    aws = "PayloadTooLargeException"


class LimitExceeded(SluicegateError):
    status = 429
    aws = "LimitExceededException"


class InvalidSignature(SluicegateError):
    status = 403
    aws = "InvalidSignatureException"
    anthropic = "authentication_error"
    openai = "authentication_error"


class Cancelled(SluicegateError):
    status = 499


class RequestTooLarge(SluicegateError):
    """Lambda's payload limit (Function URLs, the Lambda API): 413, as Lambda answers."""

    status = 413
    aws = "RequestTooLargeException"


class ServiceUnavailable(SluicegateError):
    status = 503
    aws = "ServiceUnavailableException"
    anthropic = "overloaded_error"
    openai = "server_error"


class Interrupted(ServiceUnavailable):
    """The replica running a generation stopped (crashed, was killed) before it ended."""


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
        Forbidden,
        Gone,
        MessageTooLarge,
        LimitExceeded,
        Cancelled,
        RequestTooLarge,
        ServiceUnavailable,
        Interrupted,
    )
}


def from_event(code: str, message: str) -> SluicegateError:
    """Rebuild an error from an ErrorEvent's code (unknown codes become internal errors)."""
    return BY_NAME.get(code, SluicegateError)(message)


class ServiceException(SluicegateError):
    """The Lambda API failing itself; a function's failure is a 200 with X-Amz-Function-Error."""

    aws = "ServiceException"
