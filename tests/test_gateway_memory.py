"""Ended generations keep only what resume and introspection need: no prompt, and their logs
within a count, a byte budget and an age."""

from __future__ import annotations

import asyncio

import pytest

from sluicegate.config import Route, Settings
from sluicegate.events import ChatRequest, Message
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider


def run(settings: Settings, prompts: list[str]) -> tuple[Gateway, list[str]]:
    gateway = Gateway(settings, {"scripted": ScriptedProvider(delay=0, length=64)})

    async def main() -> list[str]:
        ids = []
        for text in prompts:
            request = ChatRequest("m", (Message("user", text),), max_tokens=64)
            gen = await gateway.start(request, route="test")
            await gen.wait()
            ids.append(gen.id)
        return ids

    return gateway, asyncio.run(main())


ROUTES = [Route(match="*", provider="scripted")]


def test_an_ended_generation_keeps_no_prompt() -> None:
    gateway, [gid] = run(Settings(routes=ROUTES), ["word " * 200_000])
    gen = gateway.generations[gid]
    assert gen.request.messages == () and gen.request.system == "" and gen.request.model == "m"
    assert gen.usage.input_tokens == 200_000  # what introspection shows is still there


def test_ended_logs_stay_within_the_byte_budget_newest_first() -> None:
    gateway, _ = run(Settings(routes=ROUTES), ["one"])
    one = next(iter(gateway.generations.values())).log_bytes
    budget = 5 * one + one // 2
    gateway, ids = run(
        Settings(routes=ROUTES, ended_bytes=budget), [f"n{i:02d}" for i in range(20)]
    )
    kept = list(gateway.generations)
    assert kept == ids[-5:]  # the newest five fit; the rest were forgotten
    assert gateway.ended_figures() == {"generations": 5, "log_bytes": 5 * one}


def test_ended_generations_are_forgotten_past_their_age() -> None:
    gateway, ids = run(Settings(routes=ROUTES, ended_seconds=60), ["a", "b", "c"])
    assert list(gateway.generations) == ids  # kept for a minute
    gateway, ids = run(Settings(routes=ROUTES, ended_seconds=0), ["a", "b", "c"])
    assert list(gateway.generations) == []  # kept for no time: forgotten as each ended


def test_the_count_keeps_the_latest_ended_and_spares_running_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Started first and ended last: kept; the ones that ended before it go first. A running
    generation is never forgotten, however many end around it."""
    monkeypatch.setattr("sluicegate.gateway.KEEP_ENDED", 3)
    gateway = Gateway(Settings(routes=ROUTES), {"scripted": ScriptedProvider(delay=0, length=8)})

    async def main() -> tuple[str, list[str]]:
        def request(text: str) -> ChatRequest:
            return ChatRequest("m", (Message("user", text),), max_tokens=64)

        slow = await gateway.start(request("slow sluicegate:delay-ms=20"), route="test")
        quick = []
        for i in range(6):
            gen = await gateway.start(request(f"q{i}"), route="test")
            await gen.wait()
            quick.append(gen.id)
        assert slow.id in gateway.generations and not slow.done
        await slow.wait()
        return slow.id, quick

    slow, quick = asyncio.run(main())
    assert list(gateway.ended) == [*quick[-2:], slow]
    assert set(gateway.generations) == {*quick[-2:], slow}
    assert gateway.ended_figures()["generations"] == 3
