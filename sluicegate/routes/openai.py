"""The OpenAI doors: Chat Completions, Models and Responses, streamed as server-sent events.

With an `api_key` configured every call needs `Authorization: Bearer <key>` (401
`invalid_api_key` otherwise); without one any key is accepted. Errors before the first byte are
OpenAI's JSON shape with its status; after it, in-band (a `data: {"error": ...}` chunk on Chat
Completions, `response.failed` on Responses). Every event carries an SSE `id:`: the generation
log index on Chat Completions, the `sequence_number` on Responses.

Responses are stored (unless `store` is false) and found again by id, by the same caller only.
A background response keeps generating when its client leaves; `GET /v1/responses/{id}?stream=
true&starting_after=N` (or `Last-Event-ID: N`) replays the events after N from the log and
follows it live; `POST /v1/responses/{id}/cancel` stops the generation.
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sluicegate import errors
from sluicegate.codecs import jsonbody, sse
from sluicegate.events import EARLY_STOPS, ChatRequest, Event
from sluicegate.gateway import Gateway
from sluicegate.generation import Generation
from sluicegate.routes.aws import address, caller
from sluicegate.routes.sse import Render, sse_response
from sluicegate.routes.streaming import (
    gateway_of,
    read_limited,
    wait_or_disconnect,
)
from sluicegate.translate import openai, openai_fields
from sluicegate.translate.openai_responses import (
    ResponseCall,
    ResponseMeta,
    ResponseStream,
    parse_request,
    replay,
)

ROUTE = "openai"
STARTED = int(time.time())  # the `created` of every model

Endpoint = Callable[[Request], Awaitable[Response]]


def openai_door(endpoint: Endpoint) -> Endpoint:
    """Check the key, then answer any SluicegateError in OpenAI's shape."""

    @functools.wraps(endpoint)
    async def wrapped(request: Request) -> Response:
        try:
            authenticate(request)
            return await endpoint(request)
        except errors.SluicegateError as exc:
            return error_response(exc)

    return wrapped


def error_response(exc: errors.SluicegateError) -> JSONResponse:
    headers = {} if exc.retry_after is None else {"retry-after": str(exc.retry_after)}
    return JSONResponse(
        openai_fields.error_json(exc), openai_fields.status_of(exc), headers=headers
    )


def authenticate(request: Request) -> None:
    key = gateway_of(request).settings.api_key
    if not key:
        return
    sent = request.headers.get("authorization", "")
    if not hmac.compare_digest(sent.encode(), f"Bearer {key}".encode()):
        what = "Incorrect API key provided" if sent else "You didn't provide an API key"
        raise openai_fields.InvalidApiKey(
            f"{what}: send the server's api_key as the header `Authorization: Bearer <key>`."
        )


async def read_body(request: Request) -> bytes:
    return await read_limited(request, gateway_of(request).settings.max_body_bytes)


async def start(request: Request, chat: ChatRequest) -> Generation:
    owner = caller(request.headers.get("authorization", ""))
    return await gateway_of(request).start(chat, route=ROUTE, owner=owner, caller=address(request))


async def finished(request: Request, gen: Generation) -> Sequence[Event]:
    """The log of a generation waited for to its end; an early end raises as its error."""
    await wait_or_disconnect(request, gen)
    if gen.error is not None:
        raise gen.error
    if gen.stop_reason in EARLY_STOPS:
        raise openai_fields.early_end(gen.stop_reason or "error")
    return gen.log


def suffix(gen: Generation) -> str:
    """The generation id's random part, for the ids this door shows."""
    return gen.id.rsplit("_", 1)[-1]


def headers(gen: Generation) -> dict[str, str]:
    return {"x-request-id": gen.id}


# A comment line with no blank line after it. The openai SDK's decoder keeps the last event id
# across events (as the spec says) and so turns a blank line after a bare comment (`:\n\n`)
# into an empty event once any `id:` was sent, which it then fails to parse as JSON. A comment
# line alone dispatches nothing, in every parser, and still keeps proxies from timing out.
BEAT = sse.comment()


def heartbeat(request: Request) -> tuple[bytes, float]:
    return BEAT, gateway_of(request).settings.sse_heartbeat_seconds


def following(request: Request, gen: Generation, render: Render) -> Response:
    """An SSE answer whose client only watches: leaving stops the sending, not the generation."""
    beat, every = heartbeat(request)
    return sse_response(gen, render, beat, every, headers(gen), cancels=False)


# -- Chat Completions ---------------------------------------------------------------------------


async def chat_completions(request: Request) -> Response:
    call = openai.parse_chat(await read_body(request))
    gen = await start(request, call.request)
    completion_id, created, model = "chatcmpl-" + suffix(gen), int(time.time()), call.request.model
    if not call.stream:
        events = await finished(request, gen)
        body = openai.completion_json(completion_id, created, model, events)
        return JSONResponse(body, headers=headers(gen))
    chat = openai.ChatStream(completion_id, created, model, call.include_usage)
    beat, every = heartbeat(request)
    return sse_response(gen, chat_events(chat), beat, every, headers(gen))


def chat_events(chat: openai.ChatStream) -> Render:
    """Chat Completions chunks, each with its event's log index as id."""

    def render(i: int, event: Event) -> tuple[list[bytes], bool]:
        return [sse.encode(data, id=str(i)) for data in chat.feed(event)], chat.ended

    return render


# -- Models ---------------------------------------------------------------------------------------


def model_ids(request: Request) -> list[str]:
    return [model_id for model_id, *_ in gateway_of(request).settings.model_choices()]


async def list_models(request: Request) -> Response:
    return JSONResponse(openai.models_json(model_ids(request), STARTED))


async def get_model(request: Request) -> Response:
    model_id = request.path_params["model_id"]
    settings = gateway_of(request).settings
    if model_id not in model_ids(request) and settings.provider_for(model_id) is None:
        raise openai_fields.ModelNotFound(
            f"The model '{model_id}' does not exist: no route serves it."
        )
    return JSONResponse(openai.model_json(model_id, STARTED))


# -- Responses ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stored:
    meta: ResponseMeta
    gen: Any  # a Generation here, or another replica's (bus/base.Followable, with wait())
    owner: str


def kept_meta(stored: Stored) -> dict[str, Any]:
    """What another replica needs to answer for this Response (the bus keeps it)."""
    call = stored.meta.call
    return {
        "id": stored.meta.id, "created_at": stored.meta.created_at, "owner": stored.owner,
        "model": call.request.model, "max_tokens": call.request.max_tokens,
        "temperature": call.request.temperature, "top_p": call.request.top_p,
        "instructions": call.instructions, "max_output_tokens": call.max_output_tokens,
        "stream": call.stream, "background": call.background, "store": call.store,
        "metadata": call.metadata,
    }  # fmt: skip


def from_kept(kept: dict[str, Any], gen: Any) -> Stored:
    request = ChatRequest(
        kept["model"], (), kept["max_tokens"], temperature=kept["temperature"],
        top_p=kept["top_p"],
    )  # fmt: skip
    names = ("instructions", "max_output_tokens", "stream", "background", "store", "metadata")
    call = ResponseCall(request, **{name: kept[name] for name in names})
    return Stored(ResponseMeta(kept["id"], kept["created_at"], call), gen, kept["owner"])


class Responses:
    """The Responses API over stored responses (each one generation)."""

    def __init__(self) -> None:
        self.stored: OrderedDict[str, Stored] = OrderedDict()

    def keep(self, gateway: Gateway, stored: Stored) -> None:
        """Remember a response for as long as the gateway keeps its generation."""
        self.stored[stored.meta.id] = stored
        for key in [k for k, s in self.stored.items() if s.gen.id not in gateway.generations]:
            del self.stored[key]

    async def find(self, request: Request) -> Stored:
        """A stored Response: here, or one another replica created (the bus has its request;
        its generation is followed from there)."""
        response_id = request.path_params["response_id"]
        found = self.stored.get(response_id)
        if found is None and response_id.startswith("resp_"):
            bus = gateway_of(request).bus
            gen_id = "msg_bdrk_" + response_id.removeprefix("resp_")
            kept = await bus.kept(gen_id, "response")
            gen = await bus.find(gen_id) if kept is not None else None
            found = from_kept(kept, gen) if kept is not None and gen is not None else None
        owner = caller(request.headers.get("authorization", ""))
        if found is None or found.owner != owner:
            raise errors.NotFound(f"Response with id '{response_id}' not found.")
        return found

    async def create(self, request: Request) -> Response:
        call = parse_request(await read_body(request))
        gen = await start(request, call.request)
        kept = dataclasses.replace(call, request=call.request.without_prompt())  # no prompt held
        stored = Stored(ResponseMeta("resp_" + suffix(gen), int(time.time()), kept), gen, gen.owner)
        if call.store:
            self.keep(gateway_of(request), stored)
            gateway_of(request).bus.keep(gen.id, "response", kept_meta(stored))
        if call.stream:
            render = response_events(stored.meta, -1)
            if call.background:
                return following(request, gen, render)
            beat, every = heartbeat(request)
            return sse_response(gen, render, beat, every, headers(gen))
        if not call.background:
            await finished(request, gen)
        return snapshot(stored)

    async def retrieve(self, request: Request) -> Response:
        stored = await self.find(request)
        if request.query_params.get("stream", "").lower() not in ("true", "1"):
            return snapshot(stored)
        after = starting_after(request)
        return following(request, stored.gen, response_events(stored.meta, after))

    async def cancel(self, request: Request) -> Response:
        stored = await self.find(request)
        if not stored.meta.call.background:
            raise openai_fields.InvalidRequest(
                "Only responses created with background=true can be cancelled."
            )
        stored.gen.cancel("cancelled")
        await stored.gen.wait()
        if replay(stored.meta, stored.gen.log).status != "cancelled":
            raise openai_fields.InvalidRequest(
                "Cannot cancel a response that has already finished."
            )
        return snapshot(stored)

    async def delete(self, request: Request) -> Response:
        stored = await self.find(request)
        stored.gen.cancel("cancelled")
        self.stored.pop(stored.meta.id, None)
        gateway_of(request).bus.forget(stored.gen.id, "response")
        body = {"id": stored.meta.id, "object": "response.deleted", "deleted": True}
        return JSONResponse(body, headers=headers(stored.gen))


def snapshot(stored: Stored) -> JSONResponse:
    body = replay(stored.meta, stored.gen.log).snapshot()
    return JSONResponse(body, headers=headers(stored.gen))


def starting_after(request: Request) -> int:
    """Where a resumed stream starts: after `starting_after`, else after `Last-Event-ID`."""
    raw = request.query_params.get("starting_after") or request.headers.get("last-event-id")
    if raw is None:
        return -1
    try:
        return int(raw)
    except ValueError:
        raise openai_fields.invalid_type("starting_after", "an integer", raw) from None


def response_events(meta: ResponseMeta, after: int) -> Render:
    """The numbered Responses events from the log, those after `after` (to the log's end)."""
    stream = ResponseStream(meta)

    def render(_: int, event: Event) -> tuple[list[bytes], bool]:
        return [
            sse.encode(jsonbody.dumps(data), event=data["type"], id=str(n))
            for data in stream.feed(event)
            if (n := data["sequence_number"]) > after
        ], False

    return render


def routes() -> list[Route]:
    responses = Responses()
    one = "/v1/responses/{response_id}"

    def r(path: str, endpoint: Endpoint, method: str) -> Route:
        return Route(path, openai_door(endpoint), methods=[method])

    return [
        r("/v1/chat/completions", chat_completions, "POST"),
        r("/v1/models", list_models, "GET"),
        r("/v1/models/{model_id:path}", get_model, "GET"),
        r("/v1/responses", responses.create, "POST"),
        r(one, responses.retrieve, "GET"),
        r(one, responses.delete, "DELETE"),
        r(one + "/cancel", responses.cancel, "POST"),
    ]
