"""The in-process bus (see bus/base.py), and the WebSocket connections a process holds.

A Connection has one outbound queue drained by one writer, so generations, @connections posts
and replies never interleave half-messages and each keeps its order. The queue holds at most
`max_queued_bytes`: a client that cannot keep up is disconnected (1008) rather than let the
server's memory grow; its generations stay resumable from their logs.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sluicegate import errors
from sluicegate.bus.base import Followable, Named

Outbound = str | bytes | None  # None asks the writer to close the socket


@dataclass(eq=False)
class Connection:
    """One client WebSocket, as the @connections API describes it."""

    owner: str
    source_ip: str
    user_agent: str
    id: str = field(default_factory=lambda: secrets.token_urlsafe(12) + "=")
    connected_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_active_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    outbound: asyncio.Queue[Outbound] = field(default_factory=asyncio.Queue)
    max_queued_bytes: int | None = None
    # Showed the server's api_key (if one is set): may use the built-in `generate` route.
    verified: bool = True
    queued_bytes: int = 0
    closed: bool = False
    close_code: int = 1000
    close_reason: str = ""
    opened: float = field(default_factory=time.monotonic)
    active: float = field(default_factory=time.monotonic)

    def send(self, message: str | bytes) -> None:
        if self.closed:
            raise errors.Gone(f"Connection {self.id} is gone.")
        size = len(message)
        limit = self.max_queued_bytes
        if limit is not None and self.queued_bytes + size > limit:
            self.close(1008, "client too slow: the server's queue for it is full", now=True)
            raise errors.Gone(
                f"Connection {self.id} was closed: it fell {limit} bytes behind what was sent."
            )
        self.queued_bytes += size
        self.outbound.put_nowait(message)

    def taken(self, message: str | bytes) -> None:
        """The writer took `message` off the queue."""
        self.queued_bytes -= len(message)

    def close(self, code: int = 1000, reason: str = "", *, now: bool = False) -> None:
        """Close after what is queued, or `now`: what is queued is dropped."""
        if self.closed:
            return
        self.closed = True
        self.close_code, self.close_reason = code, reason
        if now:
            while not self.outbound.empty():
                self.outbound.get_nowait()
            self.queued_bytes = 0
        self.outbound.put_nowait(None)

    def touch(self) -> None:
        self.last_active_at = datetime.now(UTC)
        self.active = time.monotonic()

    def expired(self, now: float, idle: float | None, lifetime: float | None) -> bool:
        """Past API Gateway's idle timeout or maximum connection duration."""
        return (idle is not None and now - self.active > idle) or (
            lifetime is not None and now - self.opened > lifetime
        )


class Connections:
    """The registry of live connections, by id."""

    def __init__(self) -> None:
        self.by_id: dict[str, Connection] = {}
        self.opened = 0
        self.started = time.monotonic()

    def add(self, conn: Connection) -> None:
        self.by_id[conn.id] = conn
        self.opened += 1

    def remove(self, conn: Connection) -> None:
        conn.closed = True
        self.by_id.pop(conn.id, None)

    def close_expired(self, idle: float | None, lifetime: float | None) -> int:
        """Close connections past their limits with 1001 (going away), as AWS does."""
        now = time.monotonic()
        expired = [c for c in self.by_id.values() if c.expired(now, idle, lifetime)]
        for conn in expired:
            conn.close(1001)
        return len(expired)

    def get(self, connection_id: str) -> Connection:
        conn = self.by_id.get(connection_id)
        if conn is None or conn.closed:
            raise errors.Gone(f"No connection {connection_id!r}: it closed or never existed.")
        return conn


def iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def describe_connection(conn: Connection) -> dict[str, Any]:
    """What the @connections API's GET answers for a socket."""
    return {
        "connectedAt": iso(conn.connected_at),
        "identity": {"sourceIp": conn.source_ip, "userAgent": conn.user_agent},
        "lastActiveAt": iso(conn.last_active_at),
    }


def deliver(conn: Connection, data: bytes) -> None:
    """An @connections post: text if it is UTF-8, else a binary message."""
    try:
        conn.send(data.decode("utf-8"))
    except UnicodeDecodeError:
        conn.send(data)


class MemoryBus:
    """The bus of a single process: every generation and socket is local."""

    def __init__(self, generations: Mapping[str, Followable], replica: str = "local") -> None:
        self.replica = replica
        self.generations = generations
        self.connections = Connections()
        self.on_attached: Callable[[str], None] = lambda gen_id: None
        self.names: dict[tuple[str, str], Named] = {}
        self.extras: dict[tuple[str, str], dict[str, Any]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def announce(self, gen: Any) -> None:
        return None  # found in `generations`

    def name(self, owner: str, client_id: str, named: Named) -> None:
        for key, old in list(self.names.items()):  # names last as long as their generations
            if old.gen_id not in self.generations:
                del self.names[key]
        self.names[(owner, client_id)] = named

    async def find(self, gen_id: str) -> Followable | None:
        return self.generations.get(gen_id)

    async def find_named(self, owner: str, client_id: str) -> Named | None:
        named = self.names.get((owner, client_id))
        return named if named is not None and named.gen_id in self.generations else None

    def attached(self, gen_id: str) -> None:
        return None

    def describe(self, gen_id: str) -> dict[str, Any] | None:
        return None

    def keep(self, gen_id: str, key: str, value: dict[str, Any]) -> None:
        for old in [k for k in self.extras if k[0] not in self.generations]:
            del self.extras[old]
        self.extras[(gen_id, key)] = value

    async def kept(self, gen_id: str, key: str) -> dict[str, Any] | None:
        return self.extras.get((gen_id, key))

    def forget(self, gen_id: str, key: str) -> None:
        self.extras.pop((gen_id, key), None)

    def register(self, conn: Connection) -> None:
        self.connections.add(conn)

    def unregister(self, conn: Connection) -> None:
        self.connections.remove(conn)

    async def post(self, connection_id: str, data: bytes) -> None:
        deliver(self.connections.get(connection_id), data)

    async def connection(self, connection_id: str) -> dict[str, Any]:
        return describe_connection(self.connections.get(connection_id))

    async def disconnect(self, connection_id: str) -> None:
        self.connections.get(connection_id).close()
