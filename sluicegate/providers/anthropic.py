"""The `anthropic` provider: the Anthropic Messages API (Claude directly, or another sluicegate's
/v1/messages), streamed as server-sent events, usage from `message_start` and `message_delta`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from sluicegate import errors
from sluicegate.codecs import jsonbody
from sluicegate.config import UpstreamSettings
from sluicegate.events import ChatRequest, Message, StopReason, ToolChoice, ToolResult, ToolUse
from sluicegate.generation import Meter
from sluicegate.providers.upstream import Finish, Outgoing, Piece, ToolInput, ToolStart, Upstream

API_VERSION = "2023-06-01"
BEDROCK_VERSION = "bedrock-2023-05-31"
FINISHES: dict[str, StopReason] = {
    "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence",
    "tool_use": "tool_use",
}
# In-band error types, as ours.
ERRORS: dict[str, type[errors.SluicegateError]] = {
    "overloaded_error": errors.ServiceUnavailable,
    "rate_limit_error": errors.Throttled,
    "invalid_request_error": errors.ValidationError,
    "timeout_error": errors.ModelTimeout,
}


class AnthropicProvider(Upstream):
    """Streams from `base_url`/v1/messages."""

    def __init__(self, name: str, settings: UpstreamSettings) -> None:
        super().__init__(name, settings)
        base = (settings.base_url or "https://api.anthropic.com").rstrip("/")
        self.url = base.removesuffix("/v1") + "/v1/messages"

    def describe(self) -> str:
        return f"{self.name}: Anthropic Messages API at {self.url}"

    def outgoing(self, request: ChatRequest) -> Outgoing:
        headers = {"anthropic-version": API_VERSION, "accept": "text/event-stream"}
        key = self.key()
        if key is not None:
            headers["x-api-key"] = key
        return Outgoing.json(self.url, body(request), headers)

    async def pieces(self, response: aiohttp.ClientResponse, meter: Meter) -> AsyncIterator[Piece]:
        reader = MessagesReader(self.name, meter)
        async for event in self.sse(response, meter):
            data = _json(event.data)
            if event.event == "error" and data.get("type") != "error":
                data = {"type": "error", "error": {"message": event.data}}
            for piece in reader.feed(data):
                yield piece
            if reader.ended:
                return
        raise errors.ModelStreamError(f"Provider {self.name} ended the stream before message_stop.")


class MessagesReader:
    """The Messages stream's events (SSE data, or Bedrock's decoded `chunk`s) as pieces, usage
    into the meter; an error event is raised as ours. `ended` once message_stop came."""

    def __init__(self, name: str, meter: Meter) -> None:
        self.name = name
        self.meter = meter
        self.ended = False

    def feed(self, data: dict[str, Any]) -> list[Piece]:
        kind = data.get("type")
        if kind == "error":
            error = data.get("error") or {}
            cls = ERRORS.get(str(error.get("type")), errors.ModelStreamError)
            raise cls(f"Provider {self.name} failed: {error.get('message', data)}")
        if kind == "content_block_delta":
            return _delta(data.get("delta") or {})
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                return [ToolStart(str(block.get("id", "")), str(block.get("name", "")))]
        elif kind in ("message_start", "message_delta"):
            finish = _usage_and_reason(data, self.meter)
            return [] if finish is None else [finish]
        elif kind == "message_stop":
            self.ended = True
            _bedrock_metrics(data, self.meter)
        return []


def _delta(delta: dict[str, Any]) -> list[Piece]:
    text, fragment = delta.get("text"), delta.get("partial_json")
    out: list[Piece] = [text] if isinstance(text, str) else []
    return [*out, ToolInput(fragment)] if isinstance(fragment, str) and fragment else out


def _bedrock_metrics(data: dict[str, Any], meter: Meter) -> None:
    """Bedrock's last chunk counts the tokens it bills: those win."""
    metrics = data.get("amazon-bedrock-invocationMetrics")
    if isinstance(metrics, dict):
        meter.usage.input_tokens = int(metrics.get("inputTokenCount") or 0)
        meter.usage.output_tokens = int(metrics.get("outputTokenCount") or 0)


def body(request: ChatRequest) -> dict[str, Any]:
    """The Messages request; sampling the client left unset stays unset upstream."""
    out: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": [{"role": m.role, "content": _content(m)} for m in request.messages],
        "stream": True,
    }
    if request.tools:
        out["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.input_schema}
            for t in request.tools
        ]
        out["tool_choice"] = _tool_choice(request.tool_choice)
    optional = {
        "system": request.system or None,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "stop_sequences": list(request.stop_sequences) or None,
    }
    out.update({k: v for k, v in optional.items() if v is not None})
    return out


def bedrock_body(request: ChatRequest) -> dict[str, Any]:
    """The Messages body as Bedrock's InvokeModel takes it: its version in it, the model in
    the path, and no `stream` key (Bedrock refuses both keys)."""
    out = body(request)
    del out["model"], out["stream"]
    return {"anthropic_version": BEDROCK_VERSION, **out}


def _tool_choice(choice: ToolChoice) -> dict[str, Any]:
    if choice.kind == "tool":
        return {"type": "tool", "name": choice.name}
    return {"type": choice.kind}


def _content(m: Message) -> str | list[dict[str, Any]]:
    """A turn's text, or its blocks: a user's tool results first, an assistant's calls last."""
    if not m.blocks:
        return m.text
    text = [{"type": "text", "text": m.text}] if m.text else []
    uses = [
        {"type": "tool_use", "id": b.id, "name": b.name, "input": b.input}
        for b in m.blocks if isinstance(b, ToolUse)
    ]  # fmt: skip
    results = [
        {"type": "tool_result", "tool_use_id": b.tool_use_id, "is_error": b.is_error,
         "content": [{"type": "text", "text": b.text}] if b.text else ""}
        for b in m.blocks if isinstance(b, ToolResult)
    ]  # fmt: skip
    return [*results, *text, *uses]


def _json(data: str) -> dict[str, Any]:
    try:
        found = jsonbody.parse(data)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _usage_and_reason(data: dict[str, Any], meter: Meter) -> Finish | None:
    usage = data.get("usage") or data.get("message", {}).get("usage") or {}
    if isinstance(usage, dict):
        if "input_tokens" in usage:
            meter.usage.input_tokens = int(usage["input_tokens"] or 0)
        if "output_tokens" in usage and data.get("type") == "message_delta":
            meter.usage.output_tokens = int(usage["output_tokens"] or 0)
    stop = data.get("delta", {}).get("stop_reason")
    return Finish(FINISHES.get(stop, "end_turn")) if isinstance(stop, str) else None
