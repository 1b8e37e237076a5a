"""The `scripted` provider: deterministic text at a set pace, for tests and load tests.

A "token" here is one word (with its following space); the prompt is counted the same way. The
answer echoes the last user turn, then repeats a fixed text (with some non-ASCII in it) until
`length` tokens or max_tokens. A user turn containing `sluicegate:fail-after=N` makes the
stream fail after N tokens, to exercise in-band errors; `sluicegate:delay-ms=N` sets the pace
for that request.

Tool calls, when the request offers tools: each `sluicegate:tool=NAME` in the user turns (with
its input as a JSON object right after it, `sluicegate:tool=add{"a": 2}`, or else a minimal
input its schema accepts) is one call of a plan, made in order, one per answer, until the
conversation holds as many calls; then the answer is text, which starts with the tool results
of the last turn. A tool_choice of any or tool calls (the first, or the named tool) when the plan
is done. The input streams in pieces of 8 characters (a token each); the call's id depends only
on the conversation.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import re
from collections.abc import AsyncGenerator
from typing import Any

from sluicegate import errors
from sluicegate.events import (
    BlockStart,
    BlockStop,
    ChatRequest,
    Event,
    MessageDelta,
    MessageStart,
    MessageStop,
    StopReason,
    ToolInputDelta,
    ToolResult,
    ToolUse,
)
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
        last = next((m for m in reversed(request.messages) if m.role == "user"), None)
        said = last.text if last else ""
        results = [b.text for b in last.blocks if isinstance(b, ToolResult)] if last else []
        script = f"Tool results: {' '.join(results)} " if results else ""
        script += f"You said: {said} " if said else ""
        words = itertools.cycle(script.split() + FILLER.split())
        return [w + " " for w in itertools.islice(words, self.length)]

    async def stream(self, request: ChatRequest, meter: Meter) -> AsyncGenerator[Event, None]:
        meter.admit()
        call = next_call(request)
        if call is not None:
            async for event in self._call(request, meter, call):
                yield event
            return
        pieces = self._pieces(request, meter.key)
        async for event in text_message(request, meter, len(_prompt_words(request)), pieces):
            yield event

    async def _call(
        self, request: ChatRequest, meter: Meter, call: ToolUse
    ) -> AsyncGenerator[Event, None]:
        meter.usage.input_tokens = len(_prompt_words(request))
        yield MessageStart("", request.model, meter.usage.input_tokens)
        yield BlockStart(0, "tool_use", call.id, call.name)
        text = json.dumps(call.input, ensure_ascii=False)
        pieces = [text[i : i + 8] for i in range(0, len(text), 8)]
        delay = _directive(request, "delay-ms", self.delay * 1000) / 1000
        fail_after = _directive(request, "fail-after", 1 << 62)
        self.produced[meter.key] = 0
        reason: StopReason = "tool_use"
        for i, piece in enumerate(pieces, 1):
            if i > request.max_tokens:
                reason = "max_tokens"
                break
            await asyncio.sleep(delay)
            if i > fail_after:
                raise errors.ModelStreamError(f"Scripted failure after {fail_after} tokens.")
            self.produced[meter.key] = i
            meter.usage.output_tokens += 1
            yield ToolInputDelta(piece)
        yield BlockStop(0)
        yield MessageDelta(reason)
        yield MessageStop()

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
    blocks = [b.text if isinstance(b, ToolResult) else json.dumps(b.input)
              for m in request.messages for b in m.blocks]  # fmt: skip
    texts = [request.system, *(m.text for m in request.messages), *blocks]
    return " ".join(texts).split()


PLANNED = re.compile(r"sluicegate:tool=([a-zA-Z0-9_-]+)")


def next_call(request: ChatRequest) -> ToolUse | None:
    """The call this answer makes, if any (see the module docstring)."""
    choice = request.tool_choice
    if not request.tools or choice.kind == "none":
        return None
    offered = {t.name: t for t in request.tools}
    plan = [p for p in _plan(request) if p[0] in offered]
    made = sum(isinstance(b, ToolUse) for m in request.messages for b in m.blocks)
    if made < len(plan):
        name, given = plan[made]
    elif choice.kind in ("any", "tool"):
        name, given = choice.name or request.tools[0].name, None
    else:
        return None
    tool = offered[name]
    seen = json.dumps([[m.text, len(m.blocks)] for m in request.messages])
    digest = hashlib.sha256(f"{seen}{made}".encode()).hexdigest()[:24]
    return ToolUse("toolu_" + digest, name, example(tool.input_schema) if given is None else given)


def _plan(request: ChatRequest) -> list[tuple[str, Any]]:
    """(name, the input given or None) for each `sluicegate:tool=` in the user turns."""
    plan: list[tuple[str, Any]] = []
    decoder = json.JSONDecoder()
    for m in request.messages:
        if m.role != "user":
            continue
        for found in PLANNED.finditer(m.text):
            given = None
            if m.text.startswith("{", found.end()):
                try:
                    given = decoder.raw_decode(m.text, found.end())[0]
                except ValueError:
                    given = None
            plan.append((found.group(1), given))
    return plan


def example(schema: Any) -> Any:
    """A small value the schema accepts (its first enum value, required properties only)."""
    if not isinstance(schema, dict):
        return {}
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "object")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    if kind == "object":
        props = schema.get("properties") or {}
        required = schema.get("required") or []
        return {k: example(props.get(k, {})) for k in required}
    simple = {"string": "example", "integer": 1, "number": 1, "boolean": True, "array": []}
    return simple.get(kind)
