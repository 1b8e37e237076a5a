"""What every door's tool use shares: the checks on tools and tool choice, and the content
blocks a whole answer is made of (text, and tool calls with their input JSON put together)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sluicegate.errors import ValidationError
from sluicegate.events import (
    BlockStart,
    Event,
    TextDelta,
    Tool,
    ToolChoice,
    ToolInputDelta,
)

# What Bedrock, Anthropic and OpenAI all accept as a tool's name.
NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValidationError(
            f"{where}: a tool name must be 1 to 64 letters, digits, '_' or '-', "
            f"not {json.dumps(name)}."
        )
    return name


def check_tools(tools: tuple[Tool, ...], choice: ToolChoice) -> None:
    """Names are unique, and a tool choice that names a tool names one of them."""
    names = [t.name for t in tools]
    double = next((n for n in names if names.count(n) > 1), None)
    if double is not None:
        raise ValidationError(f"Tool names must be unique: {double!r} is given twice.")
    if choice.kind == "tool" and choice.name not in names:
        raise ValidationError(f"The tool choice names {choice.name!r}, which is not a tool given.")
    if choice.kind in ("any", "tool") and not tools:
        raise ValidationError("A tool choice of 'any' or 'tool' needs tools.")


def check_schema(schema: Any, where: str) -> dict[str, Any]:
    if not isinstance(schema, dict):
        raise ValidationError(f"{where}: a tool's input schema must be a JSON object.")
    if schema.get("type", "object") != "object":
        raise ValidationError(f"{where}: a tool's input schema must have type 'object'.")
    return schema


# -- whole answers ---------------------------------------------------------------------------


@dataclass(slots=True)
class Block:
    """One content block of an answer: text, or a tool call and its input JSON text."""

    kind: str = "text"
    text: str = ""
    tool_id: str = ""
    tool_name: str = ""
    input_json: str = ""

    @property
    def input(self) -> Any:
        """The call's input; an object cut short (max_tokens) or empty is {}."""
        try:
            value = json.loads(self.input_json) if self.input_json.strip() else {}
        except ValueError:
            return {}
        return value


def blocks(events: Sequence[Event]) -> list[Block]:
    """The content blocks the events spell out, in order."""
    out: dict[int, Block] = {}
    for e in events:
        if isinstance(e, BlockStart):
            out[e.index] = Block(e.kind, "", e.tool_id, e.tool_name)
        elif isinstance(e, TextDelta):
            out.setdefault(e.index, Block()).text += e.text
        elif isinstance(e, ToolInputDelta):
            out.setdefault(e.index, Block("tool_use")).input_json += e.partial_json
    return [out[i] for i in sorted(out)]


def has_calls(found: list[Block]) -> bool:
    return any(b.kind == "tool_use" for b in found)
