"""The WebSocket API's built-in messages to and from canonical form.

In:  {"action": "generate", "id", "model", "messages" | "prompt", "system", "max_tokens",
      "temperature", "top_p", "top_k", "stop_sequences", "seed"}
Out: {"type": "start", "id", "model"}, {"type": "delta", "id", "seq", "text"},
     {"type": "end", "id", "stop_reason", "usage", "metrics"}, {"type": "error", "id", "code",
     "message"}
"""

from __future__ import annotations

from typing import Any

from sluicegate.errors import SluicegateError, ValidationError
from sluicegate.events import ChatRequest, Message, MessageStart, MessageStop
from sluicegate.translate import anthropic

DEFAULT_MODEL = "default"
DEFAULT_MAX_TOKENS = 1024
GENERATE_KEYS = {
    "action",
    "id",
    "model",
    "messages",
    "prompt",
    "system",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "seed",
}


def parse_generate(body: dict[str, Any]) -> ChatRequest:
    """A `generate` message as a canonical request; ValidationError says what to fix."""
    extra = sorted(set(body) - GENERATE_KEYS)
    if extra:
        raise ValidationError(f"Unknown field {extra[0]!r} in generate.")
    model = body.get("model", DEFAULT_MODEL)
    if not isinstance(model, str) or not model:
        raise ValidationError("model must be a non-empty string.")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValidationError("seed must be an integer.")
    return ChatRequest(
        model=model,
        messages=_messages(body),
        system=anthropic.system_text(body.get("system", "")),
        max_tokens=anthropic.integer(body, "max_tokens", 1, default=DEFAULT_MAX_TOKENS),
        temperature=anthropic.number(body, "temperature", 0.0, 2.0),
        top_p=anthropic.number(body, "top_p", 0.0, 1.0),
        top_k=anthropic.optional_integer(body, "top_k", 0),
        stop_sequences=anthropic.string_list(body, "stop_sequences"),
        seed=seed,
    )


def _messages(body: dict[str, Any]) -> tuple[Message, ...]:
    if "prompt" in body and "messages" in body:
        raise ValidationError("Send either prompt or messages, not both.")
    if "prompt" in body:
        if not isinstance(body["prompt"], str) or not body["prompt"]:
            raise ValidationError("prompt must be a non-empty string.")
        return (Message("user", body["prompt"]),)
    if "messages" not in body:
        raise ValidationError("generate needs messages (or a prompt).")
    return anthropic.parse_messages(body["messages"])


def start_message(gen_id: str, start: MessageStart, token: str) -> dict[str, Any]:
    """`requestId` is the gateway's id: /sluicegate/generations/{requestId} describes it;
    `resumeToken` lets another connection resume or stop it (a reconnect)."""
    return {"type": "start", "id": gen_id, "model": start.model, "requestId": start.message_id,
            "resumeToken": token}  # fmt: skip


def end_message(gen_id: str, stop_reason: str | None, stop: MessageStop) -> dict[str, Any]:
    m = stop.metrics
    return {
        "type": "end",
        "id": gen_id,
        "stop_reason": stop_reason,
        "usage": {
            "input_tokens": stop.usage.input_tokens,
            "output_tokens": stop.usage.output_tokens,
        },
        "metrics": {
            "ttft_ms": m.first_token_ms if m else None,
            "duration_ms": m.total_ms if m else 0,
        },
    }


def error(gen_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "id": gen_id, "code": code, "message": message}


def error_from(gen_id: str | None, exc: SluicegateError) -> dict[str, Any]:
    return error(gen_id, exc.aws, exc.message)
