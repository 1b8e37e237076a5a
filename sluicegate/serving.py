"""Serving the app with uvicorn: the one place that turns settings into listeners.

The command line and the tests start servers through here, so both enforce the same WebSocket
limits: a message over `max_message_bytes`, or a frame over `max_frame_bytes`, closes the
connection with 1009 (Message Too Big), as API Gateway does.

Requests are held to limits before the app sees them (`[http]` settings): a header block over
`max_header_bytes` gets 431, headers not complete within `header_timeout_seconds` get 408, and a
body that stops arriving for `body_idle_seconds`, or takes longer than `body_timeout_seconds`,
closes the connection (the app sees the client leave). So idle, trickling and half-sent requests
cannot hold connections open.

With `tls_port`, a second listener serves the same app over TLS, with a certificate made at
start-up that handlers' boto3 clients trust (AWS_CA_BUNDLE): AWS samples post to
`https://{domainName}/{stage}`, and `domainName` then names that listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from sluicegate import handlers
from sluicegate.config import HttpSettings, Settings

if TYPE_CHECKING:  # the TLS listener alone needs the `cryptography` package
    from sluicegate.tls import LocalCertificate

STARTUP_FAILURE = 3  # uvicorn's exit status when a listener cannot start
# A refused request's connection reads and drops this long, or this much, before it closes.
LINGER_SECONDS, LINGER_BYTES = 1.0, 1024 * 1024


def websocket_protocol(max_frame_bytes: int | None) -> type[WebSocketsSansIOProtocol]:
    """uvicorn's websockets (sans-I/O) protocol, with a frame limit besides the message limit."""

    class Limited(WebSocketsSansIOProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # uvicorn passes on only a message limit (ws_max_size); websockets' parser can also
            # hold each frame to a limit, and closes with 1009 past either.
            self.conn.max_fragment_size = max_frame_bytes

    return Limited


def http_protocol(limits: HttpSettings) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, with a header size limit and read deadlines."""

    class Guarded(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._awaiting_headers = True  # between requests, or in a request's header block
            self._header_bytes = 0
            self._tail = b""  # the last bytes seen, for a header end split across reads
            self._timer: asyncio.TimerHandle | None = None
            self._refused = False
            self._dropped = 0
            self._body_started = 0.0
            self._last_data = 0.0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:  # read and dropped until the close (see _refuse), within bounds
                self._dropped += len(data)
                if self._dropped > LINGER_BYTES:
                    self.transport.close()
                return
            self._last_data = self.loop.time()
            if self._awaiting_headers:
                budget = limits.max_header_bytes - self._header_bytes
                window = self._tail + data[: max(budget, 0)]
                if b"\r\n\r\n" not in window and len(data) >= budget:
                    self._refuse(431, "Request header fields too large.")
                    return
                self._header_bytes += len(data)
                self._tail = window[-3:]
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._awaiting_headers = False
            self._disarm()
            super().on_headers_complete()
            if self.cycle is not None and self.cycle.more_body is not False:
                self._body_started = self._last_data = self.loop.time()
                self._arm(min(limits.body_idle_seconds, limits.body_timeout_seconds))

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._await_headers()

        def handle_websocket_upgrade(self) -> None:
            self._disarm()  # the WebSocket protocol owns the transport from here
            super().handle_websocket_upgrade()

        def _await_headers(self) -> None:
            self._awaiting_headers, self._header_bytes, self._tail = True, 0, b""
            self._arm(limits.header_timeout_seconds)

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expired(self) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            if self._awaiting_headers:
                if self._header_bytes:  # a request begun and not finished
                    self._refuse(408, "Request headers not received in time.")
                else:  # an idle connection (uvicorn's keep-alive timeout may come first)
                    self.transport.close()
                return
            now = self.loop.time()
            idle_left = limits.body_idle_seconds - (now - self._last_data)
            total_left = limits.body_timeout_seconds - (now - self._body_started)
            if idle_left <= 0 or total_left <= 0:
                self.logger.info("closing a connection: its request body stopped or crawled")
                self.transport.close()  # the app sees the client leave
            else:
                self._arm(min(idle_left, total_left))

        def _refuse(self, status: int, message: str) -> None:
            self._disarm()
            reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
            body = message.encode()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                % (status, reason, len(body), body)
            )
            # Closing with the client's bytes unread would reset the connection, and a client
            # still sending would never read the answer: stop sending, drop what comes for a
            # moment (a bounded one), then close.
            self._refused = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)

    return Guarded


def configs(
    app: Any, settings: Settings, cert: LocalCertificate | None = None, **options: Any
) -> list[uvicorn.Config]:
    """The uvicorn configuration of every listener serving `app`: plain, then TLS if any."""
    ws = settings.websocket
    common: dict[str, Any] = {
        "host": settings.host,
        "http": http_protocol(settings.http),
        "ws": websocket_protocol(ws.max_frame_bytes),
        "ws_max_size": ws.max_message_bytes,
        **options,
    }
    listeners = [uvicorn.Config(app, port=settings.port, **common)]
    if settings.tls_port is not None:
        if cert is None:
            raise ValueError("tls_port is set: make its certificate first (local_certificate)")
        tls = uvicorn.Config(
            app,
            port=settings.tls_port,
            ssl_certfile=cert.cert_file,
            ssl_keyfile=cert.key_file,
            lifespan="off",  # the app starts and stops once, with the plain listener
            **common,
        )
        listeners.append(tls)
    return listeners


class Draining(uvicorn.Server):
    """uvicorn's server, with a graceful drain first when it shuts down: stop accepting,
    let running generations finish up to `drain_seconds`, end the rest with each door's
    terminal error, send WebSockets their `end` then 1001; only then uvicorn's own shutdown
    (which would close WebSockets with 1012 and cut streams)."""

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        for server in self.servers:
            server.close()  # no new connections (a second listener closes its own)
        app = self.config.app
        drain = getattr(getattr(app, "state", None), "drain", None)
        if drain is not None:
            await drain(lambda: self.force_exit)
        await super().shutdown(sockets)


def servers(
    app: Any, settings: Settings, cert: LocalCertificate | None = None, **options: Any
) -> list[uvicorn.Server]:
    """A server for every listener of `settings`, each draining on shutdown."""
    return [Draining(c) for c in configs(app, settings, cert, **options)]


def local_certificate(settings: Settings, directory: Path) -> LocalCertificate:
    """The TLS listener's certificate, written to `directory`, and trusted by handlers' boto3
    clients through AWS_CA_BUNDLE (unless they are meant to call real AWS)."""
    hosts = list(dict.fromkeys([settings.public_address, "127.0.0.1", "localhost", "::1"]))
    from sluicegate.tls import make_certificate

    before = handlers.user_ca_bundle()
    cert = make_certificate(directory, hosts, Path(before) if before else None)
    if not settings.handlers_call_aws:
        os.environ.update(handlers.ca_environment(str(cert.ca_bundle)))
    return cert


@contextlib.contextmanager
def certificate(settings: Settings) -> Iterator[LocalCertificate | None]:
    """The TLS listener's certificate in a temporary folder while serving; None without one."""
    if settings.tls_port is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="sluicegate-tls-") as folder:
        yield local_certificate(settings, Path(folder))


async def serve_together(servers: list[uvicorn.Server]) -> None:
    """Serve every listener in this loop; when one stops (a signal, an error), so do the rest."""
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks)


def run_servers(servers: list[uvicorn.Server]) -> None:
    """Run the listeners to the end in a new event loop (uvicorn's choice of loop)."""
    with asyncio.Runner(loop_factory=servers[0].config.get_loop_factory()) as runner:
        runner.run(serve_together(servers))


def run(
    app: Any, settings: Settings, cert: LocalCertificate | None, **options: Any
) -> list[signal.Signals]:
    """Serve until a signal, as `uvicorn.run` does, but with every listener of `settings`.

    uvicorn re-raises the SIGTERM that stopped it as soon as it is done; it is returned instead,
    for the caller to raise once it has cleaned up (closed the model, removed the certificate).
    """
    listeners = servers(app, settings, cert, **options)
    # What start-up made (modules, botocore's service models, the app) lives as long as the
    # process: out of the collector's sight, a full collection scans only what serving makes.
    gc.collect()
    gc.freeze()
    caught: list[signal.Signals] = []
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: caught.append(signal.SIGTERM))
    try:
        with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run: SIGINT ends quietly
            run_servers(listeners)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not all(s.started for s in listeners):
        sys.exit(STARTUP_FAILURE)
    return caught
