"""Tool calls on the embedded model: the prompt that offers the tools, the grammar that holds
decoding to a call whose arguments match the tool's schema, and the framing that turns the
generated text back into canonical blocks.

The call is written as SmolLM2-Instruct was taught to write calls,
`<tool_call>[{"name": "...", "arguments": {...}}]</tool_call>`, one call per turn. `any` and
`tool` allow only a call (of one of the tools, or of the one named). Under `auto` the model
chooses, in one of two ways, each the one that lets the 135M model choose at all (measured over
seeded runs: a weather question, a sum, a haiku):
- before any tool result, as it was taught: the list opens, and an empty list
  (`<tool_call>[]</tool_call>`, hidden) is followed by a text answer. Asked to choose by its
  first character instead, the model never called a tool; this way it nearly always does;
- once results came back (the last turn holds them), by the first character: `<` starts a call,
  anything else but white space a text answer (never empty). This way it answers in text nine
  times in ten; the other way it called again every time.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncGenerator, Iterable

from llama_cpp.llama_grammar import SchemaConverter

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
    Tool,
    ToolChoice,
    ToolInputDelta,
    ToolResult,
    ToolUse,
)
from sluicegate.generation import Meter
from sluicegate.providers.base import Piece, text_message

HEAD = '<tool_call>[{"name": "'
MID = '", "arguments": '
TAIL = "}]</tool_call>"
# A JSON string character: no control characters (json.loads refuses them), or an escape.
CHAR = (
    r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] '
    r"[0-9a-fA-F])"
)
# A text answer: one character that is neither `<` nor white space, then anything.
TEXT = r"[^<\x00-\x20] [^\x00]*"
EMPTY = "<tool_call>[]</tool_call>"
OPEN = "<tool_call>["


def instructions(tools: Iterable[Tool], answered: bool = False) -> str:
    """The system prompt's part that offers the tools. Once results came back (`answered`:
    the last turn holds them, and the model may choose), a short reminder instead: with the
    whole listing in view, the 135M model calls again nine times in ten; with this, once."""
    if answered:
        names = ", ".join(t.name for t in tools)
        return (
            f"You can call the tools {names} (already called: see the results given). "
            "Answer the question with the tool results, in plain text."
        )
    listed = [
        {"name": t.name, "description": t.description, "parameters": t.input_schema} for t in tools
    ]
    example = '<tool_call>[{"name": "tool_name", "arguments": {"argument": "value"}}]</tool_call>'
    return (
        "You can call the following tools:\n"
        f"<tools>{json.dumps(listed, ensure_ascii=False)}</tools>\n\n"
        f"To call a tool, answer with the call alone, in this format:\n{example}\n"
        f"If no tool fits the question, write the empty list {EMPTY}, then answer in plain text."
    )


def render_calls(uses: Iterable[ToolUse]) -> str:
    """An assistant turn's calls, as the model writes them."""
    calls = [{"name": u.name, "arguments": u.input} for u in uses]
    return f"<tool_call>{json.dumps(calls, ensure_ascii=False)}</tool_call>"


def render_result(result: ToolResult) -> str:
    text = ("Error: " if result.is_error else "") + result.text
    return f"<tool_response>{text}</tool_response>"


# -- the grammar -------------------------------------------------------------------------------


def answered(request: ChatRequest) -> bool:
    """Whether the model is to choose (auto) with the results of its calls in the last turn."""
    last = request.messages[-1] if request.messages else None
    blocks = last.blocks if last is not None else ()
    return request.tool_choice.kind == "auto" and any(isinstance(b, ToolResult) for b in blocks)


def grammar(tools: tuple[Tool, ...], choice: ToolChoice, answered: bool = False) -> str | None:
    """The GBNF grammar for a request's tools and tool choice (see the module docstring);
    None: decoding runs free.

    A schema the converter cannot read is the request's fault: ValidationError."""
    if not tools or choice.kind == "none":
        return None
    offered = [t for t in tools if choice.kind != "tool" or t.name == choice.name]
    if not offered:
        raise errors.ValidationError(f"tool_choice names {choice.name!r}, which is not a tool.")
    converter = SchemaConverter(  # type: ignore[no-untyped-call]
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )
    calls = [_call_rule(converter, i, t) for i, t in enumerate(offered)]
    if "char" in converter._rules:
        converter._rules["char"] = CHAR
    head, tail = literal(HEAD), literal(TAIL)
    converter._rules["call"] = f"{head} ({' | '.join(calls)}) {tail}"
    converter._rules["root"] = "call"
    if choice.kind == "auto":
        converter._rules["text"] = TEXT
        empty = f"{literal(EMPTY)} [\\n]* text"
        converter._rules["root"] = "call | text" if answered else f"call | {empty}"
    rules: str = converter.format_grammar()  # type: ignore[no-untyped-call]
    return rules


def _call_rule(converter: SchemaConverter, i: int, tool: Tool) -> str:
    try:
        schema = converter.resolve_refs(tool.input_schema, f"tool{i}")
        args = converter.visit(schema, f"tool{i}-args")  # type: ignore[no-untyped-call]
    except Exception as exc:  # the converter asserts and raises as it goes
        raise errors.ValidationError(
            f"The input schema of tool {tool.name!r} cannot be used on this model: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    name = json.dumps(tool.name, ensure_ascii=False)[1:-1]
    return f"{literal(name + MID)} {args}"


def literal(text: str) -> str:
    """A GBNF string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


# -- reading the generated text back -------------------------------------------------------------


class CallReader:
    """The generated text of a call, fed as it comes, as a tool_use block's events: the block
    starts once the name is whole, the arguments stream as input fragments, holding back as
    many characters as the closing `}]</tool_call>` has (a string argument may hold those
    characters too: only the end of the text tells)."""

    def __init__(self, tool_id: str) -> None:
        self.tool_id = tool_id
        self.buf = ""
        self.started = False
        self.closed = False

    def feed(self, text: str) -> list[Event]:
        self.buf += text
        out: list[Event] = []
        if not self.started:
            end = self.buf.find(MID, len(HEAD))
            if not self.buf.startswith(HEAD[: len(self.buf)]) or end < 0:
                return out
            name = json.loads('"' + self.buf[len(HEAD) : end] + '"')
            out.append(BlockStart(0, "tool_use", self.tool_id, name))
            self.buf = self.buf[end + len(MID) :]
            self.started = True
        cut = max(0, len(self.buf) - len(TAIL))
        ready, self.buf = self.buf[:cut], self.buf[cut:]
        if ready:
            out.append(ToolInputDelta(ready))
        return out

    def finish(self) -> list[Event]:
        """What is held back, at the end of the text; the block closes."""
        if not self.started:
            return []
        rest, self.buf = self.buf, ""
        if rest.endswith(TAIL):
            rest, self.closed = rest[: -len(TAIL)], True
        out: list[Event] = [ToolInputDelta(rest)] if rest else []
        return [*out, BlockStop(0)]


def new_tool_id() -> str:
    return "toolu_" + secrets.token_hex(12)


async def message(
    request: ChatRequest, meter: Meter, input_tokens: int, pieces: AsyncGenerator[Piece, None]
) -> AsyncGenerator[Event, None]:
    """Frame generated pieces as a call or as text (with the request's stop sequences, as
    text_message does): the first characters say which; an empty call list is hidden."""
    first: list[Piece] = []
    seen = ""
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            first.append(piece)
            seen += piece.text
            if piece.finish is not None or _decided(seen):
                break
        if seen.startswith(HEAD):
            async for event in _call(request, meter, input_tokens, _chain(first, pieces)):
                yield event
            return
        if seen.startswith(EMPTY):
            rest = seen.removeprefix(EMPTY).lstrip("\n")
            tokens = sum(p.tokens for p in first)
            first = [Piece(rest, tokens, first[-1].finish)]
        async for event in text_message(request, meter, input_tokens, _chain(first, pieces)):
            yield event


def _decided(seen: str) -> bool:
    """Whether the text so far tells a call, an empty list and its text, or text alone."""
    if not seen.startswith(OPEN[: len(seen)]) or seen.startswith(HEAD):
        return True
    rest = seen.removeprefix(EMPTY)
    return seen.startswith(EMPTY) and rest.lstrip("\n") != ""


async def _chain(
    first: list[Piece], rest: AsyncGenerator[Piece, None]
) -> AsyncGenerator[Piece, None]:
    for piece in first:
        yield piece
        if piece.finish is not None:
            return
    async for piece in rest:
        yield piece


async def _call(
    request: ChatRequest, meter: Meter, input_tokens: int, pieces: AsyncGenerator[Piece, None]
) -> AsyncGenerator[Event, None]:
    meter.usage.input_tokens = input_tokens
    yield MessageStart("", request.model, input_tokens)
    reader = CallReader(new_tool_id())
    reason: StopReason = "end_turn"
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            meter.usage.output_tokens += piece.tokens
            for event in reader.feed(piece.text):
                yield event
            if piece.finish is not None:
                reason = piece.finish
                break
    for event in reader.finish():
        yield event
    yield MessageDelta("tool_use" if reader.closed else reason)
    yield MessageStop()
