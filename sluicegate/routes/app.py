"""Assembles the ASGI app from the routes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import boto3
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from sluicegate import errors, handlers
from sluicegate.config import Settings
from sluicegate.gateway import Gateway
from sluicegate.routes import anthropic as anthropic_door
from sluicegate.routes import bedrock, metrics, web
from sluicegate.routes import openai as openai_door
from sluicegate.routes.connections import connections_api
from sluicegate.routes.function_url import Functions
from sluicegate.routes.guard import OriginGuard, host_names
from sluicegate.routes.tracecontext import TraceContext
from sluicegate.routes.websocket import WebSocketApi, cancel_all, close_all


def load_user_routes(settings: Settings) -> dict[str, handlers.Handler]:
    """Import the configured handlers (WebSocket routes, then functions under `fn:NAME`),
    after pointing their boto3 clients at this server."""
    specs = {**settings.websocket.routes}
    specs.update({f"fn:{name}": f.handler for name, f in settings.functions.items()})
    if specs:
        os.environ.update(handlers.region_environment(settings.region))
    if specs and not settings.handlers_call_aws:
        base = f"http://{settings.public_host}"
        stage, key, region = settings.websocket.stage, settings.api_key, settings.region
        os.environ.update(handlers.handler_environment(base, stage, key, region))
        # boto3's default session keeps the credentials it first found: a server started
        # earlier in this process (tests) must not leave its key to this one's handlers.
        boto3.DEFAULT_SESSION = None
    return {key: handlers.load_handler(spec, function_name(key)) for key, spec in specs.items()}


def function_name(key: str) -> str:
    """The function a route key or `fn:NAME` stands for (WebSocket routes: ws-connect...)."""
    return key[3:] if key.startswith("fn:") else f"ws-{key.strip('$')}"


def signing_secrets(api_key: str | None) -> list[str]:
    """Secrets a SigV4-signed call may be signed with when a key is configured: the key, and
    the one handlers (and the user's own clients) find in the environment, unless it is our
    public placeholder. None without a key."""
    if not api_key:
        return []
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    return [api_key] + ([secret] if secret and secret != handlers.PLACEHOLDER_SECRET else [])


def create_app(
    gateway: Gateway, user_routes: dict[str, handlers.Handler] | None = None
) -> Starlette:
    """The app serving every door of one gateway."""
    ws = gateway.settings.websocket
    loaded = load_user_routes(gateway.settings) if user_routes is None else user_routes
    fns = Functions(gateway.settings, {k[3:]: h for k, h in loaded.items() if k.startswith("fn:")})
    connections = gateway.bus.connections
    api_key = gateway.settings.api_key
    accepted = signing_secrets(api_key)
    ws_api = WebSocketApi(
        gateway,
        connections,
        grace_seconds=ws.grace_seconds,
        max_running=ws.max_generations_per_connection,
        route_key=ws.route_key,
        user_routes={k: h for k, h in loaded.items() if not k.startswith("fn:")},
        stage=ws.stage,
        handler_timeout=ws.handler_timeout_seconds,
        idle_timeout=ws.idle_timeout_seconds,
        max_lifetime=ws.max_connection_seconds,
        max_queued_bytes=ws.max_outbound_bytes,
    )

    draining: asyncio.Future[None] | None = None

    async def drain(give_up: Callable[[], bool] = lambda: False) -> None:
        """Graceful shutdown, once whatever the number of listeners: see serving.Draining."""
        nonlocal draining

        async def run() -> None:
            await gateway.drain(gateway.settings.drain_seconds, give_up)
            await close_all(ws_api)

        if draining is None:
            draining = asyncio.ensure_future(run())
        await asyncio.shield(draining)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.bus.start()
        gateway.bus.on_attached = ws_api.let_go
        yield
        cancel_all(ws_api)
        for gen in list(gateway.generations.values()):
            gen.cancel("cancelled")
        await asyncio.sleep(0)  # let the cancelled ones write their ends
        await gateway.bus.close()
        await gateway.close_upstreams()

    async def not_found(request: Request, exc: Exception) -> Response:
        """No route: answered in the shape of the API the path belongs to."""
        path, method = request.url.path, request.method
        missing = errors.UnknownOperation(f"No operation matches {method} {path}: check the URL.")
        if path.startswith("/v1/messages"):
            return anthropic_door.error_response(missing)
        if path.startswith("/v1/"):
            return openai_door.error_response(missing)
        return bedrock.unknown_operation(path, method)

    app = Starlette(
        routes=[
            *bedrock.routes(),
            *anthropic_door.routes(),
            *openai_door.routes(),
            *metrics.routes(),
            ws_api.route(),
            *connections_api(gateway.bus, ws.stage, api_key, accepted),
            *fns.routes(),
            *web.routes(),
        ],
        exception_handlers={HTTPException: not_found},
        middleware=[
            Middleware(
                OriginGuard,
                allowed=gateway.settings.allowed_origins,
                hosts=host_names(gateway.settings.host, gateway.settings.allowed_hosts),
            ),
            *([Middleware(TraceContext)] if gateway.tracing is not None else []),
        ],
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.state.signing_secrets = accepted
    app.state.connections = connections
    app.state.websocket = ws_api
    app.state.drain = drain
    return app
