"""The access log's ASGI side: an Entry for each request, closed when its response is over.

A pure ASGI middleware (never BaseHTTPMiddleware: it hides disconnects). See accesslog.py.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sluicegate import accesslog

# The response headers that carry a request id, for requests that start no generation.
ID_HEADERS = (b"x-amzn-requestid", b"request-id", b"x-request-id")
# Path prefixes and the door they belong to, the first match wins.
DOORS = (
    ("/v1/messages", "anthropic"),
    ("/v1/chat/completions", "openai"),
    ("/v1/responses", "responses"),
    ("/v1/", "openai"),
    ("/fn/", "function_url"),
    ("/rest/", "rest"),
    ("/2015-03-31/functions/", "lambda"),
    ("/metrics", "metrics"),
    ("/healthz", "metrics"),
    ("/readyz", "metrics"),
)


def door(path: str, stage: str) -> str:
    """Which door a request came in by, from its path."""
    if path.startswith("/model/"):
        action = path.rsplit("/", 1)[-1]
        return "converse" if action.startswith("converse") else "bedrock"
    if path.startswith(f"/{stage}/@connections"):
        return "connections"
    if path == f"/{stage}":
        return "ws"
    return next((name for prefix, name in DOORS if path.startswith(prefix)), "web")


class AccessLog:
    def __init__(self, app: ASGIApp, stage: str = "ws") -> None:
        self.app = app
        self.stage = stage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        client = scope.get("client")
        entry = accesslog.Entry(
            door=door(path, self.stage),
            method=scope.get("method", "GET"),
            path=path,
            caller=client[0] if client else "",
            websocket=kind == "websocket",
        )
        token = accesslog.current.set(entry)

        async def watched(message: Message) -> None:
            t = message["type"]
            if t == "http.response.start":
                entry.status = message["status"]
                entry.request_id = _request_id(message.get("headers", []))
            elif t == "websocket.accept":
                entry.status = 101
            elif t in ("websocket.close", "websocket.http.response.start"):
                entry.status = entry.status or message.get("status", 403)
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except BaseException:
            entry.status = entry.status or 500
            raise
        finally:
            accesslog.current.reset(token)
            accesslog.finish(entry)


def _request_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() in ID_HEADERS:
            return value.decode("latin-1")
    return None
