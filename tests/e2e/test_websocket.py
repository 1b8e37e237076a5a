"""The WebSocket API and @connections through the `websockets` client and boto3."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets

from sluicegate.generation import Generation
from tests.conftest import Server, wait_until

Msg = dict[str, Any]


async def recv(ws: Any, timeout: float = 60) -> Msg:  # noqa: ASYNC109
    message: Msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return message


async def until_end(ws: Any, gen_id: str) -> list[Msg]:
    seen = []
    while True:
        m = await recv(ws)
        if m.get("id") == gen_id:
            seen.append(m)
            if m["type"] == "end":
                return seen


def generation(server: Server, client_id: str, owner: str = "anonymous") -> Generation:
    gen: Generation = server.app.state.websocket.live[(owner, client_id)].gen
    return gen


def test_generate_streams_start_ordered_deltas_and_end(server: Server) -> None:
    async def main() -> list[Msg]:
        async with websockets.connect(server.ws_url) as ws:
            await ws.send(
                json.dumps(
                    {
                        "action": "generate",
                        "id": "g1",
                        "model": "scripted",
                        "prompt": "héllo 日本",
                        "max_tokens": 20,
                    }
                )
            )
            return await until_end(ws, "g1")

    seen = asyncio.run(main())
    token = seen[0].pop("resumeToken")
    assert isinstance(token, str) and len(token) >= 32  # 24 random bytes
    assert seen[0] == {
        "type": "start",
        "id": "g1",
        "model": "scripted",
        "requestId": generation(server, "g1").id,
    }
    described = httpx.get(f"{server.url}/sluicegate/generations/{seen[0]['requestId']}").json()
    assert described["route"] == "websocket" and described["produced_tokens"] == 20
    deltas = [m for m in seen if m["type"] == "delta"]
    assert [d["seq"] for d in deltas] == list(range(1, 21))
    assert "".join(d["text"] for d in deltas).startswith("You said: héllo 日本 ")
    end = seen[-1]
    assert end["stop_reason"] == "max_tokens" and end["usage"]["output_tokens"] == 20
    assert end["metrics"]["duration_ms"] >= end["metrics"]["ttft_ms"] >= 0


def test_stop_ends_with_cancelled_and_the_engine_stops(server: Server, local: Any) -> None:
    async def main() -> tuple[list[Msg], list[Msg]]:
        async with websockets.connect(server.ws_url) as ws:
            await ws.send(
                json.dumps(
                    {
                        "action": "generate",
                        "id": "long",
                        "max_tokens": 500,
                        "prompt": "Write a long essay about rivers.",
                    }
                )
            )
            await ws.send(
                json.dumps(
                    {"action": "generate", "id": "short", "max_tokens": 20, "prompt": "Say hello."}
                )
            )
            got: dict[str, list[Msg]] = {"long": [], "short": []}
            while not all(m and m[-1]["type"] == "end" for m in got.values()):
                m = await recv(ws)
                got[m["id"]].append(m)
                if m["id"] == "long" and m["type"] == "delta" and m["seq"] == 5:
                    await ws.send(json.dumps({"action": "stop", "id": "long"}))
            # a second stop is answered, not ignored
            await ws.send(json.dumps({"action": "stop", "id": "long"}))
            again = await recv(ws)
            assert again["type"] == "error" and again["code"] == "GenerationEnded"
            return got["long"], got["short"]

    long, short = asyncio.run(main())
    end = long[-1]
    assert end["stop_reason"] == "cancelled"
    assert [m for m in long if m["type"] == "delta"][-1]["seq"] <= end["usage"]["output_tokens"]
    assert short[-1]["stop_reason"] in ("end_turn", "max_tokens")
    gen = generation(server, "long")
    decoded = local.engine.recent[gen.id]
    assert decoded <= gen.usage.output_tokens + 2  # within a step of the stop
    assert not wait_until(lambda: local.engine.decoded(gen.id) != decoded, timeout=0.3)


def test_resume_after_a_drop_gets_exactly_the_missing_deltas(server: Server) -> None:
    async def main() -> tuple[list[int], Msg]:
        ws = await websockets.connect(server.ws_url)
        await ws.send(
            json.dumps(
                {
                    "action": "generate",
                    "id": "r",
                    "model": "scripted-r",
                    "max_tokens": 64,
                    "prompt": "x",
                }
            )
        )
        seqs: list[int] = []
        token = None
        while len(seqs) < 5:
            m = await recv(ws)
            if m["type"] == "delta":
                seqs.append(m["seq"])
            token = token or m.get("resumeToken")
        ws.transport.abort()
        await asyncio.sleep(0.2)
        async with websockets.connect(server.ws_url) as ws2:
            resume = {"action": "resume", "id": "r", "after": seqs[-1], "resumeToken": token}
            await ws2.send(json.dumps(resume))
            rest = await until_end(ws2, "r")
        return seqs + [m["seq"] for m in rest if m["type"] == "delta"], rest[-1]

    seqs, end = asyncio.run(main())
    assert seqs == list(range(1, 65))
    assert end["stop_reason"] == "max_tokens"


def test_a_dropped_connection_is_cancelled_after_the_grace_period(server: Server) -> None:
    async def main() -> None:
        ws = await websockets.connect(server.ws_url)
        await ws.send(
            json.dumps(
                {
                    "action": "generate",
                    "id": "orphan",
                    "model": "scripted",
                    "prompt": "sluicegate:delay-ms=50",
                }
            )
        )
        while (await recv(ws))["type"] != "delta":
            pass
        ws.transport.abort()

    asyncio.run(main())
    gen = generation(server, "orphan")
    assert not gen.done  # still generating during the grace period, so it can be resumed
    assert wait_until(lambda: gen.done, timeout=10)
    assert gen.stop_reason == "disconnected"


def test_bad_messages_get_errors_and_the_connection_stays_usable(server: Server) -> None:
    bad: list[tuple[str, str]] = [
        ("not json", "BadRequest"),
        (json.dumps({"action": "dance"}), "RouteNotFound"),
        (json.dumps({"no": "action"}), "RouteNotFound"),
        (json.dumps({"action": "generate", "id": "v"}), "ValidationException"),
        (json.dumps({"action": "generate", "prompt": 5}), "ValidationException"),
        (
            json.dumps({"action": "generate", "prompt": "x", "max_tokens": "9"}),
            "ValidationException",
        ),
        (
            json.dumps({"action": "generate", "prompt": "x", "max_tokens": 10**6}),
            "ValidationException",
        ),
        (json.dumps({"action": "stop", "id": "never-started"}), "ResourceNotFoundException"),
        (json.dumps({"action": "resume", "id": 5}), "ValidationException"),
        (json.dumps([1, 2]), "RouteNotFound"),
    ]

    async def main() -> list[Msg]:
        async with websockets.connect(server.ws_url) as ws:
            answers = []
            for raw, _ in bad:
                await ws.send(raw)
                answers.append(await recv(ws, 10))
            await ws.send(json.dumps({"action": "ping"}))
            answers.append(await recv(ws, 10))
            return answers

    answers = asyncio.run(main())
    assert [a["code"] for a in answers[:-1]] == [code for _, code in bad]
    assert all(a["type"] == "error" and a["message"] for a in answers[:-1])
    assert answers[-1] == {"type": "pong"}


def test_an_oversize_message_closes_with_1009(server: Server) -> None:
    async def main() -> int | None:
        async with websockets.connect(server.ws_url, max_size=None) as ws:
            await ws.send(json.dumps({"action": "ping", "pad": "x" * (129 * 1024)}))
            with pytest.raises(websockets.ConnectionClosed) as info:
                await recv(ws, 10)
            return info.value.rcvd.code if info.value.rcvd else None

    assert asyncio.run(main()) == 1009


def test_connections_api_with_boto3(server: Server) -> None:
    api = server.management()

    async def main() -> None:
        async with websockets.connect(server.ws_url, user_agent_header="test-agent") as ws:
            await ws.send(json.dumps({"action": "whoami"}))
            me = await recv(ws)
            cid = me["connectionId"]
            await asyncio.to_thread(api.post_to_connection, ConnectionId=cid, Data=b'{"hi": 1}')
            assert await recv(ws) == {"hi": 1}
            info = await asyncio.to_thread(api.get_connection, ConnectionId=cid)
            assert info["Identity"] == {"SourceIp": "127.0.0.1", "UserAgent": "test-agent"}
            assert info["LastActiveAt"] >= info["ConnectedAt"]
            with pytest.raises(api.exceptions.PayloadTooLargeException):
                await asyncio.to_thread(
                    api.post_to_connection, ConnectionId=cid, Data=b"x" * (128 * 1024 + 1)
                )
            with pytest.raises(api.exceptions.GoneException):
                await asyncio.to_thread(api.post_to_connection, ConnectionId="nope=", Data=b"x")
            await asyncio.to_thread(api.delete_connection, ConnectionId=cid)
            with pytest.raises(websockets.ConnectionClosed):
                await recv(ws, 5)
            with pytest.raises(api.exceptions.GoneException):
                await asyncio.to_thread(api.get_connection, ConnectionId=cid)

    asyncio.run(main())


def test_connections_api_is_never_open_to_anyone(server: Server) -> None:
    r = httpx.post(f"{server.url}/ws/@connections/abc%3D", content=b"x")
    assert r.status_code == 403
    assert r.headers["x-amzn-errortype"].startswith("ForbiddenException")


@pytest.fixture(scope="module")
def strict_server() -> Any:
    from sluicegate.config import Route, Settings, WebSocketSettings
    from sluicegate.gateway import Gateway
    from sluicegate.providers.scripted import ScriptedProvider
    from tests.conftest import serve, stop

    settings = Settings(
        routes=[Route(match="*", provider="scripted")],
        websocket=WebSocketSettings(idle_timeout_seconds=0.6, max_connection_seconds=2.5),
    )
    s = serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.001)}))
    yield s
    stop(s)


def test_idle_connections_close_with_1001_and_messages_keep_them_alive(strict_server: Any) -> None:
    async def idle() -> int | None:
        async with websockets.connect(strict_server.ws_url) as ws:
            with pytest.raises(websockets.ConnectionClosed) as info:
                await recv(ws, 5)
            return info.value.rcvd.code if info.value.rcvd else None

    async def chatty() -> tuple[int, int | None]:
        pongs = 0
        async with websockets.connect(strict_server.ws_url) as ws:
            try:
                for _ in range(30):  # 3 s of pings every 0.1 s: idle never, but over 2.5 s
                    await ws.send(json.dumps({"action": "ping"}))
                    await recv(ws, 5)
                    pongs += 1
                    await asyncio.sleep(0.1)
            except websockets.ConnectionClosed as exc:
                return pongs, exc.rcvd.code if exc.rcvd else None
        return pongs, None

    assert asyncio.run(idle()) == 1001
    pongs, code = asyncio.run(chatty())
    assert code == 1001 and 10 < pongs < 30  # alive past the idle timeout, closed at 2.5 s


def test_only_its_connection_or_its_resume_token_touches_a_generation(server: Server) -> None:
    """Another connection (also one claiming the same `?owner=`) gets Forbidden for resume and
    stop, and a resume past what was sent is refused; the victim's stream goes on untouched.
    With the resumeToken its start carried, a reconnect resumes it."""

    async def main() -> tuple[list[Msg], list[int], Msg]:
        async with websockets.connect(server.ws_url) as victim:
            prompt = "sluicegate:delay-ms=10 x"
            generate = {"action": "generate", "id": "v", "model": "scripted-v", "prompt": prompt}
            await victim.send(json.dumps({**generate, "max_tokens": 40}))
            start = await recv(victim)
            refusals = []
            async with websockets.connect(server.ws_url + "?owner=anonymous") as other:
                resume = {"action": "resume", "id": "v", "after": 0}
                guess = {**resume, "resumeToken": "guess"}
                for msg in (resume, {"action": "stop", "id": "v"}, guess):
                    await other.send(json.dumps(msg))
                    refusals.append(await recv(other))
            await victim.send(json.dumps({"action": "resume", "id": "v", "after": 10_000}))
            rest = await until_end(victim, "v")
            seqs = [m["seq"] for m in rest if m["type"] == "delta"]
        async with websockets.connect(server.ws_url) as again:
            token = start["resumeToken"]
            await again.send(
                json.dumps({"action": "resume", "id": "v", "after": 35, "resumeToken": token})
            )
            replay = await until_end(again, "v")
        return refusals, seqs, {"replay": [m.get("seq") for m in replay], **rest[-1]}

    refusals, seqs, end = asyncio.run(main())
    assert [r["code"] for r in refusals] == ["ForbiddenException"] * 3
    assert all("resumeToken" in r["message"] for r in refusals)
    assert seqs == list(range(1, 41)) and end["stop_reason"] == "max_tokens"
    assert end["replay"] == [36, 37, 38, 39, 40, None]  # then the end


def test_one_connection_cannot_take_every_slot(server: Server) -> None:
    """At its cap (16 running), a connection's next generate is throttled; another connection
    is still served, and the first may start again once one of its own ends."""

    def generate(gid: str, max_tokens: int, prompt: str = "x") -> str:
        body = {"action": "generate", "id": gid, "model": "scripted-g", "prompt": prompt}
        return json.dumps({**body, "max_tokens": max_tokens})

    async def main() -> tuple[Msg, Msg, Msg]:
        async with websockets.connect(server.ws_url) as greedy:
            for i in range(17):
                await greedy.send(generate(f"g{i}", 500, "sluicegate:delay-ms=20 x"))
            refused = await next_of(greedy, "error")
            async with websockets.connect(server.ws_url) as other:
                await other.send(generate("o", 3))
                served = (await until_end(other, "o"))[-1]
            await greedy.send(json.dumps({"action": "stop", "id": "g0"}))
            while not ((m := await recv(greedy))["type"] == "end" and m["id"] == "g0"):
                pass
            await greedy.send(generate("again", 2))
            again = (await until_end(greedy, "again"))[-1]
            await greedy.send(json.dumps({"action": "stop"}))
        return refused, served, again

    refused, served, again = asyncio.run(main())
    assert refused["code"] == "ThrottlingException" and refused["id"] == "g16"
    assert served["type"] == "end" and served["stop_reason"] == "max_tokens"
    assert again["type"] == "end" and again["stop_reason"] == "max_tokens"


async def next_of(ws: Any, kind: str) -> Msg:
    while (m := await recv(ws))["type"] != kind:
        pass
    return m
