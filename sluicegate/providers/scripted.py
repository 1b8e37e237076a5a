"""The `scripted` provider: deterministic text at a set pace, for tests and load tests.

A "token" here is one word (with its following space); the prompt is counted the same way. The
answer echoes the last user turn, then repeats a fixed text (with some non-ASCII in it) until
`length` tokens or max_tokens. A user turn containing `sluicegate:fail-after=N` makes the
stream fail after N tokens, to exercise in-band errors; `sluicegate:delay-ms=N` sets the pace
for that request.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncGenerator

from sluicegate import errors
from sluicegate.events import ChatRequest, Event
from sluicegate.generation import Meter
from sluicegate.providers.base import Finish, Piece, text_message

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

    def unready(self) -> str | None:
        return None

    def describe(self) -> str:
        return f"scripted: {self.length} words per answer, {self.delay * 1000:g} ms per word"

    async def count_tokens(self, request: ChatRequest) -> int:
        return len(_prompt_words(request))

    def words(self, request: ChatRequest) -> list[str]:
        last = next((m.text for m in reversed(request.messages) if m.role == "user"), "")
        script = f"You said: {last} " if last else ""
        words = itertools.cycle(script.split() + FILLER.split())
        return [w + " " for w in itertools.islice(words, self.length)]

    async def stream(self, request: ChatRequest, meter: Meter) -> AsyncGenerator[Event, None]:
        meter.admit()
        pieces = self._pieces(request, meter.key)
        async for event in text_message(request, meter, len(_prompt_words(request)), pieces):
            yield event

    async def _pieces(self, request: ChatRequest, key: str) -> AsyncGenerator[Piece, None]:
        words = self.words(request)[: request.max_tokens]
        fail_after = _directive(request, "fail-after", 1 << 62)
        delay = _directive(request, "delay-ms", self.delay * 1000) / 1000
        self.produced[key] = 0
        for i, word in enumerate(words, 1):
            await asyncio.sleep(delay)
            if i > fail_after:
                raise errors.ModelStreamError(f"Scripted failure after {fail_after} tokens.")
            self.produced[key] = i
            finish: Finish | None = None
            if i == len(words):
                finish = "max_tokens" if i == request.max_tokens else "end_turn"
            yield Piece(word, 1, finish)


def _directive(request: ChatRequest, name: str, default: float) -> float:
    users = " ".join(m.text for m in request.messages if m.role == "user")
    found = re.search(rf"sluicegate:{name}=(\d+)", users)
    return int(found.group(1)) if found else default


def _prompt_words(request: ChatRequest) -> list[str]:
    return (request.system + " " + " ".join(m.text for m in request.messages)).split()
