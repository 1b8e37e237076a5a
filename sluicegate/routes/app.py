"""Assembles the ASGI app from the routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from sluicegate.gateway import Gateway
from sluicegate.routes import bedrock, metrics


def create_app(gateway: Gateway) -> Starlette:
    """The app serving every door of one gateway."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        for gen in list(gateway.generations.values()):
            gen.cancel("cancelled")

    async def not_found(request: Request, exc: Exception) -> Response:
        return bedrock.unknown_operation(request.url.path, request.method)

    app = Starlette(
        routes=[*bedrock.routes(), *metrics.routes()],
        exception_handlers={HTTPException: not_found},
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app
