"""Anthropic Messages bodies to and from canonical form: as Bedrock's InvokeModel takes them
(`parse_body`), and as the Messages API does, with `model` and `stream` in the body
(`parse_request`, `parse_count`). Both share one validation; the Messages API's errors name
the field its own way (`max_tokens: ...`) where Bedrock's say `#/max_tokens: ...`."""

from __future__ import annotations

import contextlib
import datetime
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sluicegate import errors
from sluicegate.codecs import jsonbody
from sluicegate.codecs.jsonbody import dumps
from sluicegate.errors import ValidationError
from sluicegate.events import (
    EARLY_STOPS,
    BlockStart,
    BlockStop,
    ChatRequest,
    ErrorEvent,
    Event,
    Message,
    MessageDelta,
    MessageStart,
    MessageStop,
    Metrics,
    Ping,
    TextDelta,
    Tool,
    ToolChoice,
    ToolInputDelta,
    ToolResult,
    ToolUse,
)
from sluicegate.translate import tools

BEDROCK_VERSION = "bedrock-2023-05-31"
# Bedrock's own value, or a client's API version date (the Anthropic SDK sends its own).
VERSION = re.compile(r"(?:bedrock-)?(\d{4}-\d{2}-\d{2})")
KNOWN_KEYS = {
    "anthropic_version",
    "max_tokens",
    "messages",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "metadata",
    "anthropic_beta",
    "tools",
    "tool_choice",
}
UNSUPPORTED_KEYS = {"thinking"}
UNSUPPORTED_BLOCKS = {"image", "document", "thinking", "redacted_thinking"}
TOOL_KEYS = {"type", "name", "description", "input_schema", "cache_control"}
CHOICES = {"auto", "any", "tool", "none"}
MAX_STOP_SEQUENCES = 8191
# The Messages API's own body: the model and stream flag inside it, no anthropic_version
# (a header there). Keys about where and how fast the hosted API serves, or what it caches,
# change nothing in the answer: accepted and ignored.
API_ONLY_KEYS = {"model", "stream", "service_tier", "inference_geo", "speed", "cache_control"}
API_KEYS = (KNOWN_KEYS - {"anthropic_version", "anthropic_beta"}) | API_ONLY_KEYS
API_UNSUPPORTED_KEYS = UNSUPPORTED_KEYS | {
    "output_config",
    "output_format",
    "container",
    "mcp_servers",
}
COUNT_KEYS = {"model", "messages", "system", "speed", "cache_control", "tools", "tool_choice"}


class Malformed(ValidationError):
    """A body that breaks the schema; `detail` names the field as a JSON pointer (`#/...`)."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"Malformed input request: {detail}, please reformat your input and try again."
        )
        self.detail = detail


def malformed(detail: str) -> ValidationError:
    return Malformed(detail)


def parse_json(raw: bytes) -> Any:
    try:
        return jsonbody.loads(raw)
    except jsonbody.BadJSON as exc:
        raise malformed(f"the body {exc}") from None


def parse_body(model: str, raw: bytes) -> ChatRequest:
    """Validate a Bedrock Anthropic Messages body and give its canonical request."""
    return parse_object(model, json_object(raw))


def parse_object(model: str, body: Mapping[str, Any]) -> ChatRequest:
    """`parse_body` for a body already decoded to a JSON object."""
    check_keys(body, KNOWN_KEYS, UNSUPPORTED_KEYS)
    require(body, "anthropic_version")
    if not is_version(body["anthropic_version"]):
        raise malformed(
            f"#/anthropic_version: {json.dumps(body['anthropic_version'])} is not a version "
            f"such as {BEDROCK_VERSION!r} (bedrock-YYYY-MM-DD or YYYY-MM-DD)"
        )
    require(body, "max_tokens")
    return request_from(model, body)


def parse_request(raw: bytes) -> tuple[ChatRequest, bool]:
    """Validate a Messages API body (`POST /v1/messages`): its canonical request, and whether
    it asks to be streamed."""
    with api_messages():
        body = json_object(raw)
        check_keys(body, API_KEYS, API_UNSUPPORTED_KEYS)
        model = model_of(body)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise malformed(f"#/stream: expected a boolean, found {json.dumps(stream)}")
        require(body, "max_tokens")
        return request_from(model, body), stream


def parse_count(raw: bytes) -> ChatRequest:
    """Validate a `POST /v1/messages/count_tokens` body (no max_tokens: nothing is generated)."""
    with api_messages():
        body = json_object(raw)
        check_keys(body, COUNT_KEYS, API_UNSUPPORTED_KEYS)
        return request_from(model_of(body), {**body, "max_tokens": 1})


def json_object(raw: bytes) -> dict[str, Any]:
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise malformed("the body must be a JSON object")
    return body


def check_keys(
    body: Mapping[str, Any], known: set[str], unsupported: set[str], where: str = "#"
) -> None:
    """Keys outside `known` are Bedrock's schema error; `where` points at a nested object."""
    extra = sorted(set(body) - known - unsupported)
    if extra:
        at = "" if where == "#" else f"{where}: "
        raise malformed(f"{at}extraneous key [{extra[0]}] is not permitted")
    for key in sorted(unsupported & set(body)):
        raise ValidationError(f"[{key}] is not supported by sluicegate yet: remove it.")


def require(body: Mapping[str, Any], key: str, where: str = "#") -> None:
    if key not in body:
        raise malformed(f"{where}: required key [{key}] not found")


def model_of(body: Mapping[str, Any]) -> str:
    require(body, "model")
    model = body["model"]
    if not isinstance(model, str) or not model:
        raise malformed(f"#/model: expected a model id, found {json.dumps(model)}")
    return model


@contextlib.contextmanager
def api_messages() -> Iterator[None]:
    """Schema errors worded as the Messages API words them: `field.path: problem`."""
    try:
        yield
    except Malformed as exc:
        raise ValidationError(api_detail(exc.detail)) from None


def api_detail(detail: str) -> str:
    """`#: required key [model] not found` -> `model: Field required`; `#/messages/0: ...` ->
    `messages.0: ...`."""
    if found := re.fullmatch(r"#: required key \[(\w+)\] not found", detail):
        return f"{found.group(1)}: Field required"
    if found := re.fullmatch(r"extraneous key \[(\w+)\] is not permitted", detail):
        return f"{found.group(1)}: Extra inputs are not permitted"
    return re.sub(r"#/(\S*?):", lambda m: m.group(1).replace("/", ".") + ":", detail)


def request_from(model: str, body: Mapping[str, Any]) -> ChatRequest:
    """The canonical request of a body whose keys have been checked."""
    offered, choice = parse_tools(body.get("tools")), tool_choice(body.get("tool_choice"))
    tools.check_tools(offered, choice)
    turns = parse_messages(body.get("messages"))
    if not offered and any(m.blocks for m in turns):
        raise ValidationError(
            "Requests which include `tool_use` or `tool_result` blocks must define tools."
        )
    return ChatRequest(
        model=model,
        messages=turns,
        max_tokens=integer(body, "max_tokens", 1),
        system=system_text(body.get("system", "")),
        temperature=number(body, "temperature", 0.0, 1.0),
        top_p=number(body, "top_p", 0.0, 1.0),
        top_k=optional_integer(body, "top_k", 0),
        stop_sequences=string_list(body, "stop_sequences"),
        tools=offered,
        tool_choice=choice,
    )


def parse_tools(value: Any) -> tuple[Tool, ...]:
    """`tools`: client tools (name, description, input_schema); server tools are refused."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise malformed("#/tools: expected a list of tools")
    return tuple(_tool(t, f"#/tools/{i}") for i, t in enumerate(value))


def _tool(tool: Any, where: str) -> Tool:
    if not isinstance(tool, dict):
        raise malformed(f"{where}: expected an object")
    if tool.get("type", "custom") not in ("custom", None):
        raise ValidationError(
            f"{where}: server tools ({tool['type']!r}) are not supported by sluicegate; "
            "send client tools (name, description, input_schema)."
        )
    check_keys(tool, TOOL_KEYS, set(), where)
    require(tool, "name", where)
    require(tool, "input_schema", where)
    description = tool.get("description", "")
    if not isinstance(description, str):
        raise malformed(f"{where}/description: expected a string")
    return Tool(
        tools.check_name(tool["name"], f"{where}/name"),
        description,
        tools.check_schema(tool["input_schema"], f"{where}/input_schema"),
    )


def tool_choice(value: Any) -> ToolChoice:
    """`tool_choice`: {"type": auto | any | tool (with a name) | none}."""
    if value is None:
        return ToolChoice()
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in CHOICES:
        raise malformed("#/tool_choice/type: expected one of 'auto', 'any', 'tool', 'none'")
    if kind != "tool":
        return ToolChoice(kind)
    return ToolChoice("tool", tools.check_name(value.get("name"), "#/tool_choice/name"))


def is_version(value: Any) -> bool:
    """`bedrock-YYYY-MM-DD` or `YYYY-MM-DD`, with a date that exists."""
    found = VERSION.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        return False
    try:
        datetime.date.fromisoformat(found.group(1))
    except ValueError:
        return False
    return True


def integer(
    body: Mapping[str, Any], key: str, low: int, *, default: int | None = None, where: str = "#"
) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise malformed(f"{where}/{key}: expected an integer, found {json.dumps(value)}")
    if value < low:
        raise malformed(f"{where}/{key}: {value} is not greater or equal to {low}")
    return value


def optional_integer(body: Mapping[str, Any], key: str, low: int, where: str = "#") -> int | None:
    """Like `integer`, with None when the key is absent (a sampling parameter not given)."""
    return integer(body, key, low, where=where) if key in body else None


def number(
    body: Mapping[str, Any], key: str, low: float, high: float, where: str = "#"
) -> float | None:
    """The number at `key` between `low` and `high`, or None when the key is absent."""
    if key not in body:
        return None
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise malformed(f"{where}/{key}: expected a number, found {json.dumps(value)}")
    if not low <= value <= high:
        raise malformed(f"{where}/{key}: {value} is not between {low:g} and {high:g}")
    return float(value)


def string_list(body: Mapping[str, Any], key: str, where: str = "#") -> tuple[str, ...]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise malformed(f"{where}/{key}: expected a list of strings")
    if len(value) > MAX_STOP_SEQUENCES:
        raise malformed(f"{where}/{key}: at most {MAX_STOP_SEQUENCES} entries")
    return tuple(value)


def system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n".join(block_text(b, "#/system") for b in system)
    raise malformed("#/system: expected a string or a list of text blocks")


def parse_messages(messages: Any) -> tuple[Message, ...]:
    if not isinstance(messages, list) or not messages:
        raise malformed("#/messages: expected a non-empty list of messages")
    out: list[Message] = []
    for i, m in enumerate(messages):
        where = f"#/messages/{i}"
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise malformed(f"{where}: each message needs a role of 'user' or 'assistant'")
        extra = sorted(set(m) - {"role", "content"})
        if extra:
            raise malformed(f"{where}: extraneous key [{extra[0]}] is not permitted")
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ValidationError(
                "messages: roles must alternate between 'user' and 'assistant', starting with "
                f"'user'; message {i} has role {m['role']!r}."
            )
        out.append(message(m["role"], m.get("content"), where))
    return tuple(out)


def message(role: str, content: Any, where: str) -> Message:
    """A turn's text and its tool blocks: tool_use in an assistant's, tool_result in a user's."""
    if isinstance(content, str):
        return Message("user" if role == "user" else "assistant", content)
    if not isinstance(content, list) or not content:
        raise malformed(f"{where}/content: expected a string or a non-empty list of content blocks")
    text: list[str] = []
    found: list[ToolUse | ToolResult] = []
    for j, block in enumerate(content):
        at = f"{where}/content/{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_use" and role == "assistant":
            found.append(_tool_use(block, at))
        elif kind == "tool_result" and role == "user":
            found.append(_tool_result(block, at))
        else:
            text.append(block_text(block, at))
    return Message("user" if role == "user" else "assistant", "".join(text), tuple(found))


def _tool_use(block: dict[str, Any], where: str) -> ToolUse:
    for key in ("id", "name", "input"):
        require(block, key, where)
    if not isinstance(block["id"], str):
        raise malformed(f"{where}/id: expected a string")
    return ToolUse(block["id"], tools.check_name(block["name"], f"{where}/name"), block["input"])


def _tool_result(block: dict[str, Any], where: str) -> ToolResult:
    require(block, "tool_use_id", where)
    if not isinstance(block["tool_use_id"], str):
        raise malformed(f"{where}/tool_use_id: expected a string")
    content = block.get("content", "")
    if isinstance(content, str):
        parts: tuple[str, ...] = (content,) if content else ()
    elif isinstance(content, list):
        parts = tuple(block_text(b, f"{where}/content/{k}") for k, b in enumerate(content))
    else:
        raise malformed(f"{where}/content: expected a string or a list of text blocks")
    return ToolResult(block["tool_use_id"], parts, block.get("is_error") is True)


def block_text(block: Any, where: str) -> str:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text" and isinstance(block.get("text"), str):
        return str(block["text"])
    if kind == "text":
        raise malformed(f"{where}/text: expected a string")
    if kind in UNSUPPORTED_BLOCKS:
        raise ValidationError(
            f"{where}: content blocks of type {kind!r} are not supported yet; send 'text' blocks."
        )
    if kind in ("tool_use", "tool_result"):
        side = "an assistant" if kind == "tool_use" else "a user"
        raise ValidationError(f"{where}: {kind} blocks belong in {side} turn.")
    raise malformed(f"{where}: unknown content block type {json.dumps(kind)}; expected 'text'")


# -- canonical events to Anthropic stream events -----------------------------------------------


def event_json(event: Event) -> dict[str, Any] | None:
    """The Anthropic stream event for a canonical event (None: nothing to send)."""
    match event:
        case MessageStart():
            return {
                "type": "message_start",
                "message": {
                    "id": event.message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": event.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": event.input_tokens, "output_tokens": 0},
                },
            }
        case BlockStart(kind="tool_use"):
            use = {"type": "tool_use", "id": event.tool_id, "name": event.tool_name, "input": {}}
            return {"type": "content_block_start", "index": event.index, "content_block": use}
        case BlockStart():
            return {
                "type": "content_block_start",
                "index": event.index,
                "content_block": {"type": "text", "text": ""},
            }
        case ToolInputDelta():
            return {
                "type": "content_block_delta",
                "index": event.index,
                "delta": {"type": "input_json_delta", "partial_json": event.partial_json},
            }
        case TextDelta():
            return {
                "type": "content_block_delta",
                "index": event.index,
                "delta": {"type": "text_delta", "text": event.text},
            }
        case BlockStop():
            return {"type": "content_block_stop", "index": event.index}
        case MessageDelta():
            return {
                "type": "message_delta",
                "delta": {"stop_reason": event.stop_reason, "stop_sequence": event.stop_sequence},
                "usage": {"output_tokens": event.output_tokens},
            }
        case MessageStop():
            return {"type": "message_stop"}
        case ErrorEvent():
            return error_json(errors.from_event(event.code, event.message))
        case Ping():
            return {"type": "ping"}
    return None


def error_json(exc: errors.SluicegateError) -> dict[str, Any]:
    """Anthropic's error object, the body of an error response and of an `error` event."""
    return {"type": "error", "error": {"type": exc.anthropic, "message": exc.message}}


def early_end(event: Event) -> errors.SluicegateError | None:
    """The error a Messages API stream ends with at this event, if any: an in-band failure, or
    a stop reason that API does not define (cancelled, disconnected, timeout, error)."""
    if isinstance(event, ErrorEvent):
        return errors.from_event(event.code, event.message)
    if isinstance(event, MessageDelta) and event.stop_reason in EARLY_STOPS:
        return early_stop_error(event.stop_reason, event.output_tokens)
    return None


def early_stop_error(reason: str, tokens: int) -> errors.SluicegateError:
    """The error that stands for an early stop reason where a door has no word for it."""
    after = f"after {tokens} output tokens"
    if reason == "timeout":
        return errors.ModelTimeout(f"The model did not finish in time: stopped {after}.")
    if reason == "cancelled":
        return errors.Cancelled(f"The generation was stopped before it finished, {after}.")
    if reason == "disconnected":
        return errors.Cancelled(f"The generation was stopped when its client left, {after}.")
    return errors.SluicegateError(f"The model stopped without finishing its answer, {after}.")


def text_delta_json(event: TextDelta) -> str:
    """`event_json(event)` encoded (compact, not ASCII-escaped), written out: the one event of
    every token, with no dict to build and encode each time."""
    text = dumps(event.text)
    return (
        f'{{"type":"content_block_delta","index":{event.index:d},'
        f'"delta":{{"type":"text_delta","text":{text}}}}}'
    )


def api_events(event: Event) -> tuple[list[dict[str, Any]], bool]:
    """The Messages API stream events for a canonical event, and whether the stream ends with
    them. As that API does, a `ping` follows the first content_block_start; an early end is an
    `error` event, never a stop reason the API does not define."""
    failure = early_end(event)
    if failure is not None:
        return [error_json(failure)], True
    data = event_json(event)
    if data is None:
        return [], False
    if isinstance(event, BlockStart) and event.index == 0:
        return [data, {"type": "ping"}], False
    return [data], isinstance(event, MessageStop)


def wire_events(event: Event) -> tuple[list[tuple[str, str]], bool]:
    """`api_events`, each as its type and its JSON text (compact, not ASCII-escaped); a text
    delta, most of any stream, written out with no dict built and encoded."""
    if isinstance(event, TextDelta):
        return [("content_block_delta", text_delta_json(event))], False
    out, last = api_events(event)
    return [(data["type"], dumps(data)) for data in out], last


def invocation_metrics(stop: MessageStop) -> dict[str, int]:
    """Bedrock's `amazon-bedrock-invocationMetrics`, from the Generation's own figures."""
    m = stop.metrics
    return {
        "inputTokenCount": stop.usage.input_tokens,
        "outputTokenCount": stop.usage.output_tokens,
        "invocationLatency": m.total_ms if m else 0,
        "firstByteLatency": _first_byte(m) if m else 0,
    }


def _first_byte(m: Metrics) -> int:
    return m.total_ms if m.first_token_ms is None else m.first_token_ms


def message_json(events: Sequence[Event]) -> dict[str, Any]:
    """The whole InvokeModel response: the message that the events spell out."""
    start = next(e for e in events if isinstance(e, MessageStart))
    delta = next(e for e in events if isinstance(e, MessageDelta))
    stop = next(e for e in events if isinstance(e, MessageStop))
    return {
        "id": start.message_id,
        "type": "message",
        "role": "assistant",
        "model": start.model,
        "content": content_json(events),
        "stop_reason": delta.stop_reason,
        "stop_sequence": delta.stop_sequence,
        "usage": {
            "input_tokens": stop.usage.input_tokens,
            "output_tokens": stop.usage.output_tokens,
        },
    }


def content_json(events: Sequence[Event]) -> list[dict[str, Any]]:
    """The message's content blocks; a text-only answer is one text block, even empty."""
    found = tools.blocks(events)
    if not tools.has_calls(found):
        return [{"type": "text", "text": "".join(b.text for b in found)}]
    return [_block_json(b) for b in found if b.kind == "tool_use" or b.text]


def _block_json(b: tools.Block) -> dict[str, Any]:
    if b.kind == "text":
        return {"type": "text", "text": b.text}
    return {"type": "tool_use", "id": b.tool_id, "name": b.tool_name, "input": b.input}
