"""Canonical requests and stream events.

Every door (Bedrock, WebSocket, Function URL...) translates its wire request into a
`ChatRequest`, and every provider produces `Event`s that follow the Anthropic Messages stream
(which is also what Bedrock streams). Routes translate events back into wire bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, overload

Role = Literal["user", "assistant"]

# Natural ends, then early ends (a cancelled generation still ends with one of these).
StopReason = Literal[
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "cancelled",
    "disconnected",
    "timeout",
    "error",
]
EARLY_STOPS: frozenset[str] = frozenset({"cancelled", "disconnected", "timeout", "error"})


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool the model may call: its name, what it does, and its input's JSON schema."""

    name: str
    description: str = ""
    input_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object"})


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """auto: the model chooses between text and a call; any: some call; tool: a call of
    `name`; none: text only."""

    kind: Literal["auto", "any", "tool", "none"] = "auto"
    name: str = ""


@dataclass(frozen=True, slots=True)
class ToolUse:
    """A call the assistant made, in a conversation sent back."""

    id: str
    name: str
    input: Any


@dataclass(frozen=True, slots=True)
class JsonPart:
    """A JSON value in a tool result (text parts are plain strings)."""

    value: Any


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a call gave back, in a user turn."""

    tool_use_id: str
    content: tuple[str | JsonPart, ...] = ()
    is_error: bool = False

    @property
    def text(self) -> str:
        """The content as one text (JSON parts written out), for wires that take only text."""
        return "".join(
            p if isinstance(p, str) else json.dumps(p.value, ensure_ascii=False)
            for p in self.content
        )


@dataclass(frozen=True, slots=True)
class Message:
    """One chat turn: its text, and any tool blocks (an assistant's calls after its text, a
    user's results before it)."""

    role: Role
    text: str
    blocks: tuple[ToolUse | ToolResult, ...] = ()


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A request in canonical form, whatever wire it came in on.

    A sampling parameter left as None was not given: the provider uses its model's own default
    (an explicit 1.0 is a request for 1.0).
    """

    model: str
    messages: tuple[Message, ...]
    max_tokens: int
    system: str = ""
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: tuple[str, ...] = ()
    seed: int | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = ToolChoice()

    def without_prompt(self) -> ChatRequest:
        """This request without its messages, system prompt and tools: what is kept once it
        ended (a 25 MB prompt is not worth keeping for introspection)."""
        return replace(self, messages=(), system="", tools=())


@dataclass(slots=True)
class Usage:
    """Token counts from the tokenizer; providers update it as they go, the Generation owns it."""

    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Metrics:
    """Figures measured by the Generation, in milliseconds."""

    queue_ms: int
    first_token_ms: int | None
    total_ms: int


@dataclass(frozen=True, slots=True)
class MessageStart:
    message_id: str
    model: str
    input_tokens: int


@dataclass(frozen=True, slots=True)
class BlockStart:
    """A content block opens: text, or a tool call (its id and name; its input follows as
    ToolInputDelta JSON fragments)."""

    index: int = 0
    kind: Literal["text", "tool_use"] = "text"
    tool_id: str = ""
    tool_name: str = ""


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    index: int = 0


@dataclass(frozen=True, slots=True)
class ToolInputDelta:
    """A fragment of a tool call's input JSON; the fragments of a block make the whole."""

    partial_json: str
    index: int = 0


@dataclass(frozen=True, slots=True)
class BlockStop:
    index: int = 0


@dataclass(frozen=True, slots=True)
class MessageDelta:
    stop_reason: StopReason
    stop_sequence: str | None = None
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class MessageStop:
    usage: Usage = field(default_factory=Usage)
    metrics: Metrics | None = None


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """An in-band failure after the stream started; `code` is an errors.SluicegateError name."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Ping:
    pass


Event = (
    MessageStart
    | BlockStart
    | TextDelta
    | ToolInputDelta
    | BlockStop
    | MessageDelta
    | MessageStop
    | ErrorEvent
    | Ping
)


class EventLog(Sequence[Event]):
    """One generation's events in order, as a list would hold them, but a text delta of the
    first block (nearly every event) is kept as its bare str: Python's collector does not
    track a str, so a long answer's log adds nothing to a full collection's pause (500 streams
    of 64 chunks held 25,000 TextDelta objects, a fifth of what each full collection walked).
    Reading materializes the event, a short-lived object. `chars` counts the text and tool
    input it holds, as it grows (its size is then known without reading it back)."""

    __slots__ = ("_items", "chars")

    def __init__(self, events: Iterable[Event] = ()) -> None:
        self._items: list[Event | str] = []
        self.chars = 0
        for event in events:
            self.append(event)

    def append(self, event: Event) -> None:
        if type(event) is TextDelta:
            self.chars += len(event.text)
            if event.index == 0:
                self._items.append(event.text)
                return
        elif type(event) is ToolInputDelta:
            self.chars += len(event.partial_json)
        self._items.append(event)

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, i: int) -> Event: ...
    @overload
    def __getitem__(self, i: slice) -> list[Event]: ...
    def __getitem__(self, i: int | slice) -> Event | list[Event]:
        if isinstance(i, slice):
            return [_event(x) for x in self._items[i]]
        return _event(self._items[i])

    def __iter__(self) -> Iterator[Event]:
        return map(_event, self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EventLog):
            return self._items == other._items
        return isinstance(other, list) and list(self) == other

    __hash__ = None  # type: ignore[assignment]  # (mutable, as a list)

    def __repr__(self) -> str:
        return f"EventLog({list(self)!r})"


def _event(item: Event | str) -> Event:
    return TextDelta(item) if type(item) is str else item  # type: ignore[return-value]
