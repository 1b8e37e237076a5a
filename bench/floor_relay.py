"""The least a Python relay can do, for bench/relay.py to show this machine's ceiling beside
sluicegate: uvloop and asyncio streams, one pooled keep-alive connection per stream to the
upstream, each upstream event parsed (orjson) and written again as a new chunk. No config, no
limits, no errors, no cancel, no metrics: a reference, not a gateway.

    python bench/floor_relay.py PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys

import orjson
import uvloop
from mock_openai import read_request

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
    b"cache-control: no-cache\r\nconnection: close\r\n\r\n"
)
Pool = list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]


def relayed(data: bytes) -> bytes:
    """One upstream event as a new one (the content carried over)."""
    if data == b"[DONE]":
        return b"data: [DONE]\n\n"
    choices = orjson.loads(data).get("choices") or [{}]
    choice = {
        "index": 0,
        "delta": {"content": choices[0].get("delta", {}).get("content")},
        "finish_reason": choices[0].get("finish_reason"),
    }
    event = {"id": "relay", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
    return b"data: " + orjson.dumps(event) + b"\n\n"


def frames(buffer: bytearray) -> tuple[list[bytes], bool]:
    """The complete chunks of a chunked body at the head of `buffer` (taken out of it)."""
    events, ended = [], False
    while (line := buffer.find(b"\r\n")) >= 0:
        size = int(buffer[:line], 16)
        if size == 0:
            ended = True
            break
        if len(buffer) < line + size + 4:
            break
        payload = bytes(buffer[line + 2 : line + 2 + size])
        del buffer[: line + size + 4]
        for event in payload.split(b"\n\n"):
            if event.startswith(b"data: "):
                events.append(relayed(event[6:]))
    return events, ended


async def handle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: int, pool: Pool
) -> None:
    try:
        head, body = await read_request(reader)
        if head.startswith(b"GET"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            return
        while pool and pool[-1][0].at_eof():
            pool.pop()
        up_reader, up_writer = (
            pool.pop() if pool else await asyncio.open_connection("127.0.0.1", upstream)
        )
        out = orjson.dumps(orjson.loads(body))
        up_writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: upstream\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(out), out)
        )
        await up_reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD)
        buffer, ended = bytearray(), False
        while not ended and (data := await up_reader.read(65536)):
            buffer += data
            events, ended = frames(buffer)
            if events:
                joined = b"".join(events)
                writer.write(b"%x\r\n%s\r\n" % (len(joined), joined))
        writer.write(b"0\r\n\r\n")
        if ended:
            pool.append((up_reader, up_writer))
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int, upstream: int) -> None:
    pool: Pool = []
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, upstream, pool), "127.0.0.1", port, backlog=4096
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
