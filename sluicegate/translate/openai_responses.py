"""OpenAI's Responses API (`/v1/responses`) to and from canonical form.

`ResponseStream` turns a generation's log into the Responses stream events and numbers them
(`sequence_number` 0, 1, 2...) from the log alone, so reading the same log again, live or
replayed, gives the same events with the same numbers: that is what `starting_after` resumes
on. Its `snapshot()` is the Response object as of the events fed so far.

A stop reason maps to a status: end_turn and stop_sequence `completed`; max_tokens `incomplete`
(`incomplete_details.reason` max_output_tokens); cancelled and disconnected `cancelled`;
timeout and error `failed`, with `error`. The stream ends with `response.completed`,
`response.incomplete`, or `response.failed` (for a cancelled response too: the SDK knows no
other terminal event, and its `response.status` says `cancelled`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sluicegate import errors
from sluicegate.events import (
    BlockStart,
    ChatRequest,
    ErrorEvent,
    Event,
    Message,
    MessageDelta,
    MessageStart,
    MessageStop,
    TextDelta,
    Tool,
    ToolInputDelta,
    ToolResult,
    ToolUse,
    Usage,
)
from sluicegate.translate.openai import (
    DEFAULT_MAX_TOKENS,
    arguments,
    chat_tool_choice,
    conversation,
    function_tool,
    part_text,
)
from sluicegate.translate.openai_fields import (
    InvalidRequest,
    absent_or,
    boolean,
    early_end,
    integer,
    invalid_type,
    missing,
    number,
    parse_json,
    string,
    unknown_keys,
    unsupported,
)

KEYS = {
    "model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "stream",
    "background", "store", "metadata", "user", "previous_response_id", "tools", "tool_choice",
    "parallel_tool_calls", "text", "reasoning", "truncation", "include", "service_tier",
    "stream_options", "prompt_cache_key", "prompt_cache_retention", "safety_identifier",
    "top_logprobs", "max_tool_calls", "conversation", "prompt",
}  # fmt: skip
ITEM_KEYS = {"type", "role", "content", "id", "status", "phase"}
CALL_KEYS = {"type", "call_id", "name", "arguments", "id", "status"}
OUTPUT_KEYS = {"type", "call_id", "output", "id", "status"}
TOOL_KEYS = {"type", "name", "description", "parameters", "strict"}
# The content part types each role may send.
PARTS = {
    "user": ("input_text",),
    "system": ("input_text",),
    "developer": ("input_text",),
    "assistant": ("output_text", "input_text"),
}
STATUS = {
    "end_turn": "completed",
    "stop_sequence": "completed",
    "tool_use": "completed",
    "max_tokens": "incomplete",
    "cancelled": "cancelled",
    "disconnected": "cancelled",
    "timeout": "failed",
    "error": "failed",
}
TERMINAL = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "failed": "response.failed",
    "cancelled": "response.failed",
}
ERROR_CODES = {"Throttled": "rate_limit_exceeded"}  # anything else is a server_error


@dataclass(frozen=True, slots=True)
class ResponseCall:
    """A `POST /v1/responses` request: the canonical request and what the Response echoes."""

    request: ChatRequest
    instructions: str | None = None
    max_output_tokens: int | None = None
    stream: bool = False
    background: bool = False
    store: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)


def parse_request(raw: bytes) -> ResponseCall:
    body = parse_json(raw)
    unknown_keys(body, KEYS)
    _refuse_unsupported(body)
    instructions = string(body, "instructions")
    system, turns = input_messages(body.get("input"))
    max_output = integer(body, "max_output_tokens", 1)
    background = bool(boolean(body, "background"))
    store = boolean(body, "store") is not False
    if background and not store:
        raise InvalidRequest(
            "Invalid 'store': a background response must be stored (store=true).",
            "store",
            "invalid_value",
        )
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise invalid_type("metadata", "an object", metadata)
    request = ChatRequest(
        model=string(body, "model", required=True) or "",
        messages=turns,
        system="\n\n".join(s for s in (instructions, system) if s),
        max_tokens=DEFAULT_MAX_TOKENS if max_output is None else max_output,
        temperature=number(body, "temperature", 0.0, 2.0),
        top_p=number(body, "top_p", 0.0, 1.0),
        tools=_tools(body.get("tools")),
        tool_choice=chat_tool_choice(body.get("tool_choice")),
    )
    stream = bool(boolean(body, "stream"))
    return ResponseCall(request, instructions, max_output, stream, background, store, metadata)


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    absent_or(body, "top_logprobs", 0)
    for key in ("previous_response_id", "conversation", "prompt"):
        absent_or(body, key)
    text = body.get("text")
    if isinstance(text, dict) and text.get("format") not in (None, {"type": "text"}):
        raise unsupported("text.format", "a text format other than 'text'")


def _tools(value: Any) -> tuple[Tool, ...]:
    """Function tools (`{"type": "function", "name", "parameters"}`); no hosted ones."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise invalid_type("tools", "an array of tools", value)
    found = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise unsupported(f"tools[{i}].type", f"a tool of type {json.dumps(kind)}")
        unknown_keys(tool, TOOL_KEYS)
        found.append(function_tool(tool, f"tools[{i}]"))
    return tuple(found)


def input_messages(value: Any) -> tuple[str, tuple[Message, ...]]:
    """(system text from system/developer items, the conversation) from `input`."""
    if value is None:
        raise missing("input")
    if isinstance(value, str):
        return "", (Message("user", value),)
    if not isinstance(value, list):
        raise invalid_type("input", "a string or an array of input items", value)
    if not value:
        raise InvalidRequest(
            "Invalid 'input': empty array. Send a string or at least one message item.",
            "input",
            "empty_array",
        )
    return conversation((_item(item, f"input[{i}]") for i, item in enumerate(value)), "input")


def _item(item: Any, where: str) -> tuple[str, str | Message]:
    if not isinstance(item, dict):
        raise invalid_type(where, "an object", item)
    kind = item.get("type", "message")
    if kind in ("function_call", "function_call_output"):
        return _call_item(item, where)
    if kind != "message":
        raise unsupported(f"{where}.type", f"an input item of type {json.dumps(kind)}")
    unknown_keys(item, ITEM_KEYS)
    role = item.get("role")
    if role not in PARTS:
        raise InvalidRequest(
            f"Invalid value for '{where}.role': {json.dumps(role)}. Supported values are: "
            "'user', 'assistant', 'system', and 'developer'.",
            f"{where}.role",
            "invalid_value",
        )
    content = item.get("content")
    if isinstance(content, str):
        return role, content
    if content is None:
        raise missing(f"{where}.content")
    if not isinstance(content, list):
        raise invalid_type(f"{where}.content", "a string or an array of content parts", content)
    where += ".content"
    return role, "".join(part_text(p, f"{where}[{j}]", PARTS[role]) for j, p in enumerate(content))


def _call_item(item: dict[str, Any], where: str) -> tuple[str, Message]:
    """A function call the model made, or its output, as a turn."""
    call = item["type"] == "function_call"
    unknown_keys(item, CALL_KEYS if call else OUTPUT_KEYS)
    call_id, name = item.get("call_id"), item.get("name")
    if not isinstance(call_id, str):
        raise missing(f"{where}.call_id")
    if call:
        if not isinstance(name, str):
            raise missing(f"{where}.name")
        use = ToolUse(call_id, name, arguments(item.get("arguments")))
        return "assistant", Message("assistant", "", (use,))
    output = item.get("output")
    if isinstance(output, list):
        where += ".output"
        output = "".join(
            part_text(p, f"{where}[{j}]", ("input_text",)) for j, p in enumerate(output)
        )
    if not isinstance(output, str):
        raise invalid_type(f"{where}.output", "a string or an array of input_text parts", output)
    return "user", Message("user", "", (ToolResult(call_id, (output,) if output else ()),))


# -- the Response and its stream ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponseMeta:
    """What a Response says besides what the log says: its id, when, and the request."""

    id: str
    created_at: int
    call: ResponseCall

    @property
    def item_id(self) -> str:
        return "msg_" + self.id.removeprefix("resp_")


@dataclass(slots=True)
class Item:
    """One output item as it stands: a message's text, or a function call's arguments."""

    kind: str
    id: str
    parts: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""


class ResponseStream:
    """Canonical events in, numbered Responses stream events out; see the module docstring.

    Each content block is an output item: a text block a message, a tool_use block a
    function_call; a text block that follows a message's goes on in the same message."""

    def __init__(self, meta: ResponseMeta) -> None:
        self.meta = meta
        self.seq = 0
        self.items: list[Item] = []
        self.blocks: dict[int, int] = {}  # a content block's index -> its item's
        self.stop_reason: str | None = None
        self.error: errors.SluicegateError | None = None
        self.usage: Usage | None = None
        self.total_ms: int | None = None

    def feed(self, event: Event) -> list[dict[str, Any]]:
        match event:
            case MessageStart():
                return [self._whole("response.created"), self._whole("response.in_progress")]
            case BlockStart(kind="tool_use"):
                return self._call(event)
            case BlockStart():
                return self._open(event.index)
            case TextDelta() if event.text:
                opened = self._open(event.index)
                n = self.blocks[event.index]
                self.items[n].parts.append(event.text)
                delta = self._emit(
                    "response.output_text.delta", **self._at(n), delta=event.text, logprobs=[]
                )
                return [*opened, delta]
            case ToolInputDelta() if event.index in self.blocks:
                n = self.blocks[event.index]
                self.items[n].parts.append(event.partial_json)
                at = {"item_id": self.items[n].id, "output_index": n}
                return [self._emit("response.function_call_arguments.delta", **at,
                                   delta=event.partial_json)]  # fmt: skip
            case ErrorEvent():
                self.error = errors.from_event(event.code, event.message)
            case MessageDelta():
                self.stop_reason = event.stop_reason
                return [e for n in range(len(self.items)) for e in self._item_done(n)]
            case MessageStop():
                self.usage = event.usage
                self.total_ms = event.metrics.total_ms if event.metrics else None
                return [self._whole(TERMINAL[self.status])]
        return []

    @property
    def status(self) -> str:
        if self.stop_reason is None:
            return "in_progress"
        return STATUS.get(self.stop_reason, "failed")

    def _emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def _whole(self, kind: str) -> dict[str, Any]:
        return self._emit(kind, response=self.snapshot())

    def _at(self, n: int) -> dict[str, Any]:
        return {"item_id": self.items[n].id, "output_index": n, "content_index": 0}

    def _open(self, index: int) -> list[dict[str, Any]]:
        """A text block's message: the last item if it is one, else a new one."""
        if index in self.blocks:
            return []
        if self.items and self.items[-1].kind == "message":
            self.blocks[index] = len(self.items) - 1
            return []
        n = len(self.items)
        item_id = self.meta.item_id + (f"_{n}" if n else "")
        self.items.append(Item("message", item_id))
        self.blocks[index] = n
        empty = {**self.item_json(n), "content": []}
        return [
            self._emit("response.output_item.added", output_index=n, item=empty),
            self._emit("response.content_part.added", **self._at(n), part=_part("")),
        ]

    def _call(self, start: BlockStart) -> list[dict[str, Any]]:
        n = len(self.items)
        item_id = "fc_" + self.meta.id.removeprefix("resp_") + f"_{n}"
        self.items.append(Item("function_call", item_id, [], start.tool_id, start.tool_name))
        self.blocks[start.index] = n
        return [self._emit("response.output_item.added", output_index=n, item=self.item_json(n))]

    def _item_done(self, n: int) -> list[dict[str, Any]]:
        item, text = self.items[n], "".join(self.items[n].parts)
        if item.kind == "function_call":
            at = {"item_id": item.id, "output_index": n}
            out = [self._emit("response.function_call_arguments.done", **at, arguments=text)]
        else:
            out = [
                self._emit("response.output_text.done", **self._at(n), text=text, logprobs=[]),
                self._emit("response.content_part.done", **self._at(n), part=_part(text)),
            ]
        item_done = self._emit("response.output_item.done", output_index=n, item=self.item_json(n))
        return [*out, item_done]

    def item_json(self, n: int) -> dict[str, Any]:
        """An output item as it stands."""
        if self.stop_reason is None:
            status = "in_progress"
        else:
            status = "completed" if self.status == "completed" else "incomplete"
        item, text = self.items[n], "".join(self.items[n].parts)
        if item.kind == "function_call":
            return {"type": "function_call", "id": item.id, "call_id": item.call_id,
                    "name": item.name, "arguments": text, "status": status}  # fmt: skip
        return {
            "type": "message",
            "id": item.id,
            "status": status,
            "role": "assistant",
            "content": [_part(text)],
        }

    def snapshot(self) -> dict[str, Any]:
        """The Response object as of the events fed so far."""
        meta, call, status = self.meta, self.meta.call, self.status
        return {
            "id": meta.id,
            "object": "response",
            "created_at": meta.created_at,
            "status": status,
            "background": call.background,
            "completed_at": self._completed_at() if status == "completed" else None,
            "error": self._error_json() if status == "failed" else None,
            "incomplete_details": (
                {"reason": "max_output_tokens"} if status == "incomplete" else None
            ),
            "instructions": call.instructions,
            "max_output_tokens": call.max_output_tokens,
            "metadata": call.metadata,
            "model": call.request.model,
            "output": [self.item_json(n) for n in range(len(self.items))],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": call.store,
            "temperature": call.request.temperature,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": call.request.top_p,
            "truncation": "disabled",
            "usage": None if self.usage is None else usage_json(self.usage),
            "user": None,
        }

    def _completed_at(self) -> int:
        return self.meta.created_at + round((self.total_ms or 0) / 1000)

    def _error_json(self) -> dict[str, Any]:
        exc = self.error or early_end(self.stop_reason or "error")
        return {"code": ERROR_CODES.get(type(exc).__name__, "server_error"), "message": exc.message}


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def replay(meta: ResponseMeta, log: Sequence[Event]) -> ResponseStream:
    """A ResponseStream fed a whole log (its `snapshot()` is the Response now)."""
    stream = ResponseStream(meta)
    for event in log:
        stream.feed(event)
    return stream
