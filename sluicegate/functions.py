"""Lambda functions served locally: invoke a handler, normalise its result, stream its body.

A handler may return `{"statusCode", "headers", "cookies", "body", "isBase64Encoded"}` or any
other value (sent as JSON with status 200, as Lambda does). `body` may be str, bytes, or a sync
or async generator/iterator of str/bytes; a sync one runs in a thread of its own and each piece
crosses to the event loop as soon as it is yielded. A handler that is itself a generator
function streams what it yields, as custom-runtime samples do.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import inspect
import json
import logging
import threading
import traceback
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from sluicegate import errors, handlers

log = logging.getLogger(__name__)
BUFFERED_LIMIT = 6 * 1024 * 1024 + 100  # AWS's figure: 6,291,556 bytes
REQUEST_LIMIT = 6 * 1024 * 1024  # a synchronous invocation's request payload: 6,291,456 bytes


@dataclass
class Result:
    """A handler's answer, with the body still to be read."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    cookies: list[str] = field(default_factory=list)
    body: Any = b""
    base64: bool = False


class FunctionError(Exception):
    """A failure Lambda reports with its own errorType (Sandbox.Timedout, ...)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


def streams(value: Any) -> bool:
    """What a generator-function handler returned: its pieces are the response."""
    return inspect.isgenerator(value) or inspect.isasyncgen(value)


def normalise(value: Any) -> Result:
    if streams(value):
        return Result(headers={"content-type": "application/octet-stream"}, body=value)
    if not isinstance(value, dict) or "statusCode" not in value:
        body = value if isinstance(value, str | bytes) else marshal(value)
        return Result(headers={"content-type": "application/json"}, body=body)
    headers = {str(k).lower(): str(v) for k, v in (value.get("headers") or {}).items()}
    # Transfer-Encoding is the server's business (the seed sets it; the stream is chunked anyway)
    headers.pop("transfer-encoding", None)
    headers.pop("content-length", None)
    return Result(
        status=int(value["statusCode"]),
        headers=headers,
        cookies=[str(c) for c in value.get("cookies") or []],
        body=value.get("body", b""),
        base64=bool(value.get("isBase64Encoded")),
    )


def error_payload(exc: BaseException, request_id: str = "") -> dict[str, Any]:
    """The Lambda error shape: errorMessage, errorType, requestId, stackTrace."""
    if isinstance(exc, errors.ModelTimeout):  # the sandbox's timeout, not the handler's error
        exc = FunctionError("Sandbox.Timedout", f"RequestId: {request_id} Error: {exc.message}")
    return {
        "errorMessage": str(exc),
        "errorType": getattr(exc, "error_type", type(exc).__name__),
        "requestId": request_id,
        "stackTrace": traceback.format_tb(exc.__traceback__),
    }


async def invoke(
    handler: handlers.Handler, event: dict[str, Any], ctx: handlers.LambdaContext
) -> Result:
    return normalise(await handlers.call(handler, event, ctx))


async def chunks(result: Result) -> AsyncGenerator[bytes, None]:
    """The body piece by piece, as the handler produces it; closing this closes the handler's
    generator (GeneratorExit reaches it)."""
    body = result.body
    if isinstance(body, str | bytes):
        yield _bytes(body, result.base64)
        return
    if hasattr(body, "__aiter__"):
        source: AsyncIterator[Any] = body
        async with contextlib.aclosing(_aclosable(source)) as pieces:
            async for piece in pieces:
                yield _bytes(piece, result.base64)
        return
    async with contextlib.aclosing(_threaded(iter(body))) as pieces:
        async for piece in pieces:
            yield _bytes(piece, result.base64)


async def _aclosable(source: AsyncIterator[Any]) -> AsyncGenerator[Any, None]:
    try:
        async for piece in source:
            yield piece
    finally:
        close = getattr(source, "aclose", None)
        if close is not None:
            await close()


async def until_deadline(
    pieces: AsyncGenerator[bytes, None], context: handlers.LambdaContext
) -> AsyncGenerator[bytes, None]:
    """Stop a body at the function's timeout, as Lambda does (errors.ModelTimeout). The body
    runs as its function (`handlers.function_scope`), threads it starts too."""
    async with contextlib.aclosing(pieces):
        while True:
            try:
                with handlers.function_scope(context.function_name):
                    async with asyncio.timeout(context.get_remaining_time_in_millis() / 1000):
                        piece = await anext(pieces)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise errors.ModelTimeout(
                    f"Task timed out after {context.timeout_seconds:.2f} seconds"
                ) from None
            yield piece


async def collect(
    result: Result, context: handlers.LambdaContext, limit: int = BUFFERED_LIMIT
) -> bytes:
    """The whole body (BUFFERED mode), by the function's deadline; over the limit is Lambda's
    response-size error."""
    out = bytearray()
    async with contextlib.aclosing(until_deadline(chunks(result), context)) as pieces:
        async for piece in pieces:
            out += piece
            if len(out) > limit:
                raise FunctionError(
                    "Function.ResponseSizeTooLarge",
                    f"Response payload size exceeded maximum allowed payload size ({limit} bytes).",
                )
    return bytes(out)


async def invocation_payload(value: Any, context: handlers.LambdaContext) -> bytes:
    """The Invoke API's payload for what a handler returned: the JSON of the value (a body
    still to be read is read into it), or the pieces a generator function yields."""
    result = normalise(value)
    if streams(value):
        return await collect(result, context)
    if isinstance(value, dict) and not isinstance(result.body, str | bytes):
        value = {**value, "body": (await collect(result, context)).decode("utf-8", "replace")}
    return marshal(value).encode()


def marshal(value: Any) -> str:
    """A handler's result as JSON; one that has none is Lambda's Runtime.MarshalError."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise FunctionError("Runtime.MarshalError", f"Unable to marshal response: {exc}") from None


def _bytes(piece: Any, is_base64: bool) -> bytes:
    if isinstance(piece, bytes | bytearray):
        return bytes(piece)
    text = json.dumps(piece) if isinstance(piece, dict | list) else str(piece)
    return base64.b64decode(text) if is_base64 else text.encode("utf-8")


async def _threaded(it: Iterator[Any]) -> AsyncGenerator[Any, None]:
    """Run a sync iterator in its own thread; pieces reach the loop as they are yielded."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()

    def put(kind: str, value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

    def run() -> None:
        try:
            for piece in it:
                put("piece", piece)
                if stop.is_set():
                    break
            put("end", None)
        except BaseException as exc:
            put("error", exc)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # GeneratorExit inside the handler's generator, on its own thread

    # The thread runs in this context: the body sees its function's AWS_LAMBDA_FUNCTION_NAME.
    scope = contextvars.copy_context()
    threading.Thread(target=scope.run, args=(run,), name="sluicegate-fn-body", daemon=True).start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
