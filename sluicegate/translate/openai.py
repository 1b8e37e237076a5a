"""OpenAI's Chat Completions and Models shapes to and from canonical form (its error shape and
the field readers it shares with the Responses API are in `openai_fields.py`).

Streamed chunks follow OpenAI: the same `id` and `created` on every
chunk, a first chunk with the role, content deltas, a chunk with the `finish_reason`, a usage
chunk with empty `choices` when asked for, then `[DONE]`. An early end (cancelled, timeout,
error) is never a finish: it is an in-band `{"error": ...}`, after which the stream just ends.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sluicegate import errors
from sluicegate.codecs.jsonbody import dumps
from sluicegate.events import (
    EARLY_STOPS,
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
    ToolChoice,
    ToolInputDelta,
    ToolResult,
    ToolUse,
    Usage,
)
from sluicegate.translate import tools
from sluicegate.translate.openai_fields import (
    InvalidRequest,
    absent_or,
    boolean,
    early_end,
    error_json,
    integer,
    invalid_type,
    merge_turns,
    missing,
    number,
    parse_json,
    string,
    turn,
    unknown_keys,
    unsupported,
)

DEFAULT_MAX_TOKENS = 2048
MAX_STOP = 4  # as OpenAI: "up to 4 sequences"
DONE = "[DONE]"
FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}


# -- Chat Completions requests -----------------------------------------------------------------

CHAT_KEYS = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
    "seed", "n", "stream", "stream_options", "user", "metadata", "store", "frequency_penalty",
    "presence_penalty", "logit_bias", "logprobs", "top_logprobs", "response_format", "tools",
    "tool_choice", "functions", "function_call", "parallel_tool_calls", "service_tier",
    "reasoning_effort", "modalities", "prediction", "audio", "web_search_options",
    "prompt_cache_key", "prompt_cache_retention", "safety_identifier", "verbosity",
}  # fmt: skip
ROLES = ("system", "developer", "user", "assistant", "tool")
MESSAGE_KEYS = {
    "role", "content", "name", "refusal", "tool_calls", "function_call", "audio", "tool_call_id",
    "annotations",
}  # fmt: skip
FUNCTION_KEYS = {"name", "description", "parameters", "strict"}


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A Chat Completions request: the canonical request and how to answer it."""

    request: ChatRequest
    stream: bool
    include_usage: bool


def parse_chat(raw: bytes) -> ChatCall:
    """Validate a `POST /v1/chat/completions` body."""
    return parse_chat_body(parse_json(raw))


def parse_chat_body(body: Mapping[str, Any]) -> ChatCall:
    """`parse_chat` for a body already decoded to a JSON object."""
    unknown_keys(body, CHAT_KEYS)
    _refuse_unsupported_chat(body)
    n = integer(body, "n")
    if n is not None and n != 1:
        raise InvalidRequest(
            f"Invalid 'n': sluicegate answers with one choice; send n=1 or leave it out (got {n}).",
            "n",
            "invalid_value",
        )
    stream = bool(boolean(body, "stream"))
    system, turns = chat_messages(body.get("messages"))
    offered, choice = chat_tools(body.get("tools")), chat_tool_choice(body.get("tool_choice"))
    _check_tools(offered, choice)
    request = ChatRequest(
        model=string(body, "model", required=True) or "",
        messages=turns,
        system=system,
        max_tokens=_chat_max_tokens(body),
        temperature=number(body, "temperature", 0.0, 2.0),
        top_p=number(body, "top_p", 0.0, 1.0),
        stop_sequences=_stop(body.get("stop")),
        seed=integer(body, "seed"),
        tools=offered,
        tool_choice=choice,
    )
    return ChatCall(request, stream, _include_usage(body, stream))


def _refuse_unsupported_chat(body: Mapping[str, Any]) -> None:
    absent_or(body, "functions", [])
    absent_or(body, "function_call", "none", "auto")
    absent_or(body, "logprobs", False)
    absent_or(body, "top_logprobs", 0)
    absent_or(body, "logit_bias", {})
    absent_or(body, "frequency_penalty", 0, 0.0)
    absent_or(body, "presence_penalty", 0, 0.0)
    absent_or(body, "response_format", {"type": "text"})
    absent_or(body, "modalities", ["text"])
    for key in ("audio", "prediction", "web_search_options"):
        absent_or(body, key)


def chat_tools(value: Any) -> tuple[Tool, ...]:
    """`tools`: function tools (`{"type": "function", "function": {...}}`)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise invalid_type("tools", "an array of tools", value)
    return tuple(_function_tool(t, f"tools[{i}]") for i, t in enumerate(value))


def _function_tool(tool: Any, where: str) -> Tool:
    if not isinstance(tool, dict):
        raise invalid_type(where, "an object", tool)
    if tool.get("type") != "function":
        raise unsupported(f"{where}.type", f"a tool of type {json.dumps(tool.get('type'))}")
    spec = tool.get("function")
    if not isinstance(spec, dict):
        raise missing(f"{where}.function")
    unknown_keys(spec, FUNCTION_KEYS)
    return function_tool(spec, f"{where}.function")


def function_tool(spec: Mapping[str, Any], where: str) -> Tool:
    """A function's name, description and parameters (Chat's `function`, a Responses tool)."""
    try:
        name = tools.check_name(spec.get("name"), f"{where}.name")
        schema = spec.get("parameters")
        schema = {"type": "object", "properties": {}} if schema is None else schema
        checked = tools.check_schema(schema, f"{where}.parameters")
    except errors.ValidationError as exc:
        raise InvalidRequest(exc.message, where, "invalid_value") from None
    description = string(spec, "description") or ""
    return Tool(name, description, checked)


def chat_tool_choice(value: Any) -> ToolChoice:
    """`tool_choice`: "none", "auto", "required", or a function by name."""
    if value is None:
        return ToolChoice()
    if value in ("none", "auto"):
        return ToolChoice(value)
    if value == "required":
        return ToolChoice("any")
    function = value.get("function") if isinstance(value, dict) else None
    if isinstance(value, dict) and value.get("type") == "function":
        name = (function or value).get("name")  # Chat nests the name; Responses does not
        if isinstance(name, str):
            return ToolChoice("tool", name)
    raise InvalidRequest(
        "Invalid 'tool_choice': expected 'none', 'auto', 'required' or "
        '{"type": "function", "function": {"name": ...}}.',
        "tool_choice",
        "invalid_value",
    )


def _check_tools(offered: tuple[Tool, ...], choice: ToolChoice) -> None:
    try:
        tools.check_tools(offered, choice)
    except errors.ValidationError as exc:
        raise InvalidRequest(exc.message, "tool_choice", "invalid_value") from None


def _chat_max_tokens(body: Mapping[str, Any]) -> int:
    found = integer(body, "max_completion_tokens", 1)
    if found is None:
        found = integer(body, "max_tokens", 1)
    return DEFAULT_MAX_TOKENS if found is None else found


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise invalid_type("stop", "a string or an array of strings", value)
    if len(value) > MAX_STOP:
        raise InvalidRequest(
            f"Invalid 'stop': array too long. Expected an array with maximum length {MAX_STOP}, "
            f"but got an array with length {len(value)} instead.",
            "stop",
            "array_above_max_length",
        )
    return tuple(value)


def _include_usage(body: Mapping[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
            "invalid_value",
        )
    if not isinstance(options, dict):
        raise invalid_type("stream_options", "an object", options)
    return bool(boolean(options, "include_usage", "stream_options.include_usage"))


def chat_messages(messages: Any) -> tuple[str, tuple[Message, ...]]:
    """(the system text, the conversation) from `messages`."""
    if messages is None:
        raise missing("messages")
    if not isinstance(messages, list):
        raise invalid_type("messages", "an array of message objects", messages)
    if not messages:
        raise InvalidRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "messages",
            "empty_array",
        )
    return conversation(
        (_chat_message(m, f"messages[{i}]") for i, m in enumerate(messages)), "messages"
    )


def conversation(
    pairs: Iterable[tuple[str, str | Message]], param: str
) -> tuple[str, tuple[Message, ...]]:
    """(system text, the turns) from (role, text or turn) pairs: system and developer ones
    make the system text, the rest the conversation, which needs a user turn."""
    system: list[str] = []
    turns: list[Message] = []
    for role, said in pairs:
        if isinstance(said, Message):
            turns.append(said)
        elif role in ("user", "assistant"):
            turns.append(turn(role, said))
        else:
            system.append(said)
    if not turns:
        raise InvalidRequest(
            f"Invalid '{param}': add at least one 'user' message.", param, "invalid_value"
        )
    return "\n\n".join(system), merge_turns(turns)


def _chat_message(m: Any, where: str) -> tuple[str, str | Message]:
    if not isinstance(m, dict):
        raise invalid_type(where, "an object", m)
    role = m.get("role")
    if role == "function":
        raise unsupported(f"{where}.role", "a 'function' message (send 'tool' messages)")
    if role not in ROLES:
        raise InvalidRequest(
            f"Invalid value for '{where}.role': {json.dumps(role)}. Supported values are: "
            "'system', 'developer', 'user', 'assistant', and 'tool'.",
            f"{where}.role",
            "invalid_value",
        )
    unknown_keys(m, MESSAGE_KEYS)
    for key in ("function_call", "audio"):
        if m.get(key) not in (None, []):
            raise unsupported(f"{where}.{key}", f"{key} in a message")
    if role == "tool":
        call_id = m.get("tool_call_id")
        if not isinstance(call_id, str):
            raise missing(f"{where}.tool_call_id")
        result = ToolResult(call_id, (chat_content(m.get("content"), f"{where}.content"),))
        return role, Message("user", "", (result,))
    calls = m.get("tool_calls")
    if role == "assistant" and calls not in (None, []):
        text = "" if m.get("content") is None else chat_content(m["content"], f"{where}.content")
        return role, Message("assistant", text, _tool_calls(calls, f"{where}.tool_calls"))
    if calls not in (None, []):
        raise unsupported(f"{where}.tool_calls", f"tool_calls in a {role!r} message")
    return role, chat_content(m.get("content"), f"{where}.content")


def _tool_calls(calls: Any, where: str) -> tuple[ToolUse, ...]:
    if not isinstance(calls, list):
        raise invalid_type(where, "an array of tool calls", calls)
    out = []
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise missing(f"{where}[{i}].function")
        call_id, name = call.get("id"), function.get("name")
        if not isinstance(call_id, str) or not isinstance(name, str):
            raise missing(
                f"{where}[{i}].{'id' if not isinstance(call_id, str) else 'function.name'}"
            )
        out.append(ToolUse(call_id, name, arguments(function.get("arguments"))))
    return tuple(out)


def arguments(value: Any) -> Any:
    """A call's `arguments` string as JSON (kept as the string if it is none)."""
    if not isinstance(value, str):
        return {} if value is None else value
    try:
        return json.loads(value) if value.strip() else {}
    except ValueError:
        return value


def chat_content(content: Any, where: str) -> str:
    """A message's text: a string, or an array of `{"type": "text", "text": ...}` parts."""
    if isinstance(content, str):
        return content
    if content is None:
        raise missing(where)
    if not isinstance(content, list):
        raise invalid_type(where, "a string or an array of content parts", content)
    return "".join(part_text(p, f"{where}[{j}]", ("text",)) for j, p in enumerate(content))


def part_text(part: Any, where: str, types: tuple[str, ...]) -> str:
    """The text of one content part whose type is one of `types`; any other type is a 400."""
    if not isinstance(part, dict):
        raise invalid_type(where, "an object", part)
    kind_ = part.get("type")
    if kind_ not in types:
        wanted = " or ".join(repr(t) for t in types)
        shown = repr(kind_) if isinstance(kind_, str) else json.dumps(kind_)
        raise InvalidRequest(
            f"Invalid content part at '{where}': type {shown} is not supported by "
            f"sluicegate yet; send parts of type {wanted}.",
            f"{where}.type",
            "unsupported_value",
        )
    text = part.get("text")
    if not isinstance(text, str):
        raise invalid_type(f"{where}.text", "a string", text)
    return text


# -- Chat Completions answers ------------------------------------------------------------------


PLACE = "\ue000text"  # stands for a text delta's content in the chunk built once per stream


def usage_json(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


class ChatStream:
    """Canonical events in, the `data:` payloads of a streamed chat completion out.

    `ended` turns true after `[DONE]` or an in-band error: nothing may follow them."""

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        self.head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
        }
        self.include_usage = include_usage
        self.ended = False
        self.calls: dict[int, int] = {}  # a tool_use block's index -> its tool call's index
        # A text chunk's two fixed ends, around its encoded text (the last PLACE: after any
        # model id): the one chunk of every token, built without a dict to encode each time.
        before, _, after = self._chunk({"content": PLACE}).rpartition(dumps(PLACE))
        self._text_ends = before, after

    def feed(self, event: Event) -> list[str]:
        if self.ended:
            return []
        match event:
            case MessageStart():
                return [self._chunk({"role": "assistant", "content": "", "refusal": None})]
            case TextDelta() if event.text:
                return [self._text_chunk(event.text)]
            case BlockStart(kind="tool_use"):
                self.calls[event.index] = len(self.calls)
                call = tool_call(event.tool_id, event.tool_name, "")
                return [self._chunk({"tool_calls": [{"index": self.calls[event.index], **call}]})]
            case ToolInputDelta() if event.index in self.calls:
                args = {"arguments": event.partial_json}
                return [
                    self._chunk(
                        {"tool_calls": [{"index": self.calls[event.index], "function": args}]}
                    )
                ]
            case ErrorEvent():
                return self._fail(errors.from_event(event.code, event.message))
            case MessageDelta() if event.stop_reason in EARLY_STOPS:
                return self._fail(early_end(event.stop_reason))
            case MessageDelta():
                return [self._chunk({}, FINISH.get(event.stop_reason, "stop"))]
            case MessageStop():
                self.ended = True
                usage = [dumps(self._usage_chunk(event.usage))] if self.include_usage else []
                return [*usage, DONE]
        return []

    def _text_chunk(self, text: str) -> str:
        """`_chunk({"content": text})`, the same characters."""
        before, after = self._text_ends
        return before + dumps(text) + after

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        extra = {"usage": None} if self.include_usage else {}
        return dumps({**self.head, "choices": [choice], **extra})

    def _usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return {**self.head, "choices": [], "usage": usage_json(usage)}

    def _fail(self, exc: errors.SluicegateError) -> list[str]:
        self.ended = True
        return [dumps(error_json(exc))]


def completion_json(
    completion_id: str, created: int, model: str, events: Sequence[Event]
) -> dict[str, Any]:
    """The whole `chat.completion` of a generation that ended naturally."""
    delta = next((e for e in events if isinstance(e, MessageDelta)), None)
    stop = next((e for e in events if isinstance(e, MessageStop)), MessageStop())
    found = tools.blocks(events)
    text = "".join(b.text for b in found)
    reason = FINISH.get(delta.stop_reason, "stop") if delta else "stop"
    calls = [tool_call(b.tool_id, b.tool_name, b.input_json) for b in found if b.kind == "tool_use"]
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not calls else None,
        "refusal": None,
        "annotations": [],
    }
    if calls:
        message["tool_calls"] = calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason}],
        "usage": usage_json(stop.usage),
        "system_fingerprint": None,
    }


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


# -- Models --------------------------------------------------------------------------------------


def model_json(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "sluicegate"}


def models_json(ids: list[str], created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_json(i, created) for i in ids]}
