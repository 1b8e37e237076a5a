"""/metrics (Prometheus) and a small JSON window into generations and the engine."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sluicegate.gateway import Gateway, engine_figures


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def metrics(request: Request) -> Response:
    body = generate_latest(_gateway(request).metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def generation(request: Request) -> Response:
    gateway = _gateway(request)
    gen = gateway.generations.get(request.path_params["id"])
    if gen is None:
        return JSONResponse({"message": "No such generation (or it ended long ago)."}, 404)
    return JSONResponse(gateway.describe(gen))


async def engine(request: Request) -> Response:
    local = _gateway(request).providers.get("local")
    found = getattr(local, "engine", None)
    if found is None:
        return JSONResponse({"message": "No embedded engine is running."}, 404)
    return JSONResponse(engine_figures(found))


def routes() -> list[Route]:
    return [
        Route("/metrics", metrics),
        Route("/sluicegate/generations/{id}", generation),
        Route("/sluicegate/engine", engine),
    ]
