"""Bedrock's model-agnostic Converse shape to and from canonical form."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from sluicegate.codecs import jsonbody
from sluicegate.errors import ValidationError
from sluicegate.events import (
    EARLY_STOPS,
    BlockStart,
    BlockStop,
    ChatRequest,
    Event,
    JsonPart,
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
from sluicegate.translate import anthropic, families, tools
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
    "toolConfig",
}
UNSUPPORTED_KEYS = {"guardrailConfig", "outputConfig"}


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
    offered, choice = tool_config(body.get("toolConfig"))
    turns = messages(body.get("messages"))
    if not offered and any(m.blocks for m in turns):
        raise ValidationError(
            "The toolConfig field must be defined when using toolUse and toolResult content blocks."
        )
    return ChatRequest(
        model=model,
        messages=turns,
        system=system_text(body.get("system", [])),
        max_tokens=integer(config, "maxTokens", 1, default=DEFAULT_MAX_TOKENS),
        temperature=number(config, "temperature", 0.0, 1.0),
        top_p=number(config, "topP", 0.0, 1.0),
        top_k=optional_integer(extra, "top_k", 0),
        stop_sequences=string_list(config, "stopSequences"),
        tools=offered,
        tool_choice=choice,
    )


def tool_config(value: Any) -> tuple[tuple[Tool, ...], ToolChoice]:
    """`toolConfig`: its tools (`toolSpec` entries; cache points skipped) and `toolChoice`."""
    if value is None:
        return (), ToolChoice()
    if not isinstance(value, dict) or not isinstance(value.get("tools"), list):
        raise ValidationError("toolConfig must be an object with a list of tools.")
    if not value["tools"]:
        raise ValidationError("toolConfig.tools must hold at least one tool.")
    found = tuple(
        _tool(t, f"toolConfig.tools[{i}]")
        for i, t in enumerate(value["tools"])
        if not (isinstance(t, dict) and "cachePoint" in t)
    )
    choice = _tool_choice(value.get("toolChoice"))
    tools.check_tools(found, choice)
    return found, choice


def _tool(entry: Any, where: str) -> Tool:
    spec = entry.get("toolSpec") if isinstance(entry, dict) else None
    if not isinstance(spec, dict):
        kind = next(iter(entry), None) if isinstance(entry, dict) else None
        raise ValidationError(f"{where}: tools of type {kind!r} are not supported; send toolSpec.")
    schema = spec.get("inputSchema")
    if not isinstance(schema, dict) or "json" not in schema:
        raise ValidationError(f"{where}.toolSpec.inputSchema must be an object with 'json'.")
    description = spec.get("description", "")
    if not isinstance(description, str):
        raise ValidationError(f"{where}.toolSpec.description must be a string.")
    return Tool(
        tools.check_name(spec.get("name"), f"{where}.toolSpec.name"),
        description,
        tools.check_schema(schema["json"], f"{where}.toolSpec.inputSchema.json"),
    )


def _tool_choice(value: Any) -> ToolChoice:
    if value is None:
        return ToolChoice()
    if isinstance(value, dict) and len(value) == 1:
        kind, spec = next(iter(value.items()))
        if kind in ("auto", "any") and isinstance(spec, dict):
            return ToolChoice(kind)
        if kind == "tool" and isinstance(spec, dict):
            return ToolChoice("tool", tools.check_name(spec.get("name"), "toolChoice.tool.name"))
    raise ValidationError(
        "toolConfig.toolChoice must be one of {'auto': {}}, {'any': {}} or "
        "{'tool': {'name': '...'}}."
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
        out.append(turn(m["role"], content, f"messages[{i}].content"))
    return tuple(out)


def turn(role: str, content: list[Any], where: str) -> Message:
    """A turn's text and its tool blocks (toolUse in an assistant's, toolResult in a user's)."""
    text: list[str] = []
    found: list[ToolUse | ToolResult] = []
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        if isinstance(block, dict) and "toolUse" in block and role == "assistant":
            found.append(_tool_use(block["toolUse"], f"{at}.toolUse"))
        elif isinstance(block, dict) and "toolResult" in block and role == "user":
            found.append(_tool_result(block["toolResult"], f"{at}.toolResult"))
        else:
            text.append(block_text(block, where))
    return Message("user" if role == "user" else "assistant", "".join(text), tuple(found))


def _tool_use(value: Any, where: str) -> ToolUse:
    if not isinstance(value, dict) or not isinstance(value.get("toolUseId"), str):
        raise ValidationError(f"{where} needs a toolUseId, a name and an input.")
    name = tools.check_name(value.get("name"), f"{where}.name")
    return ToolUse(value["toolUseId"], name, value.get("input", {}))


def _tool_result(value: Any, where: str) -> ToolResult:
    if not isinstance(value, dict) or not isinstance(value.get("toolUseId"), str):
        raise ValidationError(f"{where} needs a toolUseId and a content list.")
    content = value.get("content")
    if not isinstance(content, list):
        raise ValidationError(f"{where}.content must be a list of {{text}} or {{json}} blocks.")
    parts: list[str | JsonPart] = []
    for k, part in enumerate(content):
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif isinstance(part, dict) and "json" in part:
            parts.append(JsonPart(part["json"]))
        else:
            raise ValidationError(f"{where}.content[{k}]: send {{text}} or {{json}} blocks.")
    status = value.get("status", "success")
    if status not in ("success", "error"):
        raise ValidationError(f"{where}.status must be 'success' or 'error'.")
    return ToolResult(value["toolUseId"], tuple(parts), status == "error")


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
        case BlockStart(kind="tool_use"):
            use = {"toolUseId": event.tool_id, "name": event.tool_name}
            return "contentBlockStart", {
                "start": {"toolUse": use},
                "contentBlockIndex": event.index,
            }
        case ToolInputDelta():
            return "contentBlockDelta", {
                "delta": {"toolUse": {"input": event.partial_json}},
                "contentBlockIndex": event.index,
            }
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


def response_json(events: Sequence[Event]) -> dict[str, Any]:
    """The whole Converse response; an early end, for which Converse has no stop reason, is
    the error that stands for it."""
    delta = next(e for e in events if isinstance(e, MessageDelta))
    stop = next(e for e in events if isinstance(e, MessageStop))
    if delta.stop_reason in EARLY_STOPS:
        raise anthropic.early_stop_error(delta.stop_reason, stop.usage.output_tokens)
    return {
        "output": {"message": {"role": "assistant", "content": content(events)}},
        "stopReason": delta.stop_reason,
        "usage": usage(stop.usage),
        "metrics": latency(stop),
    }


def content(events: Sequence[Event]) -> list[dict[str, Any]]:
    """The answer's content blocks; a text-only answer is one text block, even empty."""
    found = tools.blocks(events)
    if not tools.has_calls(found):
        return [{"text": "".join(b.text for b in found)}]
    return [_block(b) for b in found if b.kind == "tool_use" or b.text]


def _block(b: tools.Block) -> dict[str, Any]:
    if b.kind == "text":
        return {"text": b.text}
    return {"toolUse": {"toolUseId": b.tool_id, "name": b.tool_name, "input": b.input}}


def dumps(payload: dict[str, Any]) -> bytes:
    return jsonbody.dumpb(payload)
