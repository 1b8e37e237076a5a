"""Streaming responses that notice a client going away, at any moment.

Starlette's StreamingResponse only learns of a disconnect when a send fails, and abandons its
iterator without closing it. Here a watcher reads `http.disconnect` from the start, so a client
that leaves while the request is queued or between tokens cancels its generation at once, and the
body iterator is always closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from sluicegate import errors
from sluicegate.gateway import Gateway
from sluicegate.generation import Generation

Endpoint = Callable[[Request], Awaitable[Response]]


def answering(
    render: Callable[[errors.SluicegateError], Response],
) -> Callable[[Endpoint], Endpoint]:
    """A door's endpoints raise SluicegateError; `render` answers it in the door's shape."""

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def wrapped(request: Request) -> Response:
            try:
                return await endpoint(request)
            except errors.SluicegateError as exc:
                return render(exc)

        return wrapped

    return decorate


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refused (PayloadTooLarge) as soon as it is known to pass `limit`: by
    its Content-Length before reading anything, else as the chunks come."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(len(body), limit)
    return bytes(body)


def too_large(size: int, limit: int) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(
        f"The request body ({size:,} bytes or more) is over the {limit:,}-byte limit: send less."
    )


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def wait_or_disconnect(request: Request, gen: Generation) -> None:
    """Wait for a generation to end; cancel it as `disconnected` if the client leaves first."""
    watcher = asyncio.create_task(_until_disconnect(request.receive))
    finished = asyncio.create_task(gen.wait())
    try:
        done, _ = await asyncio.wait({watcher, finished}, return_when=asyncio.FIRST_COMPLETED)
        if watcher in done:
            gen.cancel("disconnected")
        await finished
    finally:
        watcher.cancel()
        finished.cancel()


class StreamResponse(Response):
    """Sends each chunk as it comes (chunked encoding). A disconnect calls `on_disconnect`
    (e.g. cancels the generation, whose stream then ends), or by default stops the sending at
    once; either way `chunks` is closed."""

    def __init__(
        self,
        chunks: AsyncGenerator[bytes, None],
        media_type: str | None,
        headers: Mapping[str, str] | None = None,
        on_disconnect: Callable[[], object] | None = None,
        status_code: int = 200,
    ) -> None:
        super().__init__(status_code=status_code, media_type=media_type, headers=headers)
        # No content-length: the body goes out chunked, each piece as soon as it exists.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.chunks = chunks
        self.on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = asyncio.current_task()
        assert sender is not None
        gone = self.on_disconnect or sender.cancel
        watcher = asyncio.create_task(_until_disconnect(receive))
        watcher.add_done_callback(lambda t: t.cancelled() or gone())
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async with contextlib.aclosing(self.chunks):
                async for chunk in self.chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away mid-send
            gone()
        except asyncio.CancelledError:
            if not watcher.done() or self.on_disconnect is not None:
                raise  # not ours: the server is stopping
        finally:
            watcher.cancel()
