"""The in-process bus: which WebSocket connections exist here, and how to reach them.

A Connection has one outbound queue drained by one writer, so generations, @connections posts
and replies never interleave half-messages and each keeps its order. The queue holds at most
`max_queued_bytes`: a client that cannot keep up is disconnected (1008) rather than let the
server's memory grow; its generations stay resumable from their logs.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sluicegate import errors

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
