"""Bedrock Runtime: InvokeModel(+WithResponseStream), Converse(+Stream) and CountTokens.

Without an `api_key`, any SigV4 signature or Bearer key is accepted; with one, signatures are
verified (routes/aws.py). Errors before the first byte are Bedrock's own: status,
`x-amzn-ErrorType` and `{"message"}`; after it, an exception frame in the event stream.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sluicegate import errors
from sluicegate.codecs import eventstream, jsonbody
from sluicegate.events import EARLY_STOPS, ChatRequest, Event, MessageStop
from sluicegate.generation import Generation
from sluicegate.routes.aws import address, caller, error_response, require_signature
from sluicegate.routes.streaming import (
    StreamResponse,
    answering,
    gateway_of,
    read_limited,
    wait_or_disconnect,
)
from sluicegate.translate import anthropic, converse, families
from sluicegate.translate.families.base import Chunks

EVENTSTREAM = "application/vnd.amazon.eventstream"
ROUTE = "bedrock"

Endpoint = Callable[[Request], Awaitable[Response]]


async def read_body(request: Request) -> bytes:
    """The request body, refused as soon as it passes the configured limit (25 MB), then
    checked against the api_key's signature when one is configured."""
    body = await read_limited(request, gateway_of(request).settings.max_body_bytes)
    require_signature(request, body)
    return body


async def start(request: Request, parse: Callable[[str, bytes], ChatRequest]) -> Generation:
    model_id = request.path_params["model_id"]
    return await generate(request, parse(model_id, await read_body(request)))


async def generate(request: Request, chat: ChatRequest) -> Generation:
    return await gateway_of(request).start(
        chat,
        route=ROUTE,
        owner=caller(request.headers.get("authorization", "")),
        caller=address(request),
    )


async def invocation(request: Request) -> families.Invocation:
    """An InvokeModel body, read as the model id's family reads it."""
    return families.parse(request.path_params["model_id"], await read_body(request))


async def finished_events(request: Request, gen: Generation) -> Sequence[Event]:
    """The whole log of a non-streaming call; an error in it becomes the error response."""
    await wait_or_disconnect(request, gen)
    if gen.error is not None:
        raise gen.error
    if gen.stop_reason in EARLY_STOPS:  # no stop reason of Bedrock's says "ended early"
        raise anthropic.early_stop_error(gen.stop_reason, gen.usage.output_tokens)
    return gen.log


def _disconnect(gen: Generation) -> Callable[[], object]:
    return lambda: gen.cancel("disconnected")


def _headers(gen: Generation, **extra: str) -> dict[str, str]:
    return {"x-amzn-RequestId": gen.id, **extra}


# -- InvokeModel / InvokeModelWithResponseStream ---------------------------------------------


@answering(error_response)
async def invoke(request: Request) -> Response:
    call = await invocation(request)
    gen = await generate(request, call.chat)
    events = await finished_events(request, gen)
    u, m = gen.usage, gen.metrics
    headers = _headers(
        gen,
        **{
            "X-Amzn-Bedrock-Input-Token-Count": str(u.input_tokens),
            "X-Amzn-Bedrock-Output-Token-Count": str(u.output_tokens),
            "X-Amzn-Bedrock-Invocation-Latency": str(m.total_ms),
        },
    )
    return JSONResponse(call.family.whole(call.chat, events), headers=headers)


@answering(error_response)
async def invoke_stream(request: Request) -> Response:
    call = await invocation(request)
    gen = await generate(request, call.chat)
    headers = _headers(gen, **{"X-Amzn-Bedrock-Content-Type": "application/json"})
    encode = chunk_frames(call.family.chunks(call.chat))
    return StreamResponse(frames(gen, encode), EVENTSTREAM, headers, _disconnect(gen))


async def frames(
    gen: Generation, encode: Callable[[Event], bytes | None]
) -> AsyncGenerator[bytes, None]:
    """The event stream of a generation; a failure ends it with an exception frame."""
    async for _, event in gen.follow():
        failure = anthropic.early_end(event)
        if failure is not None:
            yield eventstream.exception(failure.aws_event, failure.message)
            return
        frame = encode(event)
        if frame is not None:
            yield frame


def chunk_frames(chunks: Chunks) -> Callable[[Event], bytes | None]:
    """A `chunk` frame per chunk of the model's family; the last one (at MessageStop) carries
    `amazon-bedrock-invocationMetrics`, as on Bedrock."""

    def encode(event: Event) -> bytes | None:
        out = chunks.feed(event)
        if isinstance(event, MessageStop) and out:
            out[-1]["amazon-bedrock-invocationMetrics"] = anthropic.invocation_metrics(event)
        return b"".join(map(chunk_frame, out)) or None

    return encode


def chunk_frame(data: dict[str, Any]) -> bytes:
    raw = base64.b64encode(jsonbody.dumpb(data))
    return eventstream.event("chunk", converse.dumps({"bytes": raw.decode()}))


# -- Converse / ConverseStream -----------------------------------------------------------------


@answering(error_response)
async def converse_once(request: Request) -> Response:
    gen = await start(request, converse.parse_body)
    events = await finished_events(request, gen)
    return JSONResponse(converse.response_json(events), headers=_headers(gen))


@answering(error_response)
async def converse_stream(request: Request) -> Response:
    gen = await start(request, converse.parse_body)
    return StreamResponse(frames(gen, converse_frame), EVENTSTREAM, _headers(gen), _disconnect(gen))


def converse_frame(event: Event) -> bytes | None:
    out = converse.stream_event(event)
    return None if out is None else eventstream.event(out[0], converse.dumps(out[1]))


# -- CountTokens ---------------------------------------------------------------------------------


@answering(error_response)
async def count_tokens(request: Request) -> Response:
    chat = converse.count_input(request.path_params["model_id"], await read_body(request))
    return JSONResponse({"inputTokens": await gateway_of(request).count_tokens(chat)})


def unknown_operation(path: str, method: str) -> JSONResponse:
    return error_response(
        errors.UnknownOperation(f"No operation matches {method} {path}: check the endpoint URL.")
    )


def routes() -> list[Route]:
    def r(suffix: str, endpoint: Any) -> Route:
        return Route("/model/{model_id:path}/" + suffix, endpoint, methods=["POST"])

    return [
        r("invoke", invoke),
        r("invoke-with-response-stream", invoke_stream),
        r("converse", converse_once),
        r("converse-stream", converse_stream),
        r("count-tokens", count_tokens),
    ]
