"""Only pages we trust may drive the server from a browser.

A browser sends `Origin` with every WebSocket handshake and cross-site POST; any web page a user
visits could otherwise open `/ws` or post a `text/plain` body to the model. Requests that carry
an Origin are served only if it is the server's own (the origin of the Host they were sent to),
a page on this machine (localhost, 127.0.0.1, [::1]), or one listed in `allowed_origins`
("*": any). Clients that send no Origin (boto3, the SDKs, curl) are not browsers and pass.
Function URLs and the REST API emulation are public endpoints, as on AWS, and are left alone.

The `Host` a request names is checked too, against DNS rebinding (a hostile name that resolves
to this machine makes the browser's same-origin rule useless): a server bound to a loopback
address answers only Host names of this machine, one bound to another address that address
too, each plus those in `allowed_hosts`; one bound to every address (0.0.0.0) any name, or
this machine's and those in `allowed_hosts` if there are any.

A pure ASGI middleware (never BaseHTTPMiddleware: it hides disconnects).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
ANY_ADDRESS = {"0.0.0.0", "::", ""}
PUBLIC_PREFIXES = ("/fn/", "/rest/")


def host_names(bound: str, allowed: Iterable[str] = ()) -> set[str]:
    """The Host names a server bound to `bound` answers ("*": any)."""
    named = {h.lower() for h in allowed}
    if bound in ANY_ADDRESS:
        return named | LOCAL_HOSTS if named else {"*"}
    return {*LOCAL_HOSTS, bound.strip("[]").lower(), *named}


class OriginGuard:
    def __init__(
        self, app: ASGIApp, allowed: Iterable[str] = (), hosts: Iterable[str] = ("*",)
    ) -> None:
        self.app = app
        self.allowed = {o.rstrip("/").lower() for o in allowed}
        self.hosts = set(hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            if not self._known_host(scope):
                message = "This Host name is not served here (see allowed_hosts in the config)."
                await self._refuse(scope, send, 400, message)
                return
            if not self._trusted(scope):
                message = "This origin may not use this server (see allowed_origins in the config)."
                await self._refuse(scope, send, 403, message)
                return
        await self.app(scope, receive, send)

    def _known_host(self, scope: Scope) -> bool:
        if "*" in self.hosts:
            return True
        host = dict(scope.get("headers") or []).get(b"host")
        if host is None:
            return True  # HTTP/1.0 without Host: not a browser
        try:
            name = urlsplit("//" + host.decode("latin-1")).hostname
        except ValueError:
            return False
        return name is not None and name in self.hosts

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
    async def _refuse(scope: Scope, send: Send, status: int, message: str) -> None:
        body = json.dumps({"message": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if scope["type"] == "websocket":  # closed before it is accepted: the handshake gets 403
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
