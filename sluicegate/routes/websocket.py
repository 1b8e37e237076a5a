"""The WebSocket API, API Gateway style: routes chosen by `$request.body.action`.

Built-in routes: `generate` (stream a generation as start / delta / end messages), `stop`,
`resume` (after a reconnect: the deltas after `after`, then the live tail), `ping`, `whoami`.
Several generations may run at once on one connection. When a connection drops, its
generations keep going for a grace period so that the client can resume them, then they are
cancelled as `disconnected`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from sluicegate import errors, handlers
from sluicegate.bus.base import Followable, Named
from sluicegate.bus.memory import Connection, Connections
from sluicegate.codecs import jsonbody
from sluicegate.events import ErrorEvent, MessageStart, MessageStop, TextDelta
from sluicegate.gateway import Gateway
from sluicegate.generation import Generation
from sluicegate.routes.aws import caller
from sluicegate.translate import apigateway
from sluicegate.translate import websocket as wire

log = logging.getLogger(__name__)
ROUTE = "websocket"
Body = dict[str, Any]


@dataclass(eq=False)
class Live:
    """A generation started over the WebSocket API, and the connection it streams to."""

    client_id: str
    gen: Followable  # here, or on another replica (bus/base.py)
    conn: Connection | None
    forwarder: asyncio.Task[None] | None = None
    grace: asyncio.TimerHandle | None = None
    # Issued in `start`: what another connection shows to resume or stop this generation.
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def check(self, conn: Connection, body: Body) -> None:
        """Only the connection that streams it, or one with its resumeToken, may touch it."""
        if conn is self.conn:
            return
        token = body.get("resumeToken")
        if not isinstance(token, str) or not hmac.compare_digest(token, self.token):
            raise errors.Forbidden(
                f"Generation {self.client_id!r} belongs to another connection: "
                "send the resumeToken its start message carried."
            )


class WebSocketApi:
    """The endpoint and its built-in routes; one per app."""

    def __init__(
        self,
        gateway: Gateway,
        connections: Connections,
        *,
        grace_seconds: float = 30.0,
        max_running: int = 16,
        route_key: str = "$request.body.action",
        user_routes: dict[str, handlers.Handler] | None = None,
        stage: str = "ws",
        handler_timeout: float = 29.0,
        idle_timeout: float | None = 600.0,
        max_lifetime: float | None = 7200.0,
        max_queued_bytes: int | None = 4 * 1024 * 1024,
    ) -> None:
        self.gateway = gateway
        self.connections = connections
        self.grace_seconds = grace_seconds
        self.max_running = max_running
        self.user_routes = user_routes or {}
        self.stage = stage
        self.handler_timeout = handler_timeout
        self._tasks: set[asyncio.Future[None]] = set()
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime
        self.max_queued_bytes = max_queued_bytes
        self._sweeper: asyncio.Task[None] | None = None
        self.route_path = _route_path(route_key)
        self.live: dict[tuple[str, str], Live] = {}
        self.actions: dict[str, Callable[[Connection, Body], Awaitable[None]]] = {
            "generate": self.generate,
            "stop": self.stop,
            "resume": self.resume,
            "ping": self.ping,
            "whoami": self.whoami,
        }

    def route(self) -> WebSocketRoute:
        return WebSocketRoute(f"/{self.stage}", self.endpoint)

    # -- the connection ----------------------------------------------------------------------

    async def endpoint(self, ws: WebSocket) -> None:
        client = ws.client.host if ws.client else ""
        conn = Connection(_owner(ws), client, ws.headers.get("user-agent", ""))
        conn.max_queued_bytes = self.max_queued_bytes
        conn.verified = _shows_key(ws, self.gateway.settings.api_key)
        if not await self._connect(conn, ws):
            await ws.close(1008)  # before accept: the client sees the handshake refused (403)
            return
        await ws.accept()
        self.gateway.bus.register(conn)
        self._start_sweeper()
        writer = asyncio.create_task(_write(conn, ws))
        closed = (1005, "")  # the client's close code and reason
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    closed = (message.get("code", 1005), message.get("reason") or "")
                    break
                conn.touch()
                text = message.get("text")
                await self.dispatch(conn, text if text is not None else message.get("bytes", b""))
                # A burst of queued messages would be served back to back without a pause:
                # give every other stream its turn after each one.
                await asyncio.sleep(0)
        except WebSocketDisconnect as exc:
            closed = (exc.code, exc.reason or "")
        finally:
            if conn.closed:  # the server closed it (limits, DELETE @connections, shutdown)
                closed = (conn.close_code, conn.close_reason)
            self.gateway.bus.unregister(conn)
            writer.cancel()
            self._detach(conn)
            if "$disconnect" in self.user_routes:
                self._spawn(self._invoke(conn, "$disconnect", "DISCONNECT", closed=closed))

    async def dispatch(self, conn: Connection, raw: str | bytes) -> None:
        """Route one message; every failure is answered, and the connection stays usable."""
        try:
            body = jsonbody.loads(raw)
        except jsonbody.BadJSON as exc:
            self._default(
                conn, raw, wire.error(None, "BadRequest", f"Messages must be JSON: this one {exc}.")
            )
            return
        key = _select(body, self.route_path)
        if isinstance(key, str) and key in self.user_routes:
            self._spawn(self._invoke(conn, key, "MESSAGE", raw))
            return
        action = self.actions.get(key) if isinstance(key, str) else None
        if action is None:
            detail = f"No route for action {key!r}; built-in: {', '.join(self.actions)}."
            self._default(conn, raw, wire.error(_id(body), "RouteNotFound", detail))
            return
        try:
            await action(conn, body)
        except errors.SluicegateError as exc:
            _reply(conn, wire.error_from(_id(body), exc))

    def _default(self, conn: Connection, raw: str | bytes, otherwise: Body) -> None:
        """Non-JSON and unmatched messages go to $default, or get an error message."""
        if "$default" in self.user_routes:
            self._spawn(self._invoke(conn, "$default", "MESSAGE", raw))
        else:
            _reply(conn, otherwise)

    def _start_sweeper(self) -> None:
        limits = [t for t in (self.idle_timeout, self.max_lifetime) if t is not None]
        if limits and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(min(1.0, min(limits) / 4)))

    async def _sweep(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self.connections.close_expired(self.idle_timeout, self.max_lifetime)

    # -- user (Lambda-style) routes ----------------------------------------------------------

    async def _connect(self, conn: Connection, ws: WebSocket) -> bool:
        if "$connect" not in self.user_routes:
            return True
        event = self._event(conn, "$connect", "CONNECT", headers=ws.headers, query=ws.query_params)
        try:
            result = await self._call("$connect", event)
        except Exception:
            log.exception("$connect handler failed; refusing the connection")
            return False
        return not apigateway.refused(result)

    async def _invoke(
        self, conn: Connection, key: str, kind: str, raw: str | bytes = "", **extra: Any
    ) -> None:
        """Run a route's handler; a failure gets API Gateway's own message to the client."""
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        event = self._event(conn, key, kind, body=text, **extra)
        request_id = event["requestContext"]["requestId"]
        try:
            await self._call(key, event)
        except errors.ModelTimeout as exc:
            log.error("route %s: %s", key, exc.message)
            failed = apigateway.integration_error("Endpoint request timed out", conn.id, request_id)
            _reply(conn, failed)
        except Exception:
            log.exception("route %s handler failed", key)
            _reply(conn, apigateway.integration_error("Internal server error", conn.id, request_id))

    async def _call(self, key: str, event: Body) -> Any:
        context = handlers.LambdaContext(f"ws-{key.strip('$')}", self.handler_timeout)
        return await handlers.call(self.user_routes[key], event, context)

    def _event(self, conn: Connection, key: str, kind: str, **extra: Any) -> Body:
        domain = self.gateway.settings.domain_name
        return apigateway.ws_event(conn, key, kind, domain=domain, stage=self.stage, **extra)

    def _spawn(self, work: Awaitable[None]) -> None:
        def finished(t: asyncio.Future[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("WebSocket route task failed", exc_info=t.exception())

        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(finished)

    # -- built-in routes ---------------------------------------------------------------------

    async def generate(self, conn: Connection, body: Body) -> None:
        if not conn.verified:
            raise errors.Forbidden(
                "This server has an api_key: connect with `Authorization: Bearer <key>`, or "
                "from a browser with ?token=<key> in the URL, to generate."
            )
        client_id = _id(body) or _new_id()
        if not isinstance(client_id, str):
            raise errors.ValidationError("id must be a string.")
        running = self.live.get((conn.owner, client_id))
        if running is not None and not running.gen.done:
            raise errors.ValidationError(f"Generation {client_id!r} is still running.")
        if len(self._of(conn)) >= self.max_running:
            raise errors.Throttled(
                f"This connection has {self.max_running} generations running, its limit: "
                "wait for one to end, or stop one."
            )
        request = wire.parse_generate(body)
        gen = await self.gateway.start(
            request, route=ROUTE, owner=conn.owner, caller=conn.source_ip
        )
        live = Live(client_id, gen, conn)
        self._forget_ended()
        self.live[(conn.owner, client_id)] = live
        self.gateway.bus.name(conn.owner, client_id, Named(gen.id, live.token))
        self._forward(live, conn, 0)

    def _forget_ended(self) -> None:
        """Ended generations stay resumable for as long as the gateway keeps them, no longer."""
        kept = self.gateway.generations
        for key, live in list(self.live.items()):
            if live.gen.done and live.gen.id not in kept:
                del self.live[key]

    async def stop(self, conn: Connection, body: Body) -> None:
        client_id = _id(body)
        targets = [await self._find(conn, client_id)] if client_id is not None else self._of(conn)
        for live in targets:
            live.check(conn, body)
            if not live.gen.cancel("cancelled") and client_id is not None:
                why = f"Generation {client_id!r} already ended ({live.gen.stop_reason})."
                _reply(conn, wire.error(client_id, "GenerationEnded", why))

    async def resume(self, conn: Connection, body: Body) -> None:
        live = await self._find(conn, _id(body))
        live.check(conn, body)
        after = body.get("after", 0)
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise errors.ValidationError("after must be the last seq received (an integer >= 0).")
        _log_position(live.gen, after)  # a bad `after` is refused before the stream is touched
        if live.grace is not None:
            live.grace.cancel()
            live.grace = None
        if live.forwarder is not None:
            live.forwarder.cancel()
        live.conn = conn
        self._forward(live, conn, after)
        self.gateway.bus.attached(live.gen.id)

    def let_go(self, gen_id: str) -> None:
        """A connection on another replica resumed this generation: stop streaming it here
        (as a resume on this replica does), and leave its grace period to that replica."""
        for live in self.live.values():
            if live.gen.id == gen_id:
                if live.forwarder is not None:
                    live.forwarder.cancel()
                if live.grace is not None:
                    live.grace.cancel()
                    live.grace = None
                live.conn = None

    async def ping(self, conn: Connection, body: Body) -> None:
        _reply(conn, {"type": "pong"})

    async def whoami(self, conn: Connection, body: Body) -> None:
        _reply(conn, {"type": "whoami", "connectionId": conn.id})

    # -- streaming a generation to a connection ----------------------------------------------

    def _forward(self, live: Live, conn: Connection, after: int) -> None:
        live.forwarder = asyncio.create_task(self._stream(live, conn, after))

    async def _stream(self, live: Live, conn: Connection, after: int) -> None:
        gen, cid = live.gen, live.client_id
        start, seq = _log_position(gen, after)
        with contextlib.suppress(errors.Gone):
            async for _, event in gen.follow(start):
                if isinstance(event, TextDelta):
                    seq += 1
                    if seq <= after:
                        continue  # another replica's log, still catching up to `after`
                    conn.send(
                        jsonbody.dumps({"type": "delta", "id": cid, "seq": seq, "text": event.text})
                    )
                elif isinstance(event, MessageStop):
                    conn.send(jsonbody.dumps(wire.end_message(cid, gen.stop_reason, event)))
                elif isinstance(event, MessageStart):
                    conn.send(jsonbody.dumps(wire.start_message(cid, event, live.token)))
                elif isinstance(event, ErrorEvent):
                    exc = errors.from_event(event.code, event.message)
                    conn.send(jsonbody.dumps(wire.error_from(cid, exc)))

    def _detach(self, conn: Connection) -> None:
        """The connection dropped: keep its generations for a grace period, then cancel them."""
        loop = asyncio.get_running_loop()
        for live in self._of(conn):
            if live.forwarder is not None:
                live.forwarder.cancel()
            live.conn = None
            live.grace = loop.call_later(self.grace_seconds, self._expire, live)

    def _expire(self, live: Live) -> None:
        live.grace = None
        if live.conn is None:
            live.gen.cancel("disconnected")

    def _of(self, conn: Connection) -> list[Live]:
        return [v for v in self.live.values() if v.conn is conn and not v.gen.done]

    async def _find(self, conn: Connection, client_id: Any) -> Live:
        """A generation of this owner's by its id: here, or named on the bus by a connection
        on another replica (then it is streamed from there)."""
        if not isinstance(client_id, str):
            raise errors.ValidationError("id must be the string id of a generation.")
        live = self.live.get((conn.owner, client_id))
        if live is not None:
            return live
        bus = self.gateway.bus
        named = await bus.find_named(conn.owner, client_id)
        gen = await bus.find(named.gen_id) if named is not None else None
        if named is None or gen is None:
            raise errors.NotFound(f"No generation {client_id!r} for this owner.")
        live = Live(client_id, gen, None, token=named.token)
        self.live[(conn.owner, client_id)] = live
        return live


def _log_position(gen: Followable, after: int) -> tuple[int, int]:
    """Where streaming resumes after the `after`-th delta: the log index, and the deltas
    before it. A generation here refuses an `after` beyond what it sent; another replica's
    may not have reached it yet (it sent some deltas before its log reached us): its stream
    starts at what is here and skips deltas up to `after`."""
    if after == 0:
        return 0, 0
    seen = 0
    for i, event in enumerate(gen.log):
        if isinstance(event, TextDelta):
            seen += 1
            if seen == after:
                return i + 1, seen
    if isinstance(gen, Generation):
        raise errors.ValidationError(f"after={after} is beyond the {seen} deltas sent so far.")
    return len(gen.log), seen


async def _write(conn: Connection, ws: WebSocket) -> None:
    """The connection's only writer: messages leave in the order they were queued. If one
    cannot be sent (not the client leaving), the socket closes with 1011, never silently."""
    try:
        while (message := await conn.outbound.get()) is not None:
            conn.taken(message)
            if isinstance(message, str):
                await ws.send_text(message)
            else:
                await ws.send_bytes(message)
    except WebSocketDisconnect:
        return
    except Exception:
        log.exception("WebSocket %s: a message could not be sent; closing with 1011", conn.id)
        conn.close(1011, "the server failed to send a message", now=True)
    with contextlib.suppress(Exception):
        await ws.close(conn.close_code, conn.close_reason or None)


def _reply(conn: Connection, message: Body) -> None:
    with contextlib.suppress(errors.Gone):
        conn.send(jsonbody.dumps(message))


def _route_path(expression: str) -> list[str]:
    prefix = "$request.body."
    if not expression.startswith(prefix):
        raise ValueError(f"route selection expression must start with {prefix!r}: {expression!r}")
    return expression[len(prefix) :].split(".")


def _select(body: Any, path: list[str]) -> Any:
    for key in path:
        body = body.get(key) if isinstance(body, dict) else None
    return body


def _id(body: Any) -> Any:
    return body.get("id") if isinstance(body, dict) else None


def _new_id() -> str:
    return "gen_" + secrets.token_hex(8)


def _shows_key(ws: WebSocket, api_key: str | None) -> bool:
    """The connection showed the api_key (in the header, or as ?token= since browsers cannot
    set headers on a WebSocket); always true without a key."""
    if api_key is None:
        return True
    sent = ws.headers.get("authorization", "")
    sent = sent[7:] if sent.lower().startswith("bearer ") else ws.query_params.get("token", "")
    return hmac.compare_digest(sent.encode(), api_key.encode())


def _owner(ws: WebSocket) -> str:
    """Who owns the connection's generations (resume needs the same owner)."""
    token = ws.query_params.get("token")
    known = caller(ws.headers.get("authorization", "") or (f"Bearer {token}" if token else ""))
    return known or ws.query_params.get("owner", "anonymous")


async def close_all(api: WebSocketApi, seconds: float = 2.0) -> None:
    """At shutdown, once generations have ended: let each one's last messages (its `end`)
    be queued, then close every socket with 1001 (going away) and wait for the closes."""
    forwarders = [v.forwarder for v in api.live.values() if v.forwarder and not v.forwarder.done()]
    if forwarders:
        await asyncio.wait(forwarders, timeout=seconds)
    for conn in list(api.connections.by_id.values()):
        conn.close(1001, "the server is shutting down")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while api.connections.by_id and loop.time() < deadline:  # noqa: ASYNC110 (a registry)
        await asyncio.sleep(0.02)


def cancel_all(api: WebSocketApi) -> None:
    if api._sweeper is not None:
        api._sweeper.cancel()
    for live in api.live.values():
        live.gen.cancel("cancelled")
        if live.grace is not None:
            live.grace.cancel()
