"""Canonical requests and stream events.

Every door (Bedrock, WebSocket, Function URL...) translates its wire request into a
`ChatRequest`, and every provider produces `Event`s that follow the Anthropic Messages stream
(which is also what Bedrock streams). Routes translate events back into wire bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Role = Literal["user", "assistant"]

# Natural ends, then early ends (a cancelled generation still ends with one of these).
StopReason = Literal[
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "cancelled",
    "disconnected",
    "timeout",
    "error",
]
EARLY_STOPS: frozenset[str] = frozenset({"cancelled", "disconnected", "timeout", "error"})


@dataclass(frozen=True, slots=True)
class Message:
    """One chat turn; content is plain text (the only block type served so far)."""

    role: Role
    text: str


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

    def without_prompt(self) -> ChatRequest:
        """This request without its messages and system prompt: what is kept once it ended
        (a 25 MB prompt is not worth keeping for introspection)."""
        return replace(self, messages=(), system="")


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
    index: int = 0


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
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
    | BlockStop
    | MessageDelta
    | MessageStop
    | ErrorEvent
    | Ping
)
