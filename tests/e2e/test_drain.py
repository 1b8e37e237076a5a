"""SIGTERM drains `sluicegate serve`: it stops accepting, lets running streams finish within
`drain_seconds`, then ends the rest with each door's terminal error (ServiceUnavailable), and
gives WebSockets their `end` before 1001. A client can tell a drain from a crash."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import anthropic
import boto3
import openai
import pytest
import websockets
from botocore.config import Config
from botocore.exceptions import EventStreamError

from tests.conftest import free_port, serve_command, wait_ready

DRAIN = 2.0
CONFIG = f"drain_seconds = {DRAIN}\n[scripted]\ndelay_ms = 50\nlength = 400\n"


def bedrock(url: str) -> Any:
    return boto3.client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=url,
        aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
        config=Config(read_timeout=60, retries={"max_attempts": 1}),
    )  # fmt: skip


def body(max_tokens: int) -> str:
    return json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip


class Outcome:
    """What one client saw: how many text pieces, and how its stream ended."""

    def __init__(self) -> None:
        self.pieces = 0
        self.ended: str = "running"
        self.started = threading.Event()


def bedrock_stream(url: str, max_tokens: int, out: Outcome) -> None:
    r = bedrock(url).invoke_model_with_response_stream(modelId="m", body=body(max_tokens))
    try:
        for event in r["body"]:
            chunk = json.loads(event["chunk"]["bytes"])
            if chunk["type"] == "content_block_delta":
                out.pieces += 1
                out.started.set()
            elif chunk["type"] == "message_stop":
                out.ended = "finished"
    except EventStreamError as exc:
        out.ended = f"error {exc.response['Error']['Code']}: {exc.response['Error']['Message']}"


def anthropic_stream(url: str, out: Outcome) -> None:
    client = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)
    try:
        with client.messages.stream(
            model="m", max_tokens=400, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            for _ in stream.text_stream:
                out.pieces += 1
                out.started.set()
        out.ended = "finished"
    except anthropic.APIStatusError as exc:
        out.ended = f"error {exc.body}"


def openai_stream(url: str, out: Outcome) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    try:
        for chunk in client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                out.pieces += 1
                out.started.set()
        out.ended = "finished"
    except openai.APIError as exc:
        out.ended = f"error {exc.body}"


async def ws_session(url: str, out: Outcome, messages: list[dict[str, Any]]) -> None:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"action": "generate", "id": "g", "prompt": "hi"}))
        try:
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                messages.append(message)
                if message["type"] == "delta":
                    out.pieces += 1
                    out.started.set()
        except websockets.ConnectionClosed as closed:
            out.ended = f"closed {closed.rcvd.code if closed.rcvd else None}"


def test_sigterm_drains_then_ends_each_stream_in_its_doors_shape(tmp_path: Path) -> None:
    config = tmp_path / "drain.toml"
    config.write_text(CONFIG)
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    cmd = serve_command(port, "--config", str(config))
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(port, proc)
        outcomes = {name: Outcome() for name in ("short", "bedrock", "anthropic", "openai", "ws")}
        ws_messages: list[dict[str, Any]] = []
        threads = [
            threading.Thread(target=bedrock_stream, args=(url, 30, outcomes["short"])),
            threading.Thread(target=bedrock_stream, args=(url, 400, outcomes["bedrock"])),
            threading.Thread(target=anthropic_stream, args=(url, outcomes["anthropic"])),
            threading.Thread(target=openai_stream, args=(url, outcomes["openai"])),
            threading.Thread(
                target=lambda: asyncio.run(
                    ws_session(f"ws://127.0.0.1:{port}/ws", outcomes["ws"], ws_messages)
                )
            ),
        ]
        for t in threads:
            t.start()
        for name, outcome in outcomes.items():
            assert outcome.started.wait(30), f"{name} never streamed"
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        time.sleep(0.3)
        with pytest.raises(OSError):  # no longer accepting
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        for t in threads:
            t.join(30)
        proc.wait(30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()

    # The short one (30 words at 50 ms) finished within the drain, as if nothing happened.
    assert outcomes["short"].ended == "finished" and outcomes["short"].pieces == 30
    # The long ones ran on through the drain, then ended with their door's terminal error.
    for name in ("bedrock", "anthropic", "openai", "ws"):
        assert outcomes[name].pieces >= DRAIN / 0.05 * 0.5, (name, outcomes[name].pieces)
        assert outcomes[name].pieces < 400
    assert outcomes["bedrock"].ended.startswith("error serviceUnavailableException: The server")
    assert "overloaded_error" in outcomes["anthropic"].ended
    assert "shut down" in outcomes["openai"].ended
    # The WebSocket got the error, then its `end`, then 1001 (going away), not 1012 or 1006.
    tail = [m["type"] for m in ws_messages if m["type"] != "delta"]
    assert tail == ["start", "error", "end"], tail
    assert ws_messages[-2]["code"] == "ServiceUnavailableException"
    assert ws_messages[-1]["stop_reason"] == "error"
    assert outcomes["ws"].ended == "closed 1001"
    assert took < DRAIN + 8, took
