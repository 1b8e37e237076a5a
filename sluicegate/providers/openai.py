"""The `openai` provider: any OpenAI-compatible server (vLLM, Ollama, llama-server, a hosted API)
through its streaming Chat Completions API, chunk by chunk, usage from `include_usage`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from sluicegate import errors
from sluicegate.codecs import jsonbody
from sluicegate.config import UpstreamSettings
from sluicegate.events import ChatRequest, Message, StopReason, ToolResult, ToolUse
from sluicegate.generation import Meter
from sluicegate.providers.upstream import Finish, Outgoing, Piece, ToolInput, ToolStart, Upstream

# stop, content_filter...: end_turn
FINISHES: dict[str, StopReason] = {"length": "max_tokens", "tool_calls": "tool_use"}
CHOICES = {"auto": "auto", "any": "required", "none": "none"}


class OpenAIProvider(Upstream):
    """Streams from `base_url`/chat/completions."""

    def __init__(self, name: str, settings: UpstreamSettings) -> None:
        super().__init__(name, settings)
        self.url = (settings.base_url or "").rstrip("/") + "/chat/completions"

    def describe(self) -> str:
        return f"{self.name}: OpenAI-compatible API at {self.url}"

    def outgoing(self, request: ChatRequest) -> Outgoing:
        headers = {"accept": "text/event-stream"}
        key = self.key()
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        return Outgoing.json(self.url, body(request), headers)

    async def pieces(self, response: aiohttp.ClientResponse, meter: Meter) -> AsyncIterator[Piece]:
        """Each chunk's text and tool calls until [DONE]; an error chunk or an unreadable one
        is in-band."""
        calls: set[int] = set()  # the tool calls' indexes seen so far
        async for event in self.sse(response, meter):
            if event.data.strip() == "[DONE]":
                return
            chunk = self._chunk(event.data)
            chunk_usage(chunk, meter)
            choice = first_choice(chunk)
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str) and content:
                    yield content
                if "tool_calls" in delta:
                    for piece in _tool_pieces(delta, calls):
                        yield piece
            finish = choice.get("finish_reason")
            if isinstance(finish, str):
                yield Finish(FINISHES.get(finish, "end_turn"))
        raise errors.ModelStreamError(f"Provider {self.name} ended the stream without [DONE].")

    def _chunk(self, data: str) -> dict[str, Any]:
        try:
            chunk = jsonbody.parse(data)
        except ValueError:
            raise errors.ModelStreamError(
                f"Provider {self.name} sent a chunk that is not JSON: {data[:200]!r}"
            ) from None
        if not isinstance(chunk, dict):
            raise errors.ModelStreamError(f"Provider {self.name} sent {data[:200]!r}")
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise errors.ModelStreamError(f"Provider {self.name} failed: {message}")
        return chunk


def body(request: ChatRequest) -> dict[str, Any]:
    """The Chat Completions request; sampling the client left unset stays unset upstream."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    for m in request.messages:
        messages += _messages(m)
    out: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "max_tokens": request.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    optional = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,  # not OpenAI's, but vLLM's, llama-server's and Ollama's
        "seed": request.seed,
        "stop": list(request.stop_sequences) or None,
    }
    out.update({k: v for k, v in optional.items() if v is not None})
    if request.tools:
        out["tools"] = [
            {"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.input_schema}}
            for t in request.tools
        ]  # fmt: skip
        choice = request.tool_choice
        out["tool_choice"] = CHOICES.get(choice.kind) or {
            "type": "function",
            "function": {"name": choice.name},
        }
    return out


def _messages(m: Message) -> list[dict[str, Any]]:
    """One canonical turn as Chat messages: tool results are `tool` messages of their own."""
    uses = [b for b in m.blocks if isinstance(b, ToolUse)]
    if m.role == "assistant" and uses:
        calls = [
            {"id": u.id, "type": "function",
             "function": {"name": u.name, "arguments": json.dumps(u.input, ensure_ascii=False)}}
            for u in uses
        ]  # fmt: skip
        return [{"role": "assistant", "content": m.text or None, "tool_calls": calls}]
    results = [
        {"role": "tool", "tool_call_id": r.tool_use_id,
         "content": ("Error: " if r.is_error else "") + r.text}
        for r in m.blocks if isinstance(r, ToolResult)
    ]  # fmt: skip
    return [*results, *([{"role": m.role, "content": m.text}] if m.text or not results else [])]


def _tool_pieces(delta: dict[str, Any], calls: set[int]) -> list[Piece]:
    """A delta's tool calls: a call seen first starts (id and name), then its arguments."""
    found = delta.get("tool_calls")
    out: list[Piece] = []
    for call in found if isinstance(found, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        function = function if isinstance(function, dict) else {}
        index = call.get("index", len(calls)) if isinstance(call, dict) else len(calls)
        if index not in calls:
            calls.add(index)
            out.append(
                ToolStart(str(call.get("id") or f"call_{index}"), str(function.get("name") or ""))
            )
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            out.append(ToolInput(arguments))
    return out


def first_choice(chunk: dict[str, Any]) -> dict[str, Any]:
    choices = chunk.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return {}


def chunk_texts(chunk: dict[str, Any]) -> list[str]:
    delta = first_choice(chunk).get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    return [content] if isinstance(content, str) and content else []


def chunk_usage(chunk: dict[str, Any], meter: Meter) -> None:
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        meter.usage.input_tokens = int(usage.get("prompt_tokens") or 0)
        meter.usage.output_tokens = int(usage.get("completion_tokens") or 0)
