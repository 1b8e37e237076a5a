"""The Anthropic Messages API: `POST /v1/messages` (streamed as server-sent events or not),
`POST /v1/messages/count_tokens`, and `GET /sluicegate/generations/{id}/events`: any
generation's events as this door's stream, resumable with `Last-Event-ID` (or `?after=N`).

Each streamed event carries its index in the generation's log as its SSE `id`. Without an
`api_key` any key is accepted; with one, `x-api-key` or `Authorization: Bearer` must hold it.
Errors before the first byte are Anthropic's JSON error with the status that API gives its
error type; after it, an `event: error`, and the stream ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sluicegate import errors
from sluicegate.codecs import jsonbody, sse
from sluicegate.events import Event
from sluicegate.generation import Generation
from sluicegate.routes.aws import address, key_owner, presented_key
from sluicegate.routes.sse import HEADERS, Render, sse_response
from sluicegate.routes.streaming import (
    answering,
    gateway_of,
    read_limited,
    wait_or_disconnect,
)
from sluicegate.translate import anthropic

ROUTE = "anthropic"
# The status the Messages API answers each error type with (errors.py's are Bedrock's).
STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

Endpoint = Callable[[Request], Awaitable[Response]]


class Unauthenticated(errors.SluicegateError):
    status = 401
    anthropic = "authentication_error"
    openai = "authentication_error"


PING = sse.encode(jsonbody.dumps({"type": "ping"}), event="ping")


def error_response(exc: errors.SluicegateError) -> JSONResponse:
    headers = {} if exc.retry_after is None else {"retry-after": str(exc.retry_after)}
    status = STATUS.get(exc.anthropic, exc.status)
    return JSONResponse(anthropic.error_json(exc), status, headers=headers)


def authenticate(request: Request) -> str:
    """The caller's key checked against the configured api_key (any key without one); returns
    the owner, the same digest of the key that the Bearer scheme gives on every door."""
    owner = key_owner(request, gateway_of(request).settings.api_key)
    if owner is None:
        raise Unauthenticated("invalid x-api-key" if presented_key(request) else
                              "x-api-key header is required")  # fmt: skip
    return owner


async def read_body(request: Request) -> bytes:
    return await read_limited(request, gateway_of(request).settings.max_body_bytes)


# -- POST /v1/messages ---------------------------------------------------------------------------


@answering(error_response)
async def messages(request: Request) -> Response:
    owner = authenticate(request)
    chat, stream = anthropic.parse_request(await read_body(request))
    gateway = gateway_of(request)
    gen = await gateway.start(chat, route=ROUTE, owner=owner, caller=address(request))
    headers = {"request-id": gen.id}
    if stream:
        every = gateway.settings.sse_heartbeat_seconds
        return sse_response(gen, stream_events(), PING, every, headers)
    await wait_or_disconnect(request, gen)
    return JSONResponse(anthropic.message_json(finished_log(gen)), headers=headers)


def finished_log(gen: Generation) -> Sequence[Event]:
    """The log of an ended generation; an error in it (or an early end) is raised."""
    for event in gen.log:
        failure = anthropic.early_end(event)
        if failure is not None:
            raise failure
    return gen.log


def stream_events(after: int = 0) -> Render:
    """This door's events for a generation, each with its log index as id, from after `after`
    (the events up to it are translated but not sent, so a resume sees exactly what a
    continuous stream would have); the stream ends at message_stop or an error."""

    def render(i: int, event: Event) -> tuple[list[bytes], bool]:
        out, last = anthropic.wire_events(event)
        if i <= after:
            return [], last
        return [sse.encode(data, event=kind, id=str(i)) for kind, data in out], last

    return render


# -- POST /v1/messages/count_tokens --------------------------------------------------------------


@answering(error_response)
async def count_tokens(request: Request) -> Response:
    authenticate(request)
    chat = anthropic.parse_count(await read_body(request))
    return JSONResponse({"input_tokens": await gateway_of(request).count_tokens(chat)})


# -- GET /sluicegate/generations/{id}/events -------------------------------------------------------


@answering(error_response)
async def generation_events(request: Request) -> Response:
    """Like the introspection route, the generation's id (96 random bits) is the only
    credential: a browser's EventSource cannot send headers."""
    gateway = gateway_of(request)
    gen = await gateway.bus.find(request.path_params["id"])  # here or on another replica
    if gen is None:
        raise errors.NotFound("No such generation (or it ended long ago).")
    after = resume_point(request, len(gen.log))
    if gen.done and after >= last_id(gen.log):
        # Nothing left to send: 204 is what tells an EventSource to stop reconnecting.
        return Response(status_code=204, headers=HEADERS)
    # A watcher leaving ends only its own stream, never the generation.
    every = gateway.settings.sse_heartbeat_seconds
    return sse_response(gen, stream_events(after), PING, every, cancels=False)


def last_id(log: Sequence[Event]) -> int:
    """The id of the event this door's stream ends with, for an ended generation's log."""
    return next((i for i, e in enumerate(log, 1) if anthropic.api_events(e)[1]), len(log))


def resume_point(request: Request, logged: int) -> int:
    """The last event id the client has: `Last-Event-ID` (what EventSource sends when it
    reconnects) over `?after=`, 0 without either."""
    given = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    if not (given.isascii() and given.isdigit()):
        raise errors.ValidationError(f"The last event id must be an integer >= 0, not {given!r}.")
    if int(given) > logged:
        raise errors.ValidationError(f"Event {given} is beyond the {logged} events so far.")
    return int(given)


def routes() -> list[Route]:
    return [
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        Route("/sluicegate/generations/{id}/events", generation_events, methods=["GET"]),
    ]
