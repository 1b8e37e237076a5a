"""A zero-delay Bedrock Runtime upstream for bench/bedrock_upstream.py: raw asyncio and the
standard library only, so that it costs as little as an upstream can and runs in any venv.

`POST /model/{id}/converse-stream` answers a ConverseStream event stream (messageStart, 64
contentBlockDelta, contentBlockStop, messageStop, metadata); `.../invoke-with-response-stream`
the Anthropic Messages chunks as Bedrock streams them (message_start, content_block_start, 64
content_block_delta, content_block_stop, message_delta, message_stop with
amazon-bedrock-invocationMetrics), each a `chunk` event of base64 JSON. The frames are made once;
every request gets the same bytes, chunked, on a keep-alive connection. No signature is checked.

    python bench/mock_bedrock.py PORT
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import sys
import zlib

DELTAS = 64


def frame(event_type: str, payload: dict[str, object]) -> bytes:
    """One event stream message (application/vnd.amazon.eventstream), string headers only."""
    headers = b""
    for name, value in ((":event-type", event_type), (":content-type", "application/json"),
                        (":message-type", "event")):  # fmt: skip
        raw = value.encode()
        headers += bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(raw)) + raw
    body = json.dumps(payload, separators=(",", ":")).encode()
    total = 16 + len(headers) + len(body)
    prelude = struct.pack(">II", total, len(headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + body
    return message + struct.pack(">I", zlib.crc32(message))


def chunk(data: dict[str, object]) -> bytes:
    raw = base64.b64encode(json.dumps(data, separators=(",", ":")).encode()).decode()
    return frame("chunk", {"bytes": raw})


USAGE = {"inputTokens": 8, "outputTokens": DELTAS, "totalTokens": DELTAS + 8}
CONVERSE = b"".join(
    [
        frame("messageStart", {"role": "assistant"}),
        *[
            frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": f"tok{i} "}})
            for i in range(DELTAS)
        ],
        frame("contentBlockStop", {"contentBlockIndex": 0}),
        frame("messageStop", {"stopReason": "max_tokens"}),
        frame("metadata", {"usage": USAGE, "metrics": {"latencyMs": 1}}),
    ]
)
MESSAGE: dict[str, object] = {
    "id": "msg_bdrk_mock",
    "type": "message",
    "role": "assistant",
    "model": "mock",
    "content": [],
    "stop_reason": None,
    "stop_sequence": None,
    "usage": {"input_tokens": 8, "output_tokens": 1},
}
METRICS = {
    "inputTokenCount": 8,
    "outputTokenCount": DELTAS,
    "invocationLatency": 1,
    "firstByteLatency": 1,
}
INVOKE = b"".join(
    [
        chunk({"type": "message_start", "message": MESSAGE}),
        chunk({"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}),
        *[
            chunk(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": f"tok{i} "},
                }
            )
            for i in range(DELTAS)
        ],
        chunk({"type": "content_block_stop", "index": 0}),
        chunk(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                "usage": {"output_tokens": DELTAS},
            }
        ),
        chunk({"type": "message_stop", "amazon-bedrock-invocationMetrics": METRICS}),
    ]
)


def response(body: bytes) -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/vnd.amazon.eventstream\r\n"
        b"x-amzn-requestid: mock\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    return head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


ANSWERS = {b"converse-stream": response(CONVERSE), b"invoke-with-response-stream": response(INVOKE)}
READY = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            path = head.split(b" ", 2)[1]
            writer.write(ANSWERS.get(path.rsplit(b"/", 1)[-1], READY))
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
