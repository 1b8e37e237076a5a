"""The bus: what must cross processes when several replicas serve one gateway.

Every replica runs its own generations and holds its own WebSockets. Through the bus, any replica
can follow a generation running on another (its record and event log: what WebSocket `resume`,
SSE `Last-Event-ID` and the introspection route read), find a WebSocket generation by its
client's name for it, stop a generation, and post to, describe or close a socket another replica
holds (the @connections API).

Two implementations: `memory.MemoryBus` (one process, the default, nothing to install) and
`redis.RedisBus` (`--bus redis://...`). A door never asks which one it has.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sluicegate.events import Event, StopReason, Usage

if TYPE_CHECKING:
    from sluicegate.bus.memory import Connections


class Followable(Protocol):
    """A generation as a reader sees it: a local `Generation`, or another replica's, mirrored.
    Doors use only this much of it."""

    id: str
    stop_reason: StopReason | None

    @property
    def log(self) -> Sequence[Event]: ...

    @property
    def usage(self) -> Usage: ...

    @property
    def done(self) -> bool: ...

    def follow(self, after: int = 0) -> AsyncIterator[tuple[int, Event]]: ...

    def next_change(self) -> asyncio.Future[None]:
        """Done once the log has grown (or ended)."""
        ...

    def cancel(self, reason: StopReason = "cancelled") -> bool: ...


@dataclass(frozen=True)
class Named:
    """A WebSocket generation, by its owner and the id its client gave it."""

    gen_id: str
    token: str  # its resumeToken


class Bus(Protocol):
    replica: str  # this process's id on the bus
    connections: Connections  # the sockets this process holds
    # Set by the WebSocket API: a connection on another replica took over a generation's stream.
    on_attached: Callable[[str], None]

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    # -- generations ------------------------------------------------------------------------

    def announce(self, gen: Any) -> None:
        """A generation started here: others may follow it (its record and log)."""

    def name(self, owner: str, client_id: str, named: Named) -> None:
        """A WebSocket generation's name, for `resume` and `stop` on any replica."""

    async def find(self, gen_id: str) -> Followable | None:
        """A generation by id: the local one, or another replica's, mirrored; None if none."""

    async def find_named(self, owner: str, client_id: str) -> Named | None: ...

    def attached(self, gen_id: str) -> None:
        """A connection here now streams this generation: the others let theirs go."""

    def describe(self, gen_id: str) -> dict[str, Any] | None:
        """A mirrored generation's record, for the introspection route (local ones: None)."""

    def keep(self, gen_id: str, key: str, value: dict[str, Any]) -> None:
        """What a door knows of a generation besides its log (a Response's request), for the
        same door on another replica; kept as long as the generation's record."""

    async def kept(self, gen_id: str, key: str) -> dict[str, Any] | None: ...

    def forget(self, gen_id: str, key: str) -> None: ...

    # -- connections ------------------------------------------------------------------------

    def register(self, conn: Any) -> None: ...

    def unregister(self, conn: Any) -> None: ...

    async def post(self, connection_id: str, data: bytes) -> None:
        """Send to a socket wherever it is held; errors.Gone if it is nowhere."""

    async def connection(self, connection_id: str) -> dict[str, Any]:
        """connectedAt, identity, lastActiveAt (the @connections GET answer); errors.Gone."""

    async def disconnect(self, connection_id: str) -> None: ...
