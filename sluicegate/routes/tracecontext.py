"""The caller's trace context (W3C `traceparent`) made current while its request is served, so
that a generation's span is a child of the caller's span (telemetry.py). Installed only while
tracing is on. A pure ASGI middleware (never BaseHTTPMiddleware: it hides disconnects)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from sluicegate import telemetry

HEADERS = (b"traceparent", b"tracestate")


class TraceContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        carried = {}
        if scope["type"] in ("http", "websocket"):
            carried = {
                name.decode("latin-1"): value.decode("latin-1")
                for name, value in scope["headers"]
                if name in HEADERS
            }
        if not carried:
            await self.app(scope, receive, send)
            return
        token = telemetry.attach_caller(carried)
        try:
            await self.app(scope, receive, send)
        finally:
            telemetry.detach(token)
