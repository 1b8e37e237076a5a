"""What every Bedrock model family does with InvokeModel(+WithResponseStream), as an interface.

A family reads its own body into the canonical request (`parse`), writes the whole answer
(`whole`) and translates canonical events into its own stream chunks (`chunks`, one translator
per stream). Early ends never reach a family: the route turns them into Bedrock errors first.
The route adds `amazon-bedrock-invocationMetrics` to the last chunk of each stream.

Most families stream plain text in one chunk shape; `TextFamily` is their common base: each says
how one piece of text, the opening and the closing chunks and the whole answer look.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from sluicegate.codecs import jsonbody
from sluicegate.events import (
    BlockStop,
    ChatRequest,
    Event,
    MessageDelta,
    MessageStart,
    MessageStop,
    StopReason,
    TextDelta,
    Usage,
)
from sluicegate.translate.anthropic import malformed

Json = dict[str, Any]


class Chunks(Protocol):
    """One stream's translator: each canonical event becomes zero or more chunks."""

    def feed(self, event: Event) -> list[Json]: ...


class Family(Protocol):
    """A model family's InvokeModel body and answers (see the module docstring)."""

    name: str

    def accepts(self, body: Mapping[str, Any]) -> bool:
        """Whether this body is in the family's shape (some models take two)."""
        ...

    def parse(self, model: str, body: Mapping[str, Any]) -> ChatRequest: ...

    def whole(self, chat: ChatRequest, events: Sequence[Event]) -> Json: ...

    def chunks(self, chat: ChatRequest) -> Chunks: ...


@dataclass(slots=True)
class Answer:
    """An answer as far as it has gone: what whole answers and closing chunks are made of."""

    id: str = ""
    model: str = ""
    text: str = ""
    pieces: int = 0  # text deltas so far: a running token count where a family shows one
    stop_reason: StopReason = "end_turn"
    stop_sequence: str | None = None
    usage: Usage = field(default_factory=Usage)

    def add(self, event: Event) -> None:
        match event:
            case MessageStart():
                self.id, self.model = event.message_id, event.model
                self.usage.input_tokens = event.input_tokens
            case TextDelta():
                self.text += event.text
                self.pieces += 1
            case MessageDelta():
                self.stop_reason, self.stop_sequence = event.stop_reason, event.stop_sequence
            case MessageStop():
                self.usage = event.usage


def answer_of(events: Sequence[Event]) -> Answer:
    answer = Answer()
    for event in events:
        answer.add(event)
    return answer


class TextFamily(ABC):
    """A family whose stream is text pieces between an opening and a closing."""

    name = ""
    # The family's word for each natural stop reason (early ones never reach a family).
    stops: ClassVar[Mapping[str, str]] = {}

    def accepts(self, body: Mapping[str, Any]) -> bool:
        return True

    @abstractmethod
    def parse(self, model: str, body: Mapping[str, Any]) -> ChatRequest: ...

    @abstractmethod
    def answer(self, chat: ChatRequest, answer: Answer) -> Json:
        """The InvokeModel response body."""

    @abstractmethod
    def piece(self, text: str, sent: Answer) -> Json:
        """The chunk carrying one piece of text; `sent` is the answer so far, this piece in."""

    @abstractmethod
    def closing(self, chat: ChatRequest, answer: Answer) -> list[Json]:
        """The last chunks, with the stop reason (the route adds the metrics to the last)."""

    def opening(self, answer: Answer) -> list[Json]:
        return []

    def block_end(self, index: int) -> list[Json]:
        return []

    def stop(self, answer: Answer) -> str | None:
        return self.stops.get(answer.stop_reason)

    def whole(self, chat: ChatRequest, events: Sequence[Event]) -> Json:
        return self.answer(chat, answer_of(events))

    def chunks(self, chat: ChatRequest) -> Chunks:
        return TextChunks(self, chat)


class TextChunks:
    """The stream translator of a TextFamily."""

    def __init__(self, family: TextFamily, chat: ChatRequest) -> None:
        self.family = family
        self.chat = chat
        self.sent = Answer()

    def feed(self, event: Event) -> list[Json]:
        self.sent.add(event)
        match event:
            case MessageStart():
                return self.family.opening(self.sent)
            case TextDelta() if event.text:
                return [self.family.piece(event.text, self.sent)]
            case BlockStop():
                return self.family.block_end(event.index)
            case MessageStop():
                return self.family.closing(self.chat, self.sent)
        return []


# -- reading bodies ------------------------------------------------------------------------------


def text(body: Mapping[str, Any], key: str, where: str = "#") -> str:
    """The string at a required key, in Bedrock's schema-error wording."""
    if key not in body:
        raise malformed(f"{where}: required key [{key}] not found")
    value = body[key]
    if not isinstance(value, str):
        raise malformed(f"{where}/{key}: expected type: String, found: {kind(value)}")
    return value


def obj(body: Mapping[str, Any], key: str, where: str = "#") -> Mapping[str, Any]:
    """The object at an optional key ({} when absent or null)."""
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise malformed(f"{where}/{key}: expected type: JSONObject, found: {kind(value)}")
    return value


def kind(value: Any) -> str:
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int | float):
        return "Number"
    names = {str: "String", list: "JSONArray", dict: "JSONObject", type(None): "Null"}
    return names.get(type(value), type(value).__name__)


def dumps(data: Json) -> bytes:
    return jsonbody.dumpb(data)
