"""Browsers: a page on another origin cannot drive the server; SDKs, curl, the server's own page
and pages on this machine can."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
import websockets

from sluicegate.config import Route, Settings
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider
from sluicegate.routes.guard import OriginGuard, host_names
from tests.conftest import Server, serve, stop

BODY = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 4,
                   "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip


@pytest.fixture(scope="module")
def guarded() -> Iterator[Server]:
    settings = Settings(
        routes=[Route(match="*", provider="scripted")],
        allowed_origins=["https://app.example.com"],
    )
    s = serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0, length=8)}))
    yield s
    stop(s)


def ws_answers(url: str, origin: str | None) -> bool:
    async def go() -> bool:
        try:
            async with websockets.connect(url, origin=origin) as ws:  # type: ignore[arg-type]
                await ws.send(json.dumps({"action": "ping"}))
                return bool(await asyncio.wait_for(ws.recv(), 10))
        except websockets.exceptions.InvalidStatus as refused:
            assert refused.response.status_code == 403
            return False

    return asyncio.run(go())


def post(server: Server, path: str, origin: str | None) -> int:
    headers = {"content-type": "text/plain", **({"origin": origin} if origin else {})}
    return httpx.post(server.url + path, content=BODY, headers=headers).status_code


@pytest.mark.parametrize(
    ("origin", "served"),
    [
        (None, True),  # boto3, the SDKs, curl
        ("own", True),  # the server's own page
        ("http://localhost:5173", True),  # a page on this machine (a dev server)
        ("https://app.example.com", True),  # listed in allowed_origins
        ("http://evil.example", False),
        ("null", False),  # a sandboxed frame or a file
        ("http://127.0.0.1.evil.example", False),
    ],
)
def test_who_may_drive_the_server(guarded: Server, origin: str | None, served: bool) -> None:
    who = guarded.url if origin == "own" else origin
    assert ws_answers(guarded.ws_url, who) is served
    assert (post(guarded, "/model/m/invoke", who) == 200) is served
    assert (post(guarded, "/v1/chat/completions", who) != 403) is served  # served: a 400


def test_a_refused_page_gets_a_clear_403_and_public_function_urls_stay_public(
    guarded: Server,
) -> None:
    refused = httpx.post(
        guarded.url + "/model/m/invoke", content=BODY, headers={"origin": "http://evil.example"}
    )
    assert refused.status_code == 403 and "allowed_origins" in refused.json()["message"]
    # /fn/ is a Function URL: public, its CORS the function's own business (none here: 404)
    assert post(guarded, "/fn/nothing/", "http://evil.example") == 404


@pytest.mark.parametrize(
    ("host", "served"),
    [
        ("localhost:8000", True),
        ("127.0.0.1", True),
        ("[::1]:8000", True),
        ("evil.example", False),  # DNS rebinding: a hostile name resolving to 127.0.0.1
        ("127.0.0.1.evil.example:8000", False),
        ("localhost.", False),
        ("[::1", False),  # not even a name
    ],
)
def test_a_loopback_server_answers_only_this_machines_host_names(
    guarded: Server, host: str, served: bool
) -> None:
    r = httpx.post(guarded.url + "/model/m/invoke", content=BODY, headers={"host": host})
    assert (r.status_code == 200) is served
    if not served:
        assert r.status_code == 400 and "allowed_hosts" in r.json()["message"]

    async def handshake() -> int | None:
        try:
            async with websockets.connect(guarded.ws_url, additional_headers={"host": host}):
                return None
        except websockets.exceptions.InvalidStatus as refused:
            return refused.response.status_code

    assert (asyncio.run(handshake()) is None) is served


@pytest.mark.parametrize(
    ("bound", "allowed", "host", "served"),
    [
        ("0.0.0.0", [], "anything.example", True),  # every address: names unknown
        ("0.0.0.0", ["gw.example.com"], "gw.example.com", True),
        ("0.0.0.0", ["gw.example.com"], "localhost", True),
        ("0.0.0.0", ["gw.example.com"], "evil.example", False),
        ("10.0.0.5", [], "10.0.0.5", True),
        ("10.0.0.5", [], "evil.example", False),
        ("127.0.0.1", ["*"], "evil.example", True),
    ],
)
def test_host_names_by_bound_address_and_config(
    bound: str, allowed: list[str], host: str, served: bool
) -> None:
    guard = OriginGuard(lambda *a: None, hosts=host_names(bound, allowed))
    scope = {"type": "http", "path": "/", "headers": [(b"host", host.encode())]}
    assert guard._known_host(scope) is served
