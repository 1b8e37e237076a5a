"""API Gateway's WebSocket size limits: frames over 32 KiB and messages over 128 KiB close
with 1009, under the test server and under `sluicegate serve` alike; `relaxed` lifts both."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Iterator

import pytest
import websockets

from sluicegate.config import Route, Settings, WebSocketSettings, relaxed
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider
from tests.conftest import Server, free_port, serve, serve_command, stop, wait_ready

KIB = 1024


def ping(size: int) -> str:
    """A ping message of exactly `size` bytes."""
    head = '{"action": "ping", "pad": "'
    return head + "x" * (size - len(head) - 2) + '"}'


def pieces(message: str, size: int) -> list[str]:
    return [message[i : i + size] for i in range(0, len(message), size)]


async def answer(url: str, message: str | list[str]) -> str | int | None:
    """`pong`, or the close code the server sent instead. A list is sent as fragments."""
    # Uncompressed, so that the sizes on the wire are the sizes sent (the limits apply to both).
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        await ws.send(message)
        try:
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None
        return str(reply["type"])


def answers(url: str, *messages: str | list[str]) -> list[str | int | None]:
    async def main() -> list[str | int | None]:
        return [await answer(url, m) for m in messages]

    return asyncio.run(main())


def scripted_server(ws: WebSocketSettings) -> Server:
    settings = Settings(routes=[Route(match="*", provider="scripted")], websocket=ws)
    return serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.001)}))


@pytest.fixture(scope="module")
def aws() -> Iterator[Server]:
    s = scripted_server(WebSocketSettings())
    yield s
    stop(s)


@pytest.fixture(scope="module")
def lifted() -> Iterator[Server]:
    s = scripted_server(relaxed(WebSocketSettings()))
    yield s
    stop(s)


def test_a_frame_over_32_kib_closes_with_1009_but_fragments_pass(aws: Server) -> None:
    message = ping(40 * KIB)
    got = answers(aws.ws_url, message, pieces(message, 20 * KIB), ping(32 * KIB))
    assert got == [1009, "pong", "pong"]  # 32 KiB exactly is still within the limit


def test_a_message_over_128_kib_closes_with_1009_however_it_is_framed(aws: Server) -> None:
    message = ping(130 * KIB)
    assert answers(aws.ws_url, pieces(message, 20 * KIB), message) == [1009, 1009]
    assert answers(aws.ws_url, pieces(ping(128 * KIB), 20 * KIB)) == ["pong"]


def test_relaxed_limits_accept_big_frames_and_messages(lifted: Server) -> None:
    assert answers(lifted.ws_url, ping(40 * KIB), ping(130 * KIB)) == ["pong", "pong"]


@pytest.fixture
def cli_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """`sluicegate serve` as a process, with the flags a test parametrizes it with."""
    port = free_port()
    flags: list[str] = getattr(request, "param", [])
    cmd = serve_command(port, *flags)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        url = f"ws://127.0.0.1:{port}/ws"
        wait_ready(port, proc)
        assert answers(url, ping(100)) == ["pong"]
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=20)


def test_sluicegate_serve_enforces_the_limits(cli_server: str) -> None:
    message = ping(130 * KIB)
    got = answers(cli_server, ping(40 * KIB), pieces(message, 20 * KIB), ping(30 * KIB))
    assert got == [1009, 1009, "pong"]


@pytest.mark.parametrize("cli_server", [["--limits", "relaxed"]], indirect=True)
def test_sluicegate_serve_relaxed_lifts_them(cli_server: str) -> None:
    assert answers(cli_server, ping(40 * KIB), ping(130 * KIB)) == ["pong", "pong"]
