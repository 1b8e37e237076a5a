"""Only pages we trust may drive the server from a browser.

A browser sends `Origin` with every WebSocket handshake and cross-site POST; any web page a user
visits could otherwise open `/ws` or post a `text/plain` body to the model. Requests that carry
an Origin are served only if it is the server's own (the origin of the Host they were sent to),
a page on this machine (localhost, 127.0.0.1, [::1]), or one listed in `allowed_origins`
("*": any). Clients that send no Origin (boto3, the SDKs, curl) are not browsers and pass.
Function URLs and the REST API emulation are public endpoints, as on AWS, and are left alone.

A pure ASGI middleware (never BaseHTTPMiddleware: it hides disconnects).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
PUBLIC_PREFIXES = ("/fn/", "/rest/")


class OriginGuard:
    def __init__(self, app: ASGIApp, allowed: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = {o.rstrip("/").lower() for o in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self._trusted(scope):
            await self._refuse(scope, send)
            return
        await self.app(scope, receive, send)

    def _trusted(self, scope: Scope) -> bool:
        if scope["path"].startswith(PUBLIC_PREFIXES):
            return True
        headers = dict(scope.get("headers") or [])
        origin = headers.get(b"origin")
        if origin is None:
            return True
        text: str = origin.decode("latin-1").rstrip("/").lower()
        if "*" in self.allowed or text in self.allowed:
            return True
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False  # "null" (sandboxed frames, files) and the like
        if parts.hostname in LOCAL_HOSTS:
            return True
        host: str = headers.get(b"host", b"").decode("latin-1").lower()
        return parts.netloc == host

    @staticmethod
    async def _refuse(scope: Scope, send: Send) -> None:
        message = "This origin may not use this server (see allowed_origins in the config)."
        body = json.dumps({"message": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if scope["type"] == "websocket":  # closed before it is accepted: the handshake gets 403
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})
