"""The bus on Redis: replicas share generations, WebSocket names, sockets and signals.

Keys (all expire: nothing in Redis outlives `keep_seconds` after its last write):

    sg:replica:{r}        a replica's lease, renewed every lease/3 s; gone: the replica is gone
    sg:gen:{id}           a generation's record (hash): replica, route, model, done, usage...
    sg:log:{id}           its event log (stream): each entry a batch of events, entry id 0-N
                          for the batch that ends at log position N
    sg:name:{owner}:{cid} a WebSocket generation's name: gen id and resumeToken
    sg:conn:{cid}         a socket: the replica holding it, connectedAt, identity
    sg:to:{r}, sg:all     signal channels (pub/sub): to one replica, to all

The token path pays no round trip per token: one writer task mirrors every local generation's
new events in one pipeline per tick (`FLUSH_SECONDS`). The local log stays the source of truth
while a generation runs, so a Redis restart loses nothing: the writer finds where the log in
Redis ends and writes the rest, and re-registers what this replica holds. A generation on
another replica is read as a `Mirror`: its log so far, then the live tail (XREAD); if its
replica's lease lapses, the mirror ends with a terminal `Interrupted` error.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sluicegate import errors
from sluicegate.bus import codec
from sluicegate.bus.base import Followable, Named
from sluicegate.bus.memory import Connection, MemoryBus, describe_connection, iso
from sluicegate.config import BusSettings
from sluicegate.events import (
    ErrorEvent,
    Event,
    EventLog,
    MessageDelta,
    MessageStart,
    MessageStop,
    StopReason,
    TextDelta,
    Usage,
)
from sluicegate.generation import Changes, follow_log

log = logging.getLogger(__name__)
FLUSH_SECONDS = 0.01
ASK_SECONDS = 3.0  # another replica's answer to a signal that needs one
READ_BLOCK_MS = 1000
T = TypeVar("T")


def check_reachable(url: str) -> None:
    """At start-up: a clear error (and no server) if Redis does not answer."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3).ping()
    except RedisError as exc:
        raise RuntimeError(f"The bus at {url} does not answer: {exc}") from exc


@dataclass(eq=False)
class _Written:
    """A local generation being mirrored: how much of its log Redis has."""

    gen: Any
    events: int = 0
    recorded: bool = False
    expires: float = 0.0  # when the keys' expiry set last will be half used up


class Mirror:
    """Another replica's generation, as this one reads it (bus/base.Followable)."""

    def __init__(self, gen_id: str, record: dict[str, str], bus: RedisBus) -> None:
        self.id = gen_id
        self.replica = record.get("replica", "")
        self.record = record
        self.log = EventLog()
        self.stop_reason: StopReason | None = None
        self._usage = Usage()
        self._pending: StopReason = "end_turn"
        self._changed = Changes()
        self._bus = bus
        self._reader: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    @property
    def usage(self) -> Usage:
        return self._usage

    def append(self, event: Event) -> None:
        if self.done:
            return
        self.log.append(event)
        if isinstance(event, MessageStart):
            self._usage.input_tokens = event.input_tokens
        elif isinstance(event, TextDelta):
            self._usage.output_tokens += 1
        elif isinstance(event, MessageDelta):
            self._pending = event.stop_reason
            self._usage.output_tokens = event.output_tokens
        elif isinstance(event, MessageStop):
            self._usage = Usage(event.usage.input_tokens, event.usage.output_tokens)
            self.stop_reason = self._pending
        self._changed.notify()

    def interrupt(self, exc: errors.SluicegateError) -> None:
        """End the mirror here: its replica is gone, nothing more will come."""
        self.append(ErrorEvent(type(exc).__name__, exc.message))
        self.append(MessageDelta("error", None, self._usage.output_tokens))
        self.append(MessageStop(Usage(self._usage.input_tokens, self._usage.output_tokens)))

    def follow(self, after: int = 0) -> AsyncIterator[tuple[int, Event]]:
        return follow_log(self, after)

    def next_change(self) -> asyncio.Future[None]:
        return self._changed.future()

    async def wait(self) -> None:
        """Return once the generation has ended (here: once its end reached this mirror)."""
        async for _ in self.follow(len(self.log)):
            pass

    def cancel(self, reason: StopReason = "cancelled") -> bool:
        if self.done:
            return False
        self._bus.signal(self.replica, {"op": "stop", "gen": self.id, "reason": reason})
        return True

    def describe(self) -> dict[str, Any]:
        r = self.record
        return {
            "id": self.id,
            "route": r.get("route"),
            "provider": r.get("provider"),
            "model": r.get("model"),
            "replica": self.replica,
            "done": self.done,
            "stop_reason": self.stop_reason,
            "usage": {
                "input_tokens": self.usage.input_tokens,
                "output_tokens": self.usage.output_tokens,
            },
            "events": len(self.log),
        }


class RedisBus:
    """bus/base.Bus over one Redis server; local generations and sockets go through `local`."""

    def __init__(self, settings: BusSettings, generations: MutableMapping[str, Any]) -> None:
        assert settings.url is not None
        self.settings = settings
        self.replica = "r-" + secrets.token_hex(6)
        self.local = MemoryBus(generations, self.replica)
        self.connections = self.local.connections
        self.generations = generations
        self.on_attached: Callable[[str], None] = lambda gen_id: None
        # Any: redis-py types each reply as the union of its RESP2 and RESP3 shapes; this
        # client speaks RESP2 (lists of (id, fields) for streams, bytes everywhere).
        self.redis: Any = aioredis.Redis.from_url(
            settings.url,
            socket_connect_timeout=2,
            socket_timeout=READ_BLOCK_MS / 1000 + 4,
            # A pooled connection Redis closed (a restart) is retried on a new one, quickly.
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self.up = False
        self._writing: dict[str, _Written] = {}
        self._names: dict[tuple[str, str], Named] = {}  # written again after a Redis restart
        self._named_sent: set[str] = set()
        self._unsent: list[tuple[str, dict[str, Any]]] = []  # signals waiting for Redis
        self._mirrors: dict[str, Mirror] = {}
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._resync = True  # after (re)connecting: rewrite what this replica holds
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self.commands = 0  # Redis commands sent (for bench/replicas.py)
        self.round_trips = 0  # of the writer (one per tick with something new)

    @property
    def keep_ms(self) -> int:
        return int(self.settings.keep_seconds * 1000)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.redis.ping()
        self.up = True
        await self._renew_lease()
        self._tasks = [
            asyncio.create_task(self._keep(self._lease_loop), name="bus lease"),
            asyncio.create_task(self._keep(self._write_loop), name="bus writer"),
            asyncio.create_task(self._keep(self._listen), name="bus listener"),
        ]

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await asyncio.wait_for(self._flush(), 2)
            await self.redis.delete(f"sg:replica:{self.replica}")
        for task in self._tasks:
            task.cancel()
        for mirror in self._mirrors.values():
            if mirror._reader is not None:
                mirror._reader.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()

    async def _keep(self, loop: Callable[[], Awaitable[None]]) -> None:
        """Run one of the bus's loops for ever: through Redis going away, with backoff."""
        wait = 0.05
        while True:
            try:
                await loop()
                wait = 0.05
            except (RedisError, OSError) as exc:
                if self.up:
                    log.warning("the bus (Redis) is unreachable: %s; retrying", exc)
                self.up, self._resync = False, True
                await asyncio.sleep(wait)
                wait = min(wait * 2, 2.0)

    async def _lease_loop(self) -> None:
        while True:
            await self._renew_lease()
            if not self.up:
                log.warning("the bus (Redis) is back")
                self.up = True
            await asyncio.sleep(self.settings.lease_seconds / 3)

    async def _renew_lease(self) -> None:
        lease = int(self.settings.lease_seconds * 1000)
        await self.redis.set(f"sg:replica:{self.replica}", b"1", px=lease)
        self.commands += 1

    # -- writing what this replica holds ----------------------------------------------------

    def announce(self, gen: Any) -> None:
        self._writing[gen.id] = _Written(gen)
        self._wake.set()

    def name(self, owner: str, client_id: str, named: Named) -> None:
        self._names[(owner, client_id)] = named
        self._wake.set()

    async def _write_loop(self) -> None:
        while True:
            if not self._writing and not self._unsent and not self._resync:
                await self._wake.wait()
            self._wake.clear()
            await self._flush()
            await asyncio.sleep(FLUSH_SECONDS)

    async def _flush(self) -> None:
        """One pipeline: every local generation's new events, records, names and signals."""
        if self._resync:
            await self._find_ends()
        pipe = self.redis.pipeline(transaction=False)
        keep = self.keep_ms
        if self._resync:
            self._named_sent.clear()
        names = [(k, n) for k, n in self._names.items() if n.gen_id not in self._named_sent]
        for (owner, cid), named in names:
            key = f"sg:name:{owner}:{cid}"
            pipe.hset(key, mapping={"gen": named.gen_id, "token": named.token})
            pipe.pexpire(key, keep)
        if self._resync:
            for conn in list(self.connections.by_id.values()):
                self._register(pipe, conn)
        finished = []
        now = asyncio.get_running_loop().time()
        for w in self._writing.values():
            gen = w.gen
            fresh = gen.log[w.events :]
            record, logged = f"sg:gen:{gen.id}", f"sg:log:{gen.id}"
            if not w.recorded:
                pipe.hset(record, mapping=_record(gen, self.replica))
                w.recorded = True
            if fresh:  # one entry for all that is new: one command per generation and tick
                w.events += len(fresh)
                pipe.xadd(logged, {"e": codec.dumps_many(fresh)}, id=f"0-{w.events}")
                if gen.done:
                    pipe.hset(record, mapping=_record(gen, self.replica))
                    finished.append(gen.id)
                if gen.done or now >= w.expires:  # expiry renewed at half-life, and at the end
                    pipe.pexpire(record, keep)
                    pipe.pexpire(logged, keep)
                    w.expires = now + self.settings.keep_seconds / 2
        unsent, self._unsent = self._unsent, []
        for channel, message in unsent:
            pipe.publish(channel, json.dumps(message))
        if len(pipe):
            self.commands += len(pipe)
            self.round_trips += 1
            try:
                await pipe.execute(raise_on_error=False)
            except BaseException:
                self._unsent[:0] = unsent
                for w in self._writing.values():  # counted again from Redis when it is back
                    w.events, w.recorded = 0, False
                raise
        self._named_sent.update(n.gen_id for _, n in names)
        for gen_id in finished:
            self._writing.pop(gen_id, None)
        for name, named in list(self._names.items()):  # kept for a resync while they run
            if named.gen_id in self._named_sent and named.gen_id not in self._writing:
                del self._names[name]
                self._named_sent.discard(named.gen_id)
        self._resync = False

    async def _find_ends(self) -> None:
        """After (re)connecting: where each mirrored log ends in Redis (it may have lost it)."""
        for w in self._writing.values():
            last = await self.redis.xrevrange(f"sg:log:{w.gen.id}", count=1)
            w.events = int(last[0][0].split(b"-")[1]) if last else 0
            w.recorded = bool(last)
            self.commands += 1

    def _register(self, pipe: Any, conn: Connection) -> None:
        key = f"sg:conn:{conn.id}"
        pipe.hset(key, mapping={
            "replica": self.replica, "connectedAt": iso(conn.connected_at),
            "sourceIp": conn.source_ip, "userAgent": conn.user_agent,
        })  # fmt: skip
        pipe.pexpire(key, int(max(self.settings.keep_seconds, 7200) * 1000))

    def register(self, conn: Connection) -> None:
        self.local.register(conn)
        self._later(lambda pipe: self._register(pipe, conn))

    def unregister(self, conn: Connection) -> None:
        self.local.unregister(conn)
        self._later(lambda pipe: pipe.delete(f"sg:conn:{conn.id}"))

    def _later(self, write: Callable[[Any], Any]) -> None:
        """A small write off the token path, in its own task (its loss is repaired by a resync)."""

        async def run() -> None:
            with contextlib.suppress(RedisError, OSError):
                pipe = self.redis.pipeline(transaction=False)
                write(pipe)
                self.commands += len(pipe)
                await pipe.execute()

        task = asyncio.ensure_future(run())
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    # -- signals ---------------------------------------------------------------------------

    def signal(self, replica: str, message: dict[str, Any]) -> None:
        """Send `message` to a replica (or "all"), with the next flush."""
        channel = "sg:all" if replica == "all" else f"sg:to:{replica}"
        if replica == self.replica:
            asyncio.get_running_loop().call_soon(self._handle, {**message, "from": self.replica})
            return
        # At once, not with the writer's next tick: a stop or an @connections call waits on it.
        # If Redis is away, the writer sends it once it is back.
        message = {**message, "from": self.replica}
        task = asyncio.ensure_future(self._publish(channel, message))
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _publish(self, channel: str, message: dict[str, Any]) -> None:
        try:
            self.commands += 1
            await self.redis.publish(channel, json.dumps(message))
        except (RedisError, OSError):
            self._unsent.append((channel, message))
            self._wake.set()

    def attached(self, gen_id: str) -> None:
        self.signal("all", {"op": "attached", "gen": gen_id})

    async def _listen(self) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(f"sg:to:{self.replica}", "sg:all")
            self._resync = True
            self._wake.set()
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        self._handle(json.loads(message["data"]))
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    def _handle(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "stop":
            gen = self.generations.get(message["gen"])
            if gen is not None:
                gen.cancel(message["reason"])
        elif op == "attached":
            if message["from"] != self.replica:
                self.on_attached(message["gen"])
        elif op == "reply":
            future = self._replies.get(message["id"])
            if future is not None and not future.done():
                future.set_result(message)
        elif op in ("post", "get", "delete"):
            task = asyncio.ensure_future(self._answer(message))
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)

    async def _answer(self, message: dict[str, Any]) -> None:
        """Another replica's @connections call for a socket held here."""
        reply: dict[str, Any] = {"op": "reply", "id": message["reply"], "ok": True}
        try:
            cid = message["conn"]
            if message["op"] == "post":
                await self.local.post(cid, base64.b64decode(message["data"]))
            elif message["op"] == "get":
                reply["value"] = await self.local.connection(cid)
            else:
                await self.local.disconnect(cid)
        except errors.SluicegateError as exc:
            reply.update(ok=False, error=type(exc).__name__, message=exc.message)
        self.signal(message["from"], reply)

    async def _ask(self, replica: str, message: dict[str, Any]) -> dict[str, Any]:
        reply_id = secrets.token_hex(8)
        future = asyncio.get_running_loop().create_future()
        self._replies[reply_id] = future
        self.signal(replica, {**message, "reply": reply_id})
        try:
            answer = await asyncio.wait_for(future, ASK_SECONDS)
        except TimeoutError:
            raise errors.ServiceUnavailable(
                f"The replica holding this connection did not answer within {ASK_SECONDS:g} s."
            ) from None
        finally:
            self._replies.pop(reply_id, None)
        if not answer["ok"]:
            raise errors.BY_NAME.get(answer["error"], errors.SluicegateError)(answer["message"])
        return dict(answer)

    # -- reading what other replicas hold ---------------------------------------------------

    async def _read(self, call: Callable[[], Awaitable[T]]) -> T:
        """A Redis read a request waits on: unreachable Redis is the door's 503."""
        try:
            self.commands += 1
            return await call()
        except (RedisError, OSError) as exc:
            raise errors.ServiceUnavailable(
                f"The bus (Redis) is unreachable, so what other replicas hold cannot be "
                f"reached now: {exc}"
            ) from None

    async def _alive(self, replica: str) -> bool:
        return bool(await self._read(lambda: self.redis.exists(f"sg:replica:{replica}")))

    async def find(self, gen_id: str) -> Followable | None:
        local = self.generations.get(gen_id)
        if local is not None:
            return local  # type: ignore[no-any-return]
        mirror = self._mirrors.get(gen_id)
        if mirror is not None:
            return mirror
        raw = await self._read(lambda: self.redis.hgetall(f"sg:gen:{gen_id}"))
        if not raw:
            return None
        record = {k.decode(): v.decode() for k, v in raw.items() if not k.startswith(b"x:")}
        mirror = Mirror(gen_id, record, self)
        entries = await self._read(lambda: self.redis.xrange(f"sg:log:{gen_id}"))
        last = _append(mirror, entries, 0)
        if not mirror.done:
            mirror._reader = asyncio.create_task(self._tail(mirror, last))
        self._forget_mirrors()
        self._mirrors[gen_id] = mirror
        return mirror

    def _forget_mirrors(self, keep: int = 1000) -> None:
        done = [k for k, m in self._mirrors.items() if m.done]
        for key in done[: max(0, len(self._mirrors) - keep)]:
            del self._mirrors[key]

    async def _tail(self, mirror: Mirror, last: int) -> None:
        """The live tail of another replica's generation, until it ends or its replica goes."""
        key, down_since = f"sg:log:{mirror.id}", None
        loop = asyncio.get_running_loop()
        while not mirror.done:
            try:
                got = await self.redis.xread({key: f"0-{last}"}, block=READ_BLOCK_MS, count=512)
                self.commands += 1
                down_since = None
                if got:
                    last = _append(mirror, got[0][1], last)
                elif not await self.redis.exists(f"sg:replica:{mirror.replica}"):
                    got = await self.redis.xread({key: f"0-{last}"}, count=512)  # a last flush
                    last = _append(mirror, got[0][1], last) if got else last
                    if not mirror.done:
                        mirror.interrupt(errors.Interrupted(
                            f"The replica running this generation ({mirror.replica}) stopped "
                            f"before it ended; {mirror.usage.output_tokens} tokens were sent."
                        ))  # fmt: skip
            except (RedisError, OSError) as exc:
                down_since = down_since or loop.time()
                if loop.time() - down_since > 30:
                    mirror.interrupt(errors.ServiceUnavailable(f"The bus (Redis) is down: {exc}"))
                await asyncio.sleep(0.5)

    async def find_named(self, owner: str, client_id: str) -> Named | None:
        raw = await self._read(lambda: self.redis.hgetall(f"sg:name:{owner}:{client_id}"))
        if not raw:
            return None
        return Named(raw[b"gen"].decode(), raw[b"token"].decode())

    def describe(self, gen_id: str) -> dict[str, Any] | None:
        mirror = self._mirrors.get(gen_id)
        return None if mirror is None else mirror.describe()

    def keep(self, gen_id: str, key: str, value: dict[str, Any]) -> None:
        self.local.keep(gen_id, key, value)
        raw = json.dumps(value)
        self._later(lambda pipe: pipe.hset(f"sg:gen:{gen_id}", f"x:{key}", raw))

    async def kept(self, gen_id: str, key: str) -> dict[str, Any] | None:
        here = await self.local.kept(gen_id, key)
        if here is not None:
            return here
        raw = await self._read(lambda: self.redis.hget(f"sg:gen:{gen_id}", f"x:{key}"))
        return None if raw is None else dict(json.loads(raw))

    def forget(self, gen_id: str, key: str) -> None:
        self.local.forget(gen_id, key)
        self._later(lambda pipe: pipe.hdel(f"sg:gen:{gen_id}", f"x:{key}"))

    # -- sockets held anywhere ---------------------------------------------------------------

    async def _holder(self, connection_id: str) -> str:
        """The replica holding a socket that is not here; errors.Gone if none does."""
        raw = await self._read(lambda: self.redis.hget(f"sg:conn:{connection_id}", "replica"))
        if raw is None or not await self._alive(raw.decode()):
            raise errors.Gone(f"No connection {connection_id!r}: it closed or never existed.")
        return str(raw.decode())

    async def post(self, connection_id: str, data: bytes) -> None:
        if connection_id in self.connections.by_id:
            return await self.local.post(connection_id, data)
        holder = await self._holder(connection_id)
        encoded = base64.b64encode(data).decode()
        await self._ask(holder, {"op": "post", "conn": connection_id, "data": encoded})

    async def connection(self, connection_id: str) -> dict[str, Any]:
        if connection_id in self.connections.by_id:
            return describe_connection(self.connections.get(connection_id))
        holder = await self._holder(connection_id)
        answer = await self._ask(holder, {"op": "get", "conn": connection_id})
        return dict(answer["value"])

    async def disconnect(self, connection_id: str) -> None:
        if connection_id in self.connections.by_id:
            return await self.local.disconnect(connection_id)
        holder = await self._holder(connection_id)
        await self._ask(holder, {"op": "delete", "conn": connection_id})


def _append(mirror: Mirror, entries: list[Any], last: int) -> int:
    """Entries (id 0-N, {"e": the batch ending at position N}) in order onto the mirror;
    returns the last position appended."""
    for entry_id, fields in entries:
        end = int(entry_id.split(b"-")[1])
        batch = codec.loads_many(fields[b"e"])
        first = end - len(batch) + 1
        if first > last + 1:
            continue  # a gap: cannot be (the writer rewrites from where Redis ends)
        for position, event in enumerate(batch, first):
            if position > last:  # (a rewrite after a Redis restart may repeat a few)
                last = position
                if event is not None:
                    mirror.append(event)
    return last


def _record(gen: Any, replica: str) -> dict[str, str]:
    return {
        "replica": replica,
        "route": gen.route,
        "provider": gen.provider,
        "model": gen.request.model,
        "owner": gen.owner,
        "done": "1" if gen.done else "0",
        "stop_reason": gen.stop_reason or "",
        "input_tokens": str(gen.usage.input_tokens),
        "output_tokens": str(gen.usage.output_tokens),
    }
