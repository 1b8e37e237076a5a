"""/metrics (Prometheus), the health probes, and a small JSON window into generations and the
engine.

`/healthz` answers 200 while the process serves requests (a liveness probe); `/readyz` answers
200 only while every provider can serve (model loaded and warm, engine thread alive), else 503
with the reason: a load balancer's or Kubernetes' readiness probe."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sluicegate.gateway import Gateway, engine_figures
from sluicegate.routes.aws import authorized, caller, key_owner


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def metrics(request: Request) -> Response:
    body = generate_latest(_gateway(request).metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def generation(request: Request) -> Response:
    gateway = _gateway(request)
    gen = gateway.generations.get(request.path_params["id"])
    if gen is None:  # another replica's, if the bus knows it
        found = await gateway.bus.find(request.path_params["id"])
        mirrored = gateway.bus.describe(found.id) if found is not None else None
        if mirrored is None:
            return JSONResponse({"message": "No such generation (or it ended long ago)."}, 404)
        return JSONResponse(mirrored)
    # The sampling the provider used, its model's defaults filled in (null: it does not sample).
    return JSONResponse({**gateway.describe(gen), "sampling": gen.meter.sampling or None})


async def stop(request: Request) -> Response:
    """`POST /sluicegate/generations/{id}/stop`: end a generation now as `cancelled`, on any
    replica, for its owner only: the request carries the credentials it was started with (the
    same x-api-key or Bearer key, or a SigV4 signature by the same access key id; with an
    api_key configured, checked as the doors check them). Any door's generation: the
    anthropic and bedrock doors have no stop call of their own."""
    gateway = _gateway(request)
    body = await request.body()
    owner = _owner(request, body, gateway.settings.api_key)
    if owner is None:
        return JSONResponse({"message": "The credentials are not valid."}, 403)
    gen_id = request.path_params["id"]
    found = gateway.generations.get(gen_id) or await gateway.bus.find(gen_id)
    if found is None or _owner_of(found) != owner:
        return JSONResponse({"message": "No such generation (or it ended long ago)."}, 404)
    stopped = found.cancel("cancelled")
    return JSONResponse({"id": gen_id, "stopped": stopped, "stop_reason": found.stop_reason})


def _owner(request: Request, body: bytes, api_key: str | None) -> str | None:
    """Who asks, as the doors name owners (aws.caller); None if the credentials fail the
    configured api_key."""
    auth = request.headers.get("authorization", "")
    if auth.startswith("AWS4-HMAC-SHA256 "):
        if api_key and not authorized(request, body, api_key, request.app.state.signing_secrets):
            return None
        return caller(auth)
    return key_owner(request, api_key)


def _owner_of(found: object) -> str | None:
    """A local Generation's owner, or the one its bus record names (another replica's)."""
    owner = getattr(found, "owner", None)
    if owner is None:
        owner = getattr(found, "record", {}).get("owner")
    return owner if isinstance(owner, str) else None


async def healthz(request: Request) -> Response:
    """Alive; and which replica answered (behind a load balancer, where a request landed)."""
    return JSONResponse(
        {"status": "ok", "replica": _gateway(request).bus.replica}, headers=NO_STORE
    )


async def readyz(request: Request) -> Response:
    unready = _gateway(request).unready()
    if unready:
        return JSONResponse({"status": "unavailable", "providers": unready}, 503, NO_STORE)
    return JSONResponse({"status": "ready"}, headers=NO_STORE)


NO_STORE = {"cache-control": "no-store"}


async def engine(request: Request) -> Response:
    local = _gateway(request).providers.get("local")
    found = getattr(local, "engine", None)
    if found is None:
        return JSONResponse({"message": "No embedded engine is running."}, 404)
    return JSONResponse(engine_figures(found))


def routes() -> list[Route]:
    return [
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/sluicegate/generations/{id}", generation),
        Route("/sluicegate/generations/{id}/stop", stop, methods=["POST"]),
        Route("/sluicegate/engine", engine),
    ]
