"""Bedrock's model-agnostic Converse shape to and from canonical form."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from sluicegate.errors import ValidationError
from sluicegate.events import (
    EARLY_STOPS,
    BlockStop,
    ChatRequest,
    Event,
    Message,
    MessageDelta,
    MessageStart,
    MessageStop,
    TextDelta,
    Usage,
)
from sluicegate.translate import anthropic, families
from sluicegate.translate.anthropic import (
    integer,
    malformed,
    number,
    optional_integer,
    parse_json,
    string_list,
)

DEFAULT_MAX_TOKENS = 2048
KNOWN_KEYS = {
    "modelId",
    "messages",
    "system",
    "inferenceConfig",
    "additionalModelRequestFields",
    "requestMetadata",
    "performanceConfig",
    "serviceTier",
    "additionalModelResponseFieldPaths",
    "promptVariables",
    "projectIdentifier",
}
UNSUPPORTED_KEYS = {"toolConfig", "guardrailConfig", "outputConfig"}


def parse_body(model: str, raw: bytes) -> ChatRequest:
    """Validate a Converse / ConverseStream body and give its canonical request."""
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise malformed("the body must be a JSON object")
    extra = sorted(set(body) - KNOWN_KEYS - UNSUPPORTED_KEYS)
    if extra:
        raise ValidationError(f"Unknown parameter in input: {extra[0]!r}.")
    for key in sorted(UNSUPPORTED_KEYS & set(body)):
        raise ValidationError(f"{key} is not supported by sluicegate yet: remove it.")
    return request_from(model, body)


def request_from(model: str, body: dict[str, Any]) -> ChatRequest:
    # null means "not given"; any other non-object is an error
    config = body.get("inferenceConfig")
    config = {} if config is None else config
    extra = body.get("additionalModelRequestFields")
    extra = {} if extra is None else extra
    if not isinstance(config, dict) or not isinstance(extra, dict):
        raise ValidationError("inferenceConfig and additionalModelRequestFields must be objects.")
    return ChatRequest(
        model=model,
        messages=messages(body.get("messages")),
        system=system_text(body.get("system", [])),
        max_tokens=integer(config, "maxTokens", 1, default=DEFAULT_MAX_TOKENS),
        temperature=number(config, "temperature", 0.0, 1.0),
        top_p=number(config, "topP", 0.0, 1.0),
        top_k=optional_integer(extra, "top_k", 0),
        stop_sequences=string_list(config, "stopSequences"),
    )


def system_text(system: Any) -> str:
    if not isinstance(system, list):
        raise ValidationError("system must be a list of content blocks such as {'text': '...'}.")
    return "\n".join(block_text(b, "system") for b in system)


def messages(value: Any) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise ValidationError("messages must be a non-empty list.")
    out: list[Message] = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise ValidationError(f"messages[{i}]: role must be 'user' or 'assistant'.")
        if m["role"] != ("user" if i % 2 == 0 else "assistant"):
            raise ValidationError(
                "A conversation must alternate between user and assistant roles, starting "
                f"with user; messages[{i}] has role {m['role']!r}."
            )
        content = m.get("content")
        if not isinstance(content, list) or not content:
            raise ValidationError(f"messages[{i}].content must be a non-empty list of blocks.")
        text = "".join(block_text(b, f"messages[{i}].content") for b in content)
        out.append(Message(m["role"], text))
    return tuple(out)


def block_text(block: Any, where: str) -> str:
    if isinstance(block, dict) and isinstance(block.get("text"), str):
        return str(block["text"])
    kind = next(iter(block), None) if isinstance(block, dict) else None
    raise ValidationError(
        f"{where}: content blocks of type {kind!r} are not supported; send text blocks."
    )


def count_input(model: str, raw: bytes) -> ChatRequest:
    """The request inside a CountTokens body (`invokeModel.body` or `converse`)."""
    body = parse_json(raw)
    given = body.get("input") if isinstance(body, dict) else None
    if isinstance(given, dict) and isinstance(given.get("converse"), dict):
        return request_from(model, given["converse"])
    if isinstance(given, dict) and isinstance(given.get("invokeModel"), dict):
        return families.parse(model, _blob(given["invokeModel"].get("body"))).chat
    raise ValidationError("input must hold either 'invokeModel' {body} or 'converse' {messages}.")


def _blob(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValidationError("input.invokeModel.body must be a base64 string.")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValidationError("input.invokeModel.body is not valid base64.") from None


# -- canonical events to Converse -----------------------------------------------------------


def stream_event(event: Event) -> tuple[str, dict[str, Any]] | None:
    """(event type, payload) of the ConverseStream frame for an event; None sends nothing.

    Bedrock sends no contentBlockStart for text blocks, so neither do we. Converse has no stop
    reason for an early end (cancelled, disconnected, ...): such a stream has no messageStop,
    only the metadata with the usage so far (a timeout or a failure is an exception frame).
    """
    match event:
        case MessageStart():
            return "messageStart", {"role": "assistant"}
        case TextDelta():
            return "contentBlockDelta", {
                "delta": {"text": event.text},
                "contentBlockIndex": event.index,
            }
        case MessageDelta() if event.stop_reason in EARLY_STOPS:
            return None
        case MessageDelta():
            return "messageStop", {"stopReason": event.stop_reason}
        case MessageStop():
            return "metadata", {"usage": usage(event.usage), "metrics": latency(event)}
        case BlockStop():
            return "contentBlockStop", {"contentBlockIndex": event.index}
    return None


def usage(u: Usage) -> dict[str, int]:
    return {
        "inputTokens": u.input_tokens,
        "outputTokens": u.output_tokens,
        "totalTokens": u.input_tokens + u.output_tokens,
    }


def latency(stop: MessageStop) -> dict[str, int]:
    return {"latencyMs": stop.metrics.total_ms if stop.metrics else 0}


def response_json(events: list[Event]) -> dict[str, Any]:
    """The whole Converse response; an early end, for which Converse has no stop reason, is
    the error that stands for it."""
    delta = next(e for e in events if isinstance(e, MessageDelta))
    stop = next(e for e in events if isinstance(e, MessageStop))
    if delta.stop_reason in EARLY_STOPS:
        raise anthropic.early_stop_error(delta.stop_reason, stop.usage.output_tokens)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": delta.stop_reason,
        "usage": usage(stop.usage),
        "metrics": latency(stop),
    }


def dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
