"""A generation is freed by reference counting alone, on every door and upstream: no reference
cycle holds it, so nothing waits for the full garbage collection, whose pauses (tens of ms with
a thousand ended generations kept) stall every stream at once."""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sluicegate.config import Route as ModelRoute
from sluicegate.config import Settings, UpstreamSettings
from sluicegate.gateway import Gateway
from sluicegate.generation import Generation
from tests.conftest import Server, serve, stop, wait_until
from tests.e2e.test_upstreams import MODEL, PROVIDERS, aws_credentials

DOORS = ["invoke", "converse", "anthropic", "chat", "responses"]
__all__ = ["aws_credentials"]  # the bedrock provider signs with the environment's (autouse)


@pytest.fixture(params=list(PROVIDERS))
def front(request: pytest.FixtureRequest, server: Server) -> Iterator[tuple[Server, list[Any]]]:
    """A gateway in front of the session's server through one upstream provider; it forgets
    every generation as soon as it ends (no byte budget for ended ones)."""
    kind = request.param
    url = server.url + ("/v1" if kind == "openai" else "")
    where = "endpoint_url" if kind == "bedrock" else "base_url"
    upstream = UpstreamSettings.model_validate({"type": kind, where: url, "region": "us-east-1"})
    settings = Settings(
        providers={"up": upstream},
        routes=[ModelRoute(match="anthropic.*", provider="up", model="scripted-upstream")],
        ended_bytes=0,
    )
    gateway = Gateway(settings, {"up": PROVIDERS[kind]("up", upstream)})
    refs: list[Any] = []
    start = gateway.start

    async def started(*args: Any, **kwargs: Any) -> Generation:
        gen = await start(*args, **kwargs)
        refs.append(weakref.ref(gen))
        return gen

    gateway.start = started  # type: ignore[method-assign]
    gw = serve(gateway)
    yield gw, refs
    stop(gw)


def ask(gw: Server, door: str) -> str:
    """One streamed answer through `door`, read to its end; its text."""
    text = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 12}
    if door == "invoke":
        body = json.dumps({"anthropic_version": "bedrock-2023-05-31", **text})
        response = gw.bedrock().invoke_model_with_response_stream(modelId=MODEL, body=body)
        chunks = [json.loads(e["chunk"]["bytes"]) for e in response["body"]]
        return "".join(c["delta"].get("text", "") for c in chunks if "delta" in c)
    if door == "converse":
        response = gw.bedrock().converse_stream(
            modelId=MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}]
        )
        events = list(response["stream"])
        return "".join(
            e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e
        )
    chat = {"model": MODEL, "stream": True, **text}
    path, payload = {
        "anthropic": ("/v1/messages", chat),
        "chat": ("/v1/chat/completions", chat),
        "responses": ("/v1/responses", {"model": MODEL, "stream": True, "input": "hi",
                                        "max_output_tokens": 12, "store": False}),
    }[door]  # fmt: skip
    with httpx.stream("POST", gw.url + path, json=payload, timeout=30) as response:
        assert response.status_code == 200
        return response.read().decode()


@pytest.mark.parametrize("door", DOORS)
def test_an_ended_generation_is_freed_without_the_garbage_collector(
    front: tuple[Server, list[Any]], door: str
) -> None:
    gw, refs = front
    ask(gw, door)  # warm: first-use objects (pools, caches) are not the request's
    refs.clear()
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            assert ask(gw, door)
        assert len(refs) == 3
        freed = wait_until(lambda: all(r() is None for r in refs), timeout=5)
        alive = [r() for r in refs if r() is not None]
        holders = sorted({type(h).__name__ for g in alive for h in gc.get_referrers(g)})
        assert freed, f"{len(alive)} of 3 generations are held by {holders} (a cycle?)"
    finally:
        gc.enable()
