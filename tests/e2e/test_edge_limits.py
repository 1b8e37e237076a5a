"""Limits at the edge, before the app: an oversized header block gets 431; idle, trickling and
half-sent requests are cut at their deadlines; WebSockets and keep-alive are unaffected."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets

from sluicegate.config import HttpSettings, Route, Settings
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider
from tests.conftest import Server, serve, stop

LIMITS = HttpSettings(
    max_header_bytes=16 * 1024,
    header_timeout_seconds=1.0,
    body_idle_seconds=1.0,
    body_timeout_seconds=2.5,
)


@pytest.fixture(scope="module")
def edge() -> Iterator[Server]:
    settings = Settings(routes=[Route(match="*", provider="scripted")], http=LIMITS)
    s = serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0, length=4)}))
    yield s
    stop(s)


def connect(server: Server) -> socket.socket:
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def request(path: str = "/healthz", headers: str = "", body: bytes = b"") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"
    head += f"Content-Length: {len(body)}\r\n\r\n" if body else "\r\n"
    return head.encode() + body


def test_a_header_block_over_the_limit_gets_431(edge: Server) -> None:
    with connect(edge) as sock:
        sock.sendall(
            f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {'a' * 20_000}\r\n\r\n".encode()
        )
        reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 431 ")
    # Just under the limit is served.
    ok = httpx.get(edge.url + "/healthz", headers={"x-big": "a" * 15_000})
    assert ok.status_code == 200


def test_a_header_just_over_the_limit_is_answered_431_while_the_client_still_sends(
    edge: Server,
) -> None:
    with connect(edge) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000)
        sock.sendall(b"\r\n\r\n")
        reply = read_all(sock)  # no reset: the server drained what it refused
    assert reply.startswith(b"HTTP/1.1 431 ")


def test_a_huge_header_is_refused_without_reading_it_all(edge: Server) -> None:
    with connect(edge) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        sent = 0
        with pytest.raises(OSError):  # the server closed on us long before 64 MB
            for _ in range(1024):
                sock.sendall(b"a" * 65536)
                sent += 65536
        assert sent < 8 * 1024 * 1024


def test_an_idle_connection_is_closed(edge: Server) -> None:
    with connect(edge) as sock:
        t0 = time.monotonic()
        assert read_all(sock) == b""
        assert time.monotonic() - t0 < 10


def test_headers_trickled_in_get_408_at_the_deadline(edge: Server) -> None:
    with connect(edge) as sock:
        t0 = time.monotonic()
        reply = b""
        for byte in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.05)
            if time.monotonic() - t0 > 5:
                break
        reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - t0 < 5


def test_a_half_sent_body_is_cut_and_the_server_serves_on(edge: Server) -> None:
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 4,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()  # fmt: skip
    before = len(edge.gateway.generations)
    with connect(edge) as sock:
        whole = request("/model/m/invoke", "Content-Type: application/json\r\n", body)
        sock.sendall(whole[: len(whole) - 20])  # all but the last 20 bytes, then nothing
        t0 = time.monotonic()
        reply = read_all(sock)
        assert time.monotonic() - t0 < 10
    assert b" 200 " not in reply.split(b"\r\n", 1)[0]
    assert len(edge.gateway.generations) == before  # nothing ran on half a body
    assert httpx.post(edge.url + "/model/m/invoke", content=body).status_code == 200


def test_a_trickled_body_is_cut_at_the_body_deadline(edge: Server) -> None:
    with connect(edge) as sock:
        sock.sendall(request("/model/m/invoke", "Content-Length: 1000\r\n"))
        t0 = time.monotonic()
        sent = 0
        while time.monotonic() - t0 < 8:
            readable, _, _ = select.select([sock], [], [], 0.2)  # a byte per 0.2 s: not idle
            if readable:
                break  # the server closed (or answered) before the body was complete
            sock.sendall(b" ")
            sent += 1
        took = time.monotonic() - t0
    assert LIMITS.body_timeout_seconds - 0.5 < took < 6, took
    assert sent < 1000


def test_websockets_and_keep_alive_are_not_cut(edge: Server) -> None:
    async def socket_outlives_the_header_deadline() -> str:
        async with websockets.connect(edge.ws_url) as ws:
            await asyncio.sleep(LIMITS.header_timeout_seconds * 2.5)
            await ws.send(json.dumps({"action": "ping"}))
            return str(json.loads(await ws.recv())["type"])

    assert asyncio.run(socket_outlives_the_header_deadline()) == "pong"
    with httpx.Client() as client:  # one connection, several requests
        for _ in range(3):
            assert client.get(edge.url + "/healthz").status_code == 200
            time.sleep(0.5)
