"""The page's routes: the model list, the static files and their headers."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from sluicegate import gateway as gateway_module
from sluicegate.config import Route, Settings
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider
from sluicegate.routes.app import create_app
from tests.conftest import serve, stop


def test_model_choices_name_plain_ids_and_one_per_glob_provider() -> None:
    settings = Settings(
        routes=[
            Route(match="anthropic.claude-3-haiku-20240307-v1:0", provider="scripted"),
            Route(match="scripted*", provider="scripted"),
            Route(match="*", provider="local"),
        ]
    )
    assert settings.model_choices() == [
        ("anthropic.claude-3-haiku-20240307-v1:0", "scripted"),
        ("smollm2-135m-instruct", "local"),
        ("scripted", "scripted"),
    ]
    only_local = Settings(routes=[Route(match="*", provider="local")])
    assert only_local.model_choices() == [("smollm2-135m-instruct", "local")]


def scripted_app() -> httpx.AsyncClient:
    settings = Settings(routes=[Route(match="*", provider="scripted")])
    app = create_app(Gateway(settings, {"scripted": ScriptedProvider()}))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost")


def test_page_models_and_static_files() -> None:
    async def main() -> list[httpx.Response]:
        async with scripted_app() as client:
            paths = ["/", "/sluicegate/models", "/ui/app.js", "/ui/markdown.js", "/ui/style.css"]
            return [await client.get(p) for p in [*paths, "/ui/nope.js", "/ui/../config.py"]]

    page, models, app_js, md_js, css, missing, escape = asyncio.run(main())
    assert page.status_code == 200 and '<textarea id="prompt"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert models.json() == {
        "models": [{"id": "scripted", "provider": "scripted"}],
        "websocket": "/ws",
    }
    for js in (app_js, md_js):
        assert js.status_code == 200 and "javascript" in js.headers["content-type"]
        assert "content-security-policy" in js.headers
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert missing.status_code == 404 and escape.status_code == 404


def test_ended_generations_are_forgotten_with_the_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    """The WebSocket API keeps ended generations resumable only as long as the gateway does."""
    monkeypatch.setattr(gateway_module, "KEEP_ENDED", 2)
    settings = Settings(routes=[Route(match="*", provider="scripted")])
    lone = serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.0)}))

    async def main() -> None:
        async with websockets.connect(lone.ws_url) as ws:
            for i in range(6):
                msg = {"action": "generate", "id": f"g{i}", "prompt": "hi", "max_tokens": 3}
                await ws.send(json.dumps(msg))
                while json.loads(await ws.recv())["type"] != "end":
                    pass

    try:
        asyncio.run(main())
        live = lone.app.state.websocket.live
        assert len(live) <= 3 and ("anonymous", "g5") in live
    finally:
        stop(lone)
