"""Tool calls on the embedded model: the grammar, the reader of a generated call, the framing,
and the model itself held to the schema (the grammar through llama.cpp's own sampler)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

import jsonschema
import llama_cpp
import pytest

from sluicegate import errors
from sluicegate.events import (
    BlockStart,
    BlockStop,
    ChatRequest,
    Event,
    JsonPart,
    Message,
    MessageDelta,
    TextDelta,
    Tool,
    ToolChoice,
    ToolInputDelta,
    ToolResult,
    ToolUse,
)
from sluicegate.generation import Meter
from sluicegate.providers import toolcall
from sluicegate.providers.base import Piece
from sluicegate.providers.engine import grammar_sampler
from sluicegate.providers.local import LocalProvider

WEATHER = Tool(
    "get_weather",
    "Current weather in a city.",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
)
ADD = Tool(
    "add",
    "Add two integers.",
    {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
)
CALL = '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"} }]</tool_call>'  # noqa: E501


def test_the_grammar_is_one_llama_cpp_accepts(local: LocalProvider) -> None:
    for kind in ("auto", "any"):
        text = toolcall.grammar((WEATHER, ADD), ToolChoice(kind))  # type: ignore[arg-type]
        assert text is not None
        llama_cpp.llama_sampler_free(grammar_sampler(local.model.vocab, text))
    forced = toolcall.grammar((WEATHER, ADD), ToolChoice("tool", "add"))
    assert forced is not None and "get_weather" not in forced and "text" not in forced


def test_no_tools_or_none_leave_decoding_free() -> None:
    assert toolcall.grammar((), ToolChoice("any")) is None
    assert toolcall.grammar((WEATHER,), ToolChoice("none")) is None


def test_a_tool_choice_naming_no_tool_or_an_unusable_schema_is_refused() -> None:
    with pytest.raises(errors.ValidationError, match="not a tool"):
        toolcall.grammar((WEATHER,), ToolChoice("tool", "nope"))
    bad = Tool("x", "", {"$ref": "https://example.com/schema.json"})
    with pytest.raises(errors.ValidationError, match="cannot be used"):
        toolcall.grammar((bad,), ToolChoice("any"))


def read(chunks: list[str]) -> list[Event]:
    reader = toolcall.CallReader("toolu_1")
    out = [e for c in chunks for e in reader.feed(c)]
    return out + reader.finish()


@pytest.mark.parametrize("cut", range(1, len(CALL)))
def test_a_call_split_anywhere_reads_the_same(cut: int) -> None:
    events = read([CALL[:cut], CALL[cut:]])
    assert events[0] == BlockStart(0, "tool_use", "toolu_1", "get_weather")
    assert isinstance(events[-1], BlockStop)
    text = "".join(e.partial_json for e in events if isinstance(e, ToolInputDelta))
    assert json.loads(text) == {"city": "Paris", "unit": "celsius"}


def test_a_call_read_character_by_character_streams_its_input() -> None:
    reader = toolcall.CallReader("toolu_1")
    fragments = [e for c in CALL for e in reader.feed(c) if isinstance(e, ToolInputDelta)]
    assert len(fragments) > 10  # it streams, held back only by the closing's length
    reader.finish()
    assert reader.closed


def test_a_cut_off_call_is_not_closed() -> None:
    reader = toolcall.CallReader("toolu_1")
    reader.feed(CALL[:60])
    reader.finish()
    assert not reader.closed


async def pieces(texts: list[str], finish: str = "end_turn") -> AsyncGenerator[Piece, None]:
    for i, t in enumerate(texts):
        yield Piece(t, 1, finish if i == len(texts) - 1 else None)  # type: ignore[arg-type]


def frame(texts: list[str], finish: str = "end_turn", **kw: Any) -> list[Event]:
    request = ChatRequest("m", (Message("user", "hi"),), 64, tools=(WEATHER,), **kw)

    async def run() -> list[Event]:
        gen = toolcall.message(request, Meter(), 5, pieces(texts, finish))
        return [e async for e in gen]

    return asyncio.run(run())


def test_an_empty_call_list_is_hidden_and_the_text_after_it_is_the_answer() -> None:
    events = frame(["<tool_call>[", "]</tool_call>", "\n", "Hello", " there"])
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello there"
    assert not any(isinstance(e, BlockStart) and e.kind == "tool_use" for e in events)


def test_auto_chooses_by_the_list_before_results_and_by_the_first_character_after() -> None:
    before = toolcall.grammar((WEATHER,), ToolChoice("auto"))
    after = toolcall.grammar((WEATHER,), ToolChoice("auto"), answered=True)
    assert before is not None and 'root ::= call | "<tool_call>[]</tool_call>"' in before
    assert after is not None and "root ::= call | text\n" in after


def test_a_call_ends_with_tool_use_and_text_as_text() -> None:
    events = frame([CALL[:9], CALL[9:]])
    assert [e.stop_reason for e in events if isinstance(e, MessageDelta)] == ["tool_use"]
    events = frame(["", "Hello", " there"], stop_sequences=("there",))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello "
    assert [e.stop_reason for e in events if isinstance(e, MessageDelta)] == ["stop_sequence"]
    cut = frame([CALL[:50]], "max_tokens")
    assert [e.stop_reason for e in cut if isinstance(e, MessageDelta)] == ["max_tokens"]


def test_tool_turns_are_rendered_for_the_model(local: LocalProvider) -> None:
    turns = (
        Message("user", "Weather in Paris?"),
        Message("assistant", "", (ToolUse("toolu_1", "get_weather", {"city": "Paris"}),)),
        Message("user", "Thanks.", (ToolResult("toolu_1", (JsonPart({"t": 18}),), True),)),
    )
    prompt = local.render(ChatRequest("m", turns, 10, tools=(WEATHER,)))
    assert '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]' in prompt
    assert '<tool_response>Error: {"t": 18}</tool_response>\nThanks.' in prompt
    # Results came back: a reminder, not the listing (which makes the model call again).
    assert "<tools>" not in prompt and "Answer the question with the tool results" in prompt
    first = local.render(ChatRequest("m", turns[:1], 10, tools=(WEATHER,)))
    assert '<tools>[{"name": "get_weather"' in first
    forced = ChatRequest("m", turns, 10, tools=(WEATHER,), tool_choice=ToolChoice("any"))
    assert "<tools>" in local.render(forced)
    plain = local.render(ChatRequest("m", turns[:1], 10, tools=(WEATHER,), tool_choice=NONE))
    assert "<tools>" not in plain


NONE = ToolChoice("none")


def generate(local: LocalProvider, request: ChatRequest) -> list[Event]:
    async def run() -> list[Event]:
        return [e async for e in local.stream(request, Meter(key=f"k{request.seed}"))]

    return asyncio.run(run())


def call_input(events: list[Event]) -> Any:
    return json.loads("".join(e.partial_json for e in events if isinstance(e, ToolInputDelta)))


def forced(local: LocalProvider, seed: int, temperature: float | None) -> list[Event]:
    question = Message("user", "What is the weather in Paris, in celsius? Or add 2 and 3.")
    request = ChatRequest(
        "m", (question,), 48, temperature=temperature, seed=seed, tools=(WEATHER, ADD),
        tool_choice=ToolChoice("any"),
    )  # fmt: skip
    return generate(local, request)


def check_call(events: list[Event]) -> str:
    """The stop reason; a call that ended has input its tool's schema accepts."""
    start = next(e for e in events if isinstance(e, BlockStart))
    assert start.kind == "tool_use" and start.tool_id.startswith("toolu_")
    [reason] = [e.stop_reason for e in events if isinstance(e, MessageDelta)]
    if reason == "tool_use":
        tool = {"get_weather": WEATHER, "add": ADD}[start.tool_name]
        jsonschema.validate(call_input(events), tool.input_schema)
    return reason


def test_forced_calls_match_the_schema_over_50_seeded_runs(local: LocalProvider) -> None:
    """With the model's own sampling (temperature 0.2), seeded: every call ends and its input
    matches the schema."""
    assert [check_call(forced(local, seed, None)) for seed in range(50)] == ["tool_use"] * 50


def test_sampled_hot_a_call_is_valid_or_cut_by_max_tokens(local: LocalProvider) -> None:
    """At temperature 1 a string argument may ramble on until max_tokens (the grammar cannot
    end a string the schema leaves unbounded): such a call ends max_tokens; the rest match."""
    reasons = [check_call(forced(local, seed, 1.0)) for seed in range(20)]
    assert set(reasons) <= {"tool_use", "max_tokens"} and reasons.count("tool_use") >= 15


def test_under_auto_the_model_calls_a_tool_that_fits(local: LocalProvider) -> None:
    calls = 0
    for seed in range(4):
        request = ChatRequest(
            "m", (Message("user", "What is the weather in Paris, in celsius?"),), 48,
            seed=seed, tools=(WEATHER, ADD),
        )  # fmt: skip
        events = generate(local, request)
        text = "".join(e.text for e in events if isinstance(e, TextDelta))
        starts = [e for e in events if isinstance(e, BlockStart) and e.kind == "tool_use"]
        assert text.strip() or starts  # a call, or an answer: never nothing
        if starts:
            calls += 1
            tool = {"get_weather": WEATHER, "add": ADD}[starts[0].tool_name]
            jsonschema.validate(call_input(events), tool.input_schema)
    assert calls >= 3  # the model's choice, seeded: 4 of 4 where it was measured


def test_after_a_tool_result_the_model_mostly_answers_in_text(local: LocalProvider) -> None:
    turns = (
        Message("user", "What is the weather in Paris, in celsius?"),
        Message(
            "assistant", "", (ToolUse("t1", "get_weather", {"city": "Paris", "unit": "celsius"}),)
        ),
        Message("user", "", (ToolResult("t1", (JsonPart({"temperature": 18}),)),)),
    )
    texts = 0
    for seed in range(10):
        events = generate(local, ChatRequest("m", turns, 32, seed=seed, tools=(WEATHER,)))
        texts += not any(isinstance(e, BlockStart) and e.kind == "tool_use" for e in events)
    assert texts >= 6  # the model's choice, seeded: 9 of 10 on the CPUs it was measured on
