"""What one socket may cost the server: a client that stops reading is closed (1008) once its
outbound queue is full, and its generation is resumed from another connection; a message that
cannot be sent closes the socket with 1011 instead of leaving it open and mute."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import botocore.exceptions
import pytest
import websockets

from sluicegate.config import Route, Settings, WebSocketSettings
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider
from tests.conftest import Server, serve, stop, wait_until

LIMIT = 64 * 1024
POST = b"x" * (100 * 1024)


@pytest.fixture(scope="module")
def small_queue() -> Iterator[Server]:
    settings = Settings(
        routes=[Route(match="*", provider="scripted")],
        websocket=WebSocketSettings(max_outbound_bytes=LIMIT),
    )
    s = serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.002, length=300)}))
    yield s
    stop(s)


async def until_end(ws: Any) -> list[dict[str, Any]]:
    got = []
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 30))
        got.append(message)
        if message["type"] == "end":
            return got


def test_a_client_that_stops_reading_is_closed_and_its_generation_resumes(
    small_queue: Server,
) -> None:
    mgmt = small_queue.management()

    async def main() -> None:
        # max_queue=1: once one message waits unread, this client reads no more from TCP.
        slow = await websockets.connect(small_queue.ws_url, max_queue=1, compression=None)
        await slow.send(json.dumps({"action": "whoami"}))
        cid = json.loads(await slow.recv())["connectionId"]
        await slow.send(json.dumps({"action": "generate", "id": "g", "prompt": "hi"}))
        start = json.loads(await slow.recv())
        assert start["type"] == "start"
        # Never read again. Posts pile up: the kernel's and uvicorn's buffers fill, then the
        # queue, and then the connection is closed and posts to it are gone.
        posted = 0
        with pytest.raises(botocore.exceptions.ClientError) as gone:
            for posted in range(1, 2001):  # noqa: B007 (how many went in is the figure)
                await asyncio.to_thread(mgmt.post_to_connection, ConnectionId=cid, Data=POST)
        assert gone.value.response["Error"]["Code"] == "GoneException"
        assert posted < 2000
        gw = small_queue.gateway
        assert wait_until(lambda: cid not in small_queue.app.state.connections.by_id)
        gen = next(g for g in gw.generations.values() if g.route == "websocket")
        # The generation was not disturbed: it runs on (or ran to its end), resumable.
        assert gen.stop_reason in (None, "end_turn", "max_tokens")

        fresh = await websockets.connect(small_queue.ws_url)
        resume = {"action": "resume", "id": "g", "after": 0, "resumeToken": start["resumeToken"]}
        await fresh.send(json.dumps(resume))
        got = await until_end(fresh)
        deltas = [m for m in got if m["type"] == "delta"]
        assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
        assert len(deltas) == 300 and got[-1]["stop_reason"] == "end_turn"
        await fresh.close()

        # The slow client, when it reads at last, finds the close the server sent.
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(slow.recv(), 30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008

    asyncio.run(main())


def test_a_message_that_cannot_be_sent_closes_the_socket_with_1011(small_queue: Server) -> None:
    api = small_queue.app.state.websocket

    async def unencodable(conn: Any, body: Any) -> None:
        conn.send("a lone surrogate \ud800 has no UTF-8")

    api.actions["broken"] = unencodable
    mgmt = small_queue.management()

    async def main() -> None:
        async with websockets.connect(small_queue.ws_url) as ws:
            await ws.send(json.dumps({"action": "whoami"}))
            cid = json.loads(await ws.recv())["connectionId"]
            await ws.send(json.dumps({"action": "broken"}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        with pytest.raises(botocore.exceptions.ClientError) as gone:
            mgmt.post_to_connection(ConnectionId=cid, Data=b"hello?")
        assert gone.value.response["Error"]["Code"] == "GoneException"

    try:
        asyncio.run(main())
    finally:
        del api.actions["broken"]
