"""The @connections management API, as boto3's `apigatewaymanagementapi` client calls it.

    POST   /{stage}/@connections/{id}   raw body (<= 128 KiB) to the socket    200
    GET    /{stage}/@connections/{id}   connectedAt, identity, lastActiveAt   200
    DELETE /{stage}/@connections/{id}   closes the socket                     204

Never open to anyone: a request must be SigV4-signed (as boto3 signs it) or carry the key.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from datetime import datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sluicegate import errors
from sluicegate.bus.memory import Connections
from sluicegate.routes.aws import error_response

MAX_DATA = 128 * 1024

Endpoint = Callable[[Request], Awaitable[Response]]


def connections_api(connections: Connections, stage: str, api_key: str | None) -> list[Route]:
    def guarded(endpoint: Callable[[Request, Connections], Awaitable[Response]]) -> Endpoint:
        @functools.wraps(endpoint)
        async def wrapped(request: Request) -> Response:
            try:
                _authorize(request, api_key)
                return await endpoint(request, connections)
            except errors.SluicegateError as exc:
                return error_response(exc)

        return wrapped

    path = f"/{stage}/@connections/{{connection_id}}"
    return [
        Route(path, guarded(post), methods=["POST"]),
        Route(path, guarded(get), methods=["GET"]),
        Route(path, guarded(delete), methods=["DELETE"]),
    ]


def _authorize(request: Request, api_key: str | None) -> None:
    auth = request.headers.get("authorization", "")
    if auth.startswith("AWS4-HMAC-SHA256 ") and "Credential=" in auth:
        return
    if api_key and auth == f"Bearer {api_key}":
        return
    raise errors.Forbidden("Forbidden: sign the request with SigV4 or send the configured key.")


async def post(request: Request, connections: Connections) -> Response:
    conn = connections.get(request.path_params["connection_id"])
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_DATA:
            raise errors.MessageTooLarge(f"Data is over {MAX_DATA} bytes.")
    try:
        conn.send(bytes(data).decode("utf-8"))
    except UnicodeDecodeError:
        conn.send(bytes(data))
    return Response(status_code=200)


async def get(request: Request, connections: Connections) -> Response:
    conn = connections.get(request.path_params["connection_id"])
    return JSONResponse(
        {
            "connectedAt": _iso(conn.connected_at),
            "identity": {"sourceIp": conn.source_ip, "userAgent": conn.user_agent},
            "lastActiveAt": _iso(conn.last_active_at),
        }
    )


async def delete(request: Request, connections: Connections) -> Response:
    connections.get(request.path_params["connection_id"]).close()
    return Response(status_code=204)


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
