"""Shared fixtures: the embedded model loaded once, and real servers on free ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import httpx
import pytest
import uvicorn
from botocore.config import Config

from sluicegate import handlers, serving
from sluicegate.config import Route, ScriptedSettings, Settings, WebSocketSettings
from sluicegate.gateway import Gateway
from sluicegate.providers.engine import EngineConfig
from sluicegate.providers.local import LocalProvider, embedded_model_path
from sluicegate.providers.scripted import ScriptedProvider
from sluicegate.routes.app import create_app

if TYPE_CHECKING:
    from sluicegate.tls import LocalCertificate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """A real uvicorn serving a gateway, in a thread of the test process."""

    gateway: Gateway
    app: Any
    url: str
    uvicorn: uvicorn.Server
    thread: threading.Thread
    listeners: list[uvicorn.Server]
    cert: LocalCertificate | None = None  # with a TLS listener (serve(..., tls=True))

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "/ws"

    @property
    def tls_url(self) -> str:
        return f"https://{self.gateway.settings.domain_name}"

    def management(self) -> Any:
        return boto3.client(
            "apigatewaymanagementapi",
            region_name="us-east-1",
            endpoint_url=self.url + "/ws",
            aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key="secret",
            config=Config(retries={"max_attempts": 1}),
        )

    def bedrock(self, **config: Any) -> Any:
        return boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            endpoint_url=self.url,
            aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key="secret",
            config=Config(read_timeout=120, retries={"max_attempts": 1}, **config),
        )


def serve_command(port: int, *flags: str) -> list[str]:
    """`sluicegate serve` as a process on a free port, scripted provider for every model."""
    return [sys.executable, "-m", "sluicegate", "serve", "--port", str(port),
            "--route", "*=scripted", *flags]  # fmt: skip


def serve(gateway: Gateway, *, tls: bool = False, port: int | None = None) -> Server:
    """Serve on free ports (or `port`); `tls` adds the TLS listener (its certificate in a
    temporary folder)."""
    port = port or free_port()
    # Tests stop servers with streams still running: a short drain (unless a test sets one).
    drain = (
        gateway.settings.drain_seconds
        if "drain_seconds" in gateway.settings.model_fields_set
        else 0.5
    )
    listen = {"port": port, "tls_port": free_port() if tls else None, "drain_seconds": drain}
    gateway.settings = gateway.settings.model_copy(update=listen)
    cert = None
    if tls:
        cert = serving.local_certificate(gateway.settings, Path(tempfile.mkdtemp(prefix="sg-tls-")))
    app = create_app(gateway)
    servers = serving.servers(
        app, gateway.settings, cert, log_level="warning", timeout_graceful_shutdown=2
    )
    thread = threading.Thread(target=serving.run_servers, args=(servers,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not all(s.started for s in servers):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    return Server(gateway, app, f"http://127.0.0.1:{port}", servers[0], thread, servers, cert)


def stop(server: Server) -> None:
    for listener in server.listeners:
        listener.should_exit = True
    server.thread.join(timeout=10)
    if server.cert is not None:
        shutil.rmtree(server.cert.ca_file.parent, ignore_errors=True)
        # Give back the AWS_CA_BUNDLE we replaced: nothing later should trust a removed file.
        original = handlers.user_ca_bundle()
        if original is None:
            os.environ.pop("AWS_CA_BUNDLE", None)
        else:
            os.environ["AWS_CA_BUNDLE"] = original


@pytest.fixture(scope="session")
def local() -> Iterator[LocalProvider]:
    provider = LocalProvider(embedded_model_path(), EngineConfig(), q8_0=True)  # as served
    yield provider
    provider.close()


SETTINGS = Settings(
    routes=[Route(match="scripted*", provider="scripted"), Route(match="*", provider="local")],
    scripted=ScriptedSettings(delay_ms=2, length=64),
    websocket=WebSocketSettings(grace_seconds=1.0),
)


@pytest.fixture(scope="session")
def server(local: LocalProvider) -> Iterator[Server]:
    """Model ids starting with `scripted` go to the scripted provider, the rest to the model."""
    scripted = ScriptedProvider(delay=0.002, length=64)
    s = serve(Gateway(SETTINGS, {"local": local, "scripted": scripted}))
    yield s
    stop(s)


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait for a `sluicegate serve` process to answer 200 on /readyz (every provider ready),
    as a load balancer would."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, "the server never got ready"
        time.sleep(0.1)


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


@dataclass
class Redis:
    """A real redis-server on a free port (Debian's; `make test` installs it)."""

    port: int
    folder: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if not wait_until(self.answers, timeout=20):
            raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def keys(self) -> list[str]:
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            return sorted(k.decode() for k in client.keys("*"))
        finally:
            client.close()


@contextlib.contextmanager
def redis_server() -> Iterator[Redis]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is missing: `make test` installs it (apt-get)")
    r = Redis(free_port(), Path(tempfile.mkdtemp(prefix="sg-redis-")))
    r.start()
    try:
        yield r
    finally:
        r.kill()
        shutil.rmtree(r.folder, ignore_errors=True)
