"""The @connections management API, as boto3's `apigatewaymanagementapi` client calls it.

    POST   /{stage}/@connections/{id}   raw body (<= 128 KiB) to the socket    200
    GET    /{stage}/@connections/{id}   connectedAt, identity, lastActiveAt   200
    DELETE /{stage}/@connections/{id}   closes the socket                     204

Never open to anyone: a request must be SigV4-signed (as boto3 signs it) or carry the key.
With `api_key` configured, a signature must verify with the key as the secret access key
(handlers get it as AWS_SECRET_ACCESS_KEY unless the environment has one, which is then
accepted too), so a forged Authorization header gets nowhere; without a key, any SigV4-signed
request from this machine is let in (local use, whatever the caller's keys), and none from
elsewhere.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sluicegate import errors
from sluicegate.bus.base import Bus
from sluicegate.routes.aws import authorized, error_response, require_local_without_key

MAX_DATA = 128 * 1024

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, bytes, Bus], Awaitable[Response]]


def connections_api(
    bus: Bus, stage: str, api_key: str | None, secrets: Sequence[str] = ()
) -> list[Route]:
    """The routes; with `api_key`, SigV4 calls must verify with one of `secrets`
    (`routes.app.signing_secrets`)."""

    def guarded(endpoint: Handler) -> Endpoint:
        @functools.wraps(endpoint)
        async def wrapped(request: Request) -> Response:
            try:
                body = await _body(request)
                _authorize(request, body, api_key, secrets)
                return await endpoint(request, body, bus)
            except errors.SluicegateError as exc:
                return error_response(exc)

        return wrapped

    path = f"/{stage}/@connections/{{connection_id}}"
    return [
        Route(path, guarded(post), methods=["POST"]),
        Route(path, guarded(get), methods=["GET"]),
        Route(path, guarded(delete), methods=["DELETE"]),
    ]


async def _body(request: Request) -> bytes:
    """The body, read no further than the limit (before authorization, which signs it)."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_DATA:
            raise errors.MessageTooLarge(f"Data is over {MAX_DATA} bytes.")
    return bytes(data)


def _authorize(request: Request, body: bytes, api_key: str | None, secrets: Sequence[str]) -> None:
    auth = request.headers.get("authorization", "")
    require_local_without_key(request, api_key, "the @connections API")
    if api_key is None:
        if auth.startswith("AWS4-HMAC-SHA256 ") and "Credential=" in auth:
            return
        raise errors.Forbidden("Forbidden: sign the request with SigV4 (as boto3 does).")
    if not authorized(request, body, api_key, secrets):
        raise errors.Forbidden(
            "Forbidden: sign the request with SigV4 using the configured key as the secret, "
            "or send it as a Bearer token."
        )


async def post(request: Request, body: bytes, bus: Bus) -> Response:
    await bus.post(request.path_params["connection_id"], body)
    return Response(status_code=200)


async def get(request: Request, body: bytes, bus: Bus) -> Response:
    return JSONResponse(await bus.connection(request.path_params["connection_id"]))


async def delete(request: Request, body: bytes, bus: Bus) -> Response:
    await bus.disconnect(request.path_params["connection_id"])
    return Response(status_code=204)
