"""`sluicegate serve --log-format json`: one JSON access-log line per request, from a real
process driven by stock clients (boto3, the openai and anthropic SDKs, httpx, websockets)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import boto3
import httpx
import openai
import pytest
import websockets
from botocore.config import Config

from tests.conftest import free_port, serve_command, wait_ready, wait_until

KEY = "sk-sluicegate-test-0123456789abcdef"
MODEL = "scripted-access"


class Process:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, err: Path) -> None:
        self.proc, self.url, self.err = proc, url, err
        self.stdout = b""

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        self.stdout += out
        return self.stdout.decode()


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    folder = tmp_path_factory.mktemp("access")
    config = folder / "sg.toml"
    config.write_text(f'api_key = "{KEY}"\n[scripted]\ndelay_ms = 2\nlength = 400\n')
    port = free_port()
    err = folder / "stderr"
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            [*serve_command(port, "--config", str(config), "--log-format", "json")],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, "COLUMNS": "200"},
            start_new_session=True,
        )
    server = Process(proc, f"http://127.0.0.1:{port}", err)
    try:
        wait_ready(port, proc)
        yield server
    finally:
        server.stop()


def bedrock(url: str) -> Any:
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id="AKIDACCESSLOG",
        aws_secret_access_key=KEY,
        config=Config(retries={"max_attempts": 1}),
    )


def drive(url: str) -> None:
    """One request on each door, a refused one, and a stream the client leaves."""
    client = bedrock(url)
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5,
            "messages": [{"role": "user", "content": "bedrock door"}]}  # fmt: skip
    out = client.invoke_model_with_response_stream(modelId=MODEL, body=json.dumps(body))
    assert len(list(out["body"])) > 3
    out = client.converse_stream(
        modelId=MODEL,
        messages=[{"role": "user", "content": [{"text": "converse door"}]}],
        inferenceConfig={"maxTokens": 6},
    )
    assert len(list(out["stream"])) > 3
    oa = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    chunks = oa.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "openai door"}],
        max_tokens=7,
        stream=True,
    )
    assert len(list(chunks)) > 3
    an = anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0)
    with an.messages.stream(
        model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "anthropic door"}]
    ) as stream:
        assert stream.get_final_message().usage.output_tokens == 8
    refused = httpx.post(
        url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        headers={"authorization": "Bearer not-the-key"},
    )
    assert refused.status_code in (401, 403)
    # A long stream the client leaves after its first chunks.
    left = {"model": MODEL, "messages": [{"role": "user", "content": "leave"}], "stream": True}
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json=left, headers={"authorization": f"Bearer {KEY}"}
    ) as r:
        assert r.status_code == 200
        data = (line for line in r.iter_lines() if line.startswith("data:"))
        for _ in range(4):  # the role, then some text
            next(data)
    asyncio.run(websocket(url))


async def websocket(url: str) -> None:
    ws_url = url.replace("http", "ws", 1) + f"/ws?token={KEY}"
    async with websockets.connect(ws_url) as ws:
        ask = {"action": "generate", "id": "w1", "model": MODEL, "prompt": "ws", "max_tokens": 4}
        await ws.send(json.dumps(ask))
        while json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] != "end":
            pass


def access_lines(stdout: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    return [line for line in lines if line["logger"] == "sluicegate.access"]


def test_each_request_is_one_json_line_with_its_generation(logged: Process) -> None:
    drive(logged.url)
    # The stream that was left ends (disconnected) on its own, before the server stops.
    assert wait_until(lambda: _live(logged.url) == 0, timeout=20)
    stdout = logged.stop()
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]  # all JSON
    access = access_lines(stdout)
    by_door: dict[str, list[dict[str, Any]]] = {}
    for line in access:
        by_door.setdefault(line["door"], []).append(line)
    expected = {"bedrock": 5, "converse": 6, "openai": 7, "anthropic": 8, "ws": 4}
    for door, tokens in expected.items():
        served = [g for g in by_door[door] if g.get("output_tokens") == tokens]
        assert len(served) == 1, (door, by_door[door])
        line = served[0]
        assert line["model"] == MODEL and line["provider"] == "scripted"
        assert line["stop_reason"] == "max_tokens" and line["input_tokens"] > 0
        assert line["request_id"].startswith("msg_")
        assert line["caller"] == "127.0.0.1"
        assert isinstance(line["first_token_ms"], int)
        assert line["duration_ms"] >= 0 and line["error"] is None
        assert line["status"] == (None if door == "ws" else 200)
    assert by_door["bedrock"][0]["caller_id"].startswith("id:")  # the access key id, digested
    assert by_door["openai"][0]["caller_id"].startswith("bearer:")
    refused = [g for g in by_door["openai"] if g["status"] in (401, 403)]
    assert len(refused) == 1 and "model" not in refused[0]
    left = [g for g in by_door["openai"] if g.get("stop_reason") == "disconnected"]
    assert len(left) == 1 and 0 < left[0]["output_tokens"] < 400
    assert [g["status"] for g in by_door["ws"] if "model" not in g] == [101]
    assert any(line["door"] == "metrics" and line["path"] == "/readyz" for line in access)
    assert len(lines) > len(access)  # uvicorn's own lines come as JSON too
    everything = stdout + logged.err.read_text()
    assert KEY not in everything and "not-the-key" not in everything
    assert "authorization" not in everything.lower()


def _live(url: str) -> int:
    metrics = httpx.get(url + "/metrics").text
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in metrics.splitlines()
        if line.startswith("sluicegate_active_generations{")
    )
