"""The `scripted` provider: deterministic text at a set pace, for tests and load tests.

A "token" here is one word (with its following space); the prompt is counted the same way. The
answer echoes the last user turn, then repeats a fixed text (with some non-ASCII in it) until
`length` tokens or max_tokens.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

from sluicegate.events import ChatRequest, Event
from sluicegate.generation import Meter
from sluicegate.providers.base import Piece, text_message

FILLER = (
    "Streaming puts the first words on screen while the rest are still being written. "
    "Café, naïve, 日本語, emoji 🙂 and ∑ all travel intact. "
)


class ScriptedProvider:
    """See the module docstring; `delay` is seconds per token, `length` tokens per answer."""

    name = "scripted"

    def __init__(self, delay: float = 0.02, length: int = 64) -> None:
        self.delay = delay
        self.length = length
        # Tokens produced so far, per generation key: lets tests prove a stream was stopped.
        self.produced: dict[str, int] = {}

    def describe(self) -> str:
        return f"scripted: {self.length} words per answer, {self.delay * 1000:g} ms per word"

    async def count_tokens(self, request: ChatRequest) -> int:
        return len(_prompt_words(request))

    def words(self, request: ChatRequest) -> list[str]:
        last = next((m.text for m in reversed(request.messages) if m.role == "user"), "")
        script = f"You said: {last} " if last else ""
        words = itertools.cycle(script.split() + FILLER.split())
        return [w + " " for w in itertools.islice(words, self.length)]

    async def stream(self, request: ChatRequest, meter: Meter) -> AsyncIterator[Event]:
        meter.admit()
        pieces = self._pieces(request, meter.key)
        async for event in text_message(request, meter, len(_prompt_words(request)), pieces):
            yield event

    async def _pieces(self, request: ChatRequest, key: str) -> AsyncIterator[Piece]:
        words = self.words(request)[: request.max_tokens]
        self.produced[key] = 0
        for i, word in enumerate(words, 1):
            await asyncio.sleep(self.delay)
            self.produced[key] = i
            last = i == len(words)
            finish = None if not last else "max_tokens" if i == request.max_tokens else "end_turn"
            yield Piece(word, 1, finish)


def _prompt_words(request: ChatRequest) -> list[str]:
    return (request.system + " " + " ".join(m.text for m in request.messages)).split()
