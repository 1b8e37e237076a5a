"""The chat room example end to end: Lambda-style handlers, @connections, three clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from sluicegate.config import Route, Settings, WebSocketSettings
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider
from tests.conftest import Server, serve, stop

CHAT = Path(__file__).parents[2] / "examples" / "websocket_chat" / "chat.py"


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory: Any) -> Iterator[Server]:
    extra = tmp_path_factory.mktemp("handlers") / "extra.py"
    extra.write_text(
        "import json, time\n"
        "def echo(event, context):\n"
        "    import boto3\n"
        "    api = boto3.client('apigatewaymanagementapi')\n"
        "    ctx = event['requestContext']\n"
        "    api.post_to_connection(ConnectionId=ctx['connectionId'], Data=json.dumps(\n"
        "        {'route': ctx['routeKey'], 'body': event['body'],\n"
        "         'left_ms': context.get_remaining_time_in_millis()}).encode())\n"
        "def slow(event, context):\n"
        "    time.sleep(2)\n"
        "def broken(event, context):\n"
        "    raise RuntimeError('boom')\n"
    )
    routes = {
        "$connect": f"{CHAT}:on_connect",
        "$disconnect": f"{CHAT}:on_disconnect",
        "sendmessage": f"{CHAT}:send_message",
        "$default": f"{extra}:echo",
        "slow": f"{extra}:slow",
        "broken": f"{extra}:broken",
    }
    settings = Settings(
        routes=[Route(match="*", provider="scripted")],
        websocket=WebSocketSettings(routes=routes, handler_timeout_seconds=0.5),
    )
    server = serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.001)}))
    yield server
    stop(server)


async def recv(ws: Any) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


def test_three_clients_chat_and_a_leaver_is_forgotten(chat_server: Server) -> None:
    url = chat_server.ws_url

    async def main() -> None:
        ann = await websockets.connect(url + "?name=ann")
        bob = await websockets.connect(url + "?name=bob")
        cy = await websockets.connect(url + "?name=cy")
        await ann.send(json.dumps({"action": "sendmessage", "data": "hello all"}))
        for ws in (ann, bob, cy):
            assert await recv(ws) == {"from": "ann", "data": "hello all"}
        await cy.close()
        await asyncio.sleep(0.3)  # $disconnect runs after the close
        await bob.send(json.dumps({"action": "sendmessage", "data": "cy left"}))
        for ws in (ann, bob):
            assert await recv(ws) == {"from": "bob", "data": "cy left"}
        await ann.close()
        await bob.close()

    asyncio.run(main())


def test_connect_handler_refuses_without_a_name(chat_server: Server) -> None:
    async def main() -> None:
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(chat_server.ws_url)
        assert info.value.response.status_code == 403

    asyncio.run(main())


def test_default_route_gets_unmatched_and_non_json_with_the_event_shape(
    chat_server: Server,
) -> None:
    async def main() -> list[Any]:
        async with websockets.connect(chat_server.ws_url + "?name=dee") as ws:
            await ws.send("plain text")
            await ws.send(json.dumps({"action": "nothing-here"}))
            return [await recv(ws), await recv(ws)]

    got = sorted(asyncio.run(main()), key=lambda m: m["body"])
    assert [m["route"] for m in got] == ["$default", "$default"]
    assert [m["body"] for m in got] == ["plain text", '{"action": "nothing-here"}']
    assert all(0 < m["left_ms"] <= 500 for m in got)


def test_slow_and_failing_handlers_answer_errors_and_the_connection_survives(
    chat_server: Server,
) -> None:
    async def main() -> list[Any]:
        async with websockets.connect(chat_server.ws_url + "?name=eve") as ws:
            await ws.send(json.dumps({"action": "slow"}))
            first = await recv(ws)
            await ws.send(json.dumps({"action": "broken"}))
            second = await recv(ws)
            await ws.send(json.dumps({"action": "ping"}))
            return [first, second, await recv(ws)]

    slow, broken, pong = asyncio.run(main())
    assert slow["message"] == "Endpoint request timed out"  # API Gateway's own messages
    assert broken["message"] == "Internal server error" and "connectionId" in broken
    assert pong == {"type": "pong"}
