"""Without an api_key, the management APIs (@connections, the Lambda API) answer callers on
this machine only: nothing else proves who calls."""

from __future__ import annotations

import asyncio

import httpx

from sluicegate.config import FunctionSettings, Route, Settings
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider
from sluicegate.routes.app import create_app

SIGNED = {"authorization": "AWS4-HMAC-SHA256 Credential=AKID/20261201/us-east-1/x/aws4_request"}


def handler(event: object, context: object) -> str:
    return "ok"


def statuses(settings: Settings, client: str) -> tuple[int, int]:
    app = create_app(
        Gateway(settings, {"scripted": ScriptedProvider(delay=0, length=4)}),
        {"fn:f": handler},
    )
    transport = httpx.ASGITransport(app=app, client=(client, 40000))

    async def main() -> tuple[int, int]:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            post = await c.post("/ws/@connections/abc", content=b"hi", headers=SIGNED)
            invoke = await c.post("/2015-03-31/functions/f/invocations", content=b"{}")
            return post.status_code, invoke.status_code

    return asyncio.run(main())


def settings(**extra: object) -> Settings:
    fns = {"f": FunctionSettings(handler="unused.py:handler")}
    return Settings(routes=[Route(match="*", provider="scripted")], functions=fns, **extra)  # type: ignore[arg-type]


def test_without_a_key_only_this_machine_gets_in() -> None:
    assert statuses(settings(), "127.0.0.1") == (410, 200)  # no such socket: Gone; invoked
    assert statuses(settings(), "10.1.2.3") == (403, 403)


def test_with_a_key_others_get_in_by_proving_it() -> None:
    keyed = settings(api_key="k")
    bearer = {"authorization": "Bearer k"}
    app = create_app(
        Gateway(keyed, {"scripted": ScriptedProvider(delay=0, length=4)}), {"fn:f": handler}
    )
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 40000))

    async def main() -> int:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            r = await c.post("/2015-03-31/functions/f/invocations", content=b"{}", headers=bearer)
            return r.status_code

    assert asyncio.run(main()) == 200
