"""OpenAI's error shape and the request-field readers its two APIs share (Chat Completions in
`openai.py`, Responses in `openai_responses.py`).

Validation errors name the parameter at fault as OpenAI's own do (`param`, `code`); a field sent
as null counts as not sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sluicegate import errors
from sluicegate.codecs import jsonbody
from sluicegate.events import Message

# -- errors ----------------------------------------------------------------------------------


class InvalidRequest(errors.ValidationError):
    """A 400 that names the parameter at fault and OpenAI's code for the fault."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.openai_code = code


class InvalidApiKey(errors.SluicegateError):
    """A missing or wrong `Authorization: Bearer` key while the server has an api_key."""

    status = 401
    aws = "UnrecognizedClientException"
    anthropic = "authentication_error"
    openai = "authentication_error"
    openai_code = "invalid_api_key"


class ModelNotFound(errors.NotFound):
    openai_code = "model_not_found"


# OpenAI's `code` for errors that have one; the rest send null.
CODES = {
    "Throttled": "rate_limit_exceeded",
    "ModelTimeout": "timeout",
    "PayloadTooLarge": "request_too_large",
    "ServiceUnavailable": "service_unavailable",
    "ModelStreamError": "model_error",
    "Cancelled": "cancelled",
}


def error_json(exc: errors.SluicegateError) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}`, before the stream or in it."""
    code = getattr(exc, "openai_code", None) or CODES.get(type(exc).__name__)
    param = exc.param if isinstance(exc, InvalidRequest) else None
    return {"error": {"message": exc.message, "type": exc.openai, "param": param, "code": code}}


def status_of(exc: errors.SluicegateError) -> int:
    """The HTTP status on the OpenAI doors (which, unlike Bedrock, have a 413)."""
    return 413 if isinstance(exc, errors.PayloadTooLarge) else exc.status


def early_end(reason: str) -> errors.SluicegateError:
    """What an early stop reason is on these doors: an error, never a finish."""
    if reason == "timeout":
        return errors.ModelTimeout("The model did not finish in time.")
    if reason in ("cancelled", "disconnected"):
        return errors.Cancelled(f"The generation was stopped before it finished ({reason}).")
    return errors.SluicegateError("The model failed before it finished.")


# -- reading fields ----------------------------------------------------------------------------


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = jsonbody.loads(raw)
    except jsonbody.BadJSON as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: it {exc}. Send a JSON object."
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"The request body must be a JSON object, not {kind(body)}.")
    return body


KINDS: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a decimal"),
    (str, "a string"),
    (list, "an array"),
    (dict, "an object"),
)


def kind(value: Any) -> str:
    """A JSON value's type in words, as OpenAI's messages put it."""
    if value is None:
        return "null"
    for t, name in KINDS:
        if isinstance(value, t):
            return name
    return type(value).__name__


def invalid_type(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {kind(value)} instead.",
        param,
        "invalid_type",
    )


def missing(param: str) -> InvalidRequest:
    return InvalidRequest(
        f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    )


def unsupported(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(
        f"Unsupported parameter: '{param}': {what} is not supported by sluicegate yet.",
        param,
        "unsupported_parameter",
    )


def unknown_keys(body: Mapping[str, Any], known: set[str]) -> None:
    extra = sorted(set(body) - known)
    if extra:
        raise InvalidRequest(
            f"Unrecognized request argument supplied: {extra[0]}", extra[0], "unknown_parameter"
        )


def string(body: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None and required:
        raise missing(key)
    if value is not None and not isinstance(value, str):
        raise invalid_type(key, "a string", value)
    return value


def boolean(body: Mapping[str, Any], key: str, param: str = "") -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise invalid_type(param or key, "a boolean", value)
    return value


def integer(body: Mapping[str, Any], key: str, low: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_type(key, "an integer", value)
    if low is not None and value < low:
        raise InvalidRequest(
            f"Invalid '{key}': integer below minimum value. Expected a value >= {low}, "
            f"but got {value} instead.",
            key,
            "integer_below_min_value",
        )
    return value


def number(body: Mapping[str, Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid_type(key, "a number", value)
    if not low <= value <= high:
        side = "below minimum" if value < low else "above maximum"
        bound = f">= {low:g}" if value < low else f"<= {high:g}"
        raise InvalidRequest(
            f"Invalid '{key}': decimal {side} value. Expected a value {bound}, "
            f"but got {value} instead.",
            key,
            f"decimal_{side.replace(' ', '_')}_value",
        )
    return float(value)


def absent_or(body: Mapping[str, Any], key: str, *allowed: Any) -> None:
    """A parameter only accepted at its neutral values (null, or one of `allowed`)."""
    value = body.get(key)
    if value is not None and value not in allowed:
        raise unsupported(key, f"{key}={json.dumps(value)}")


def turn(role: str, text: str) -> Message:
    return Message("user" if role == "user" else "assistant", text)


def merge_turns(turns: list[Message]) -> tuple[Message, ...]:
    """Consecutive turns of one role become one (canonical turns alternate); tool results
    are user turns."""
    out: list[Message] = []
    for m in turns:
        if out and out[-1].role == m.role:
            last = out[-1]
            text = "\n\n".join(t for t in (last.text, m.text) if t)
            out[-1] = Message(m.role, text, last.blocks + m.blocks)
        else:
            out.append(m)
    return tuple(out)
