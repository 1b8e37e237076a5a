"""The Provider protocol and the pieces text providers share (stop sequences, message framing)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal, Protocol

from sluicegate.events import (
    BlockStart,
    BlockStop,
    ChatRequest,
    Event,
    MessageDelta,
    MessageStart,
    MessageStop,
    TextDelta,
)
from sluicegate.generation import Meter

Finish = Literal["end_turn", "max_tokens"]


class Provider(Protocol):
    """Produces canonical events for a request; knows nothing of the web or of wires."""

    name: str

    def stream(self, request: ChatRequest, meter: Meter) -> AsyncGenerator[Event, None]:
        """Yield MessageStart once the request is accepted (raise SluicegateError before it
        to refuse), then the rest of the message. Closing the iterator must stop the work."""
        ...

    async def count_tokens(self, request: ChatRequest) -> int:
        """Input tokens the request's prompt takes, from the model's own tokenizer."""
        ...

    def describe(self) -> str:
        """One line for `sluicegate models` and the start-up banner."""
        ...

    def unready(self) -> str | None:
        """None while the provider can serve; otherwise why not (for /readyz)."""
        ...


@dataclass(frozen=True, slots=True)
class Piece:
    """Some generated text, how many tokens it took, and whether the model finished."""

    text: str
    tokens: int = 1
    finish: Finish | None = None


class StopScanner:
    """Finds stop sequences in streamed text, holding back only what may begin one.

    Each feed costs C-speed searches bounded by the stop sequences' length, not by the text
    held back times their number: a match can only end in the new text (the held text has
    none), and the longest held-back prefix is found from the candidates that start with the
    stop's first character (the gateway caps their total length: MAX_STOP_CHARS)."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """Return (text safe to emit now, the stop sequence matched or None)."""
        buf = self.held + text
        held = len(self.held)
        hits = [(i, s) for s in self.stops if (i := buf.find(s, max(0, held - len(s) + 1))) >= 0]
        if hits:
            i, stop = min(hits)
            self.held = ""
            return buf[:i], stop
        keep = max((self._prefix_len(buf, s) for s in self.stops), default=0)
        self.held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep], None

    @staticmethod
    def _prefix_len(buf: str, stop: str) -> int:
        """The longest k < len(stop) such that buf ends with stop[:k]."""
        j = buf.find(stop[0], max(0, len(buf) - len(stop) + 1))
        while j != -1:
            if stop.startswith(buf[j:]):
                return len(buf) - j
            j = buf.find(stop[0], j + 1)
        return 0

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


async def text_message(
    request: ChatRequest, meter: Meter, input_tokens: int, pieces: AsyncGenerator[Piece, None]
) -> AsyncGenerator[Event, None]:
    """Frame generated pieces as one text message, applying the request's stop sequences.

    `pieces` is closed on every way out, which is how the producer learns to stop.
    """
    meter.usage.input_tokens = input_tokens
    yield MessageStart("", request.model, input_tokens)
    yield BlockStart()
    scanner = StopScanner(request.stop_sequences)
    finish: Finish = "end_turn"
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            meter.usage.output_tokens += piece.tokens
            text, stop = scanner.feed(piece.text)
            if text:
                yield TextDelta(text)
            if stop is not None:
                for event in _ending("stop_sequence", stop):
                    yield event
                return
            if piece.finish is not None:
                finish = piece.finish
                break
    rest = scanner.flush()
    if rest:
        yield TextDelta(rest)
    for event in _ending(finish, None):
        yield event


def _ending(
    reason: Literal["end_turn", "max_tokens", "stop_sequence"], stop: str | None
) -> list[Event]:
    return [BlockStop(), MessageDelta(reason, stop), MessageStop()]
