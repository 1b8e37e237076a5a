"""A zero-delay OpenAI-compatible upstream for bench/relay.py: raw asyncio, so that it costs as
little as an upstream can. Every POST answers a Chat Completions stream of 64 content chunks,
a finish chunk, a usage chunk and [DONE]; a request for the model "paced" gets its chunks
20 ms apart.

    python bench/mock_openai.py PORT
"""

from __future__ import annotations

import asyncio
import json
import sys

CHUNKS = 64
PACE_S = 0.020


def frame(event: bytes) -> bytes:
    """One piece of a chunked HTTP body."""
    return b"%x\r\n%s\r\n" % (len(event), event)


def chunk(payload: dict[str, object]) -> bytes:
    return frame(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")


def choice(delta: dict[str, str], finish: str | None = None) -> dict[str, object]:
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "mock",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


CONTENT = [chunk(choice({"content": f"tok{i} "})) for i in range(CHUNKS)]
HEAD = chunk(choice({"role": "assistant", "content": ""}))
TAIL = (
    chunk(choice({}, "stop"))
    + chunk(
        {
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "mock",
            "choices": [],
            "usage": {"prompt_tokens": 8, "completion_tokens": CHUNKS, "total_tokens": CHUNKS + 8},
        }
    )
    + frame(b"data: [DONE]\n\n")
    + b"0\r\n\r\n"
)
RESPONSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
)
MODELS = json.dumps({"object": "list", "data": [{"id": "mock", "object": "model"}]}).encode()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 request: its head and its (Content-Length) body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length) if length else b""


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head, body = await read_request(reader)
            if head.startswith(b"GET"):
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(MODELS), MODELS)
                )
                await writer.drain()
                continue
            paced = b'"paced"' in body
            writer.write(RESPONSE_HEAD + HEAD)
            for piece in CONTENT:
                writer.write(piece)
                if paced:
                    await writer.drain()
                    await asyncio.sleep(PACE_S)
            writer.write(TAIL)
            await writer.drain()
            if b"connection: close" in head.lower():
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
