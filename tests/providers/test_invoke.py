"""The bedrock provider's InvokeModel shapes (providers/invoke.py) against sluicegate's own
Bedrock families (translate/families), which read those bodies and write those chunks as
Bedrock does; and the upstream limiter's queue."""

from __future__ import annotations

import asyncio

import pytest

from sluicegate import errors
from sluicegate.events import (
    BlockStart,
    BlockStop,
    ChatRequest,
    Message,
    MessageDelta,
    MessageStart,
    MessageStop,
    TextDelta,
    Usage,
)
from sluicegate.generation import Meter
from sluicegate.providers import invoke
from sluicegate.providers.upstream import Finish, Limiter
from sluicegate.translate import families

REQUEST = ChatRequest(
    model="x",
    messages=(Message("user", "Hi there."), Message("assistant", "Hello."), Message("user", "Go")),
    system="Be brief.",
    max_tokens=40,
    temperature=0.5,
)
ANSWER = [
    MessageStart("msg_1", "m", 7),
    BlockStart(),
    TextDelta("Rivers "),
    TextDelta("run."),
    BlockStop(0),
    MessageDelta("max_tokens"),
    MessageStop(Usage(7, 2)),
]


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("anthropic.claude-3-haiku-20240307-v1:0", "anthropic-messages"),
        ("us.meta.llama3-1-8b-instruct-v1:0", "meta-llama"),
        ("amazon.nova-lite-v1:0", "amazon-nova"),
        ("openai.gpt-oss-20b-1:0", "openai-chat-completions"),
        ("scripted-anything", "anthropic-messages"),  # no family claims it: Messages
    ],
)
def test_a_body_reads_back_as_the_request(model: str, family: str) -> None:
    body = invoke.shape_for(model).body(REQUEST)
    found = families.family_for(model, body)
    assert found.name == family
    chat = found.parse(model, body)
    assert chat.system == REQUEST.system and chat.max_tokens == 40 and chat.temperature == 0.5
    assert [(m.role, m.text) for m in chat.messages] == [(m.role, m.text) for m in REQUEST.messages]


@pytest.mark.parametrize(
    "model",
    [
        "anthropic.claude-3-haiku-20240307-v1:0",
        "meta.llama3-8b-instruct-v1:0",
        "eu.amazon.nova-pro-v1:0",
        "openai.gpt-oss-120b-1:0",
    ],
)
def test_the_familys_chunks_read_back_as_the_answer(model: str) -> None:
    family = families.family_for(model, invoke.shape_for(model).body(REQUEST))
    writer = family.chunks(REQUEST)
    chunks = [c for e in ANSWER for c in writer.feed(e)]
    chunks[-1]["amazon-bedrock-invocationMetrics"] = {"inputTokenCount": 7, "outputTokenCount": 2}
    meter = Meter()
    reader = invoke.shape_for(model).reader("up", meter)
    pieces = [p for c in chunks for p in reader.feed(c)]
    assert reader.ended
    assert [p for p in pieces if isinstance(p, str) and p] == ["Rivers ", "run."]
    assert Finish("max_tokens") in pieces
    assert (meter.usage.input_tokens, meter.usage.output_tokens) == (7, 2)


def test_families_it_does_not_speak_are_refused_before_sending() -> None:
    with pytest.raises(errors.ValidationError, match='api = "converse"'):
        invoke.shape_for("amazon.titan-text-express-v1")
    with pytest.raises(errors.ValidationError, match="no stop sequences"):
        invoke.shape_for("meta.llama3-8b-instruct-v1:0").body(
            ChatRequest("m", (Message("user", "x"),), 5, stop_sequences=("\n",))
        )


def test_an_error_chunk_is_raised_as_ours() -> None:
    reader = invoke.shape_for("anthropic.claude-3").reader("up", Meter())
    with pytest.raises(errors.ServiceUnavailable, match="busy"):
        reader.feed({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})


# -- the limiter -----------------------------------------------------------------------------------


def test_the_queue_is_served_in_order_and_bounded() -> None:
    asyncio.run(served_in_order())


async def served_in_order() -> None:
    limiter = Limiter(1, 2)
    assert limiter.take("up") is None  # the slot
    a, b = limiter.take("up"), limiter.take("up")
    assert a is not None and b is not None and limiter.waiting == 2
    with pytest.raises(errors.Throttled):
        limiter.take("up")
    limiter.release()
    assert a.done() and not b.done()
    await limiter.wait(a)
    limiter.release()
    await limiter.wait(b)
    limiter.release()
    assert limiter.free == 1 and limiter.waiting == 0


def test_leaving_the_queue_gives_up_the_place_or_passes_the_slot_on() -> None:
    asyncio.run(leaving())


async def leaving() -> None:
    limiter = Limiter(1, 2)
    limiter.take("up")
    a, b = limiter.take("up"), limiter.take("up")
    assert a is not None and b is not None
    waiter = asyncio.create_task(limiter.wait(a))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.waiting == 1  # a's place is gone, b's is kept
    limiter.release()  # the slot skips a and goes to b
    assert b.done()
    limiter.leave(b)  # b leaves with the slot handed to it: it is free again
    assert limiter.free == 1 and limiter.waiting == 0
    assert limiter.take("up") is None
