"""A dead engine behind a real server: streams in flight and queued end with an exception
frame, new requests get 503 ServiceUnavailableException, /readyz says why, /healthz still
answers; and `sluicegate serve` exits at once, with a message, when the warm-up fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError, EventStreamError

from sluicegate.config import Settings
from sluicegate.gateway import Gateway
from sluicegate.providers.engine import EngineConfig
from sluicegate.providers.local import LocalProvider, embedded_model_path
from tests.conftest import Server, serve, stop, wait_until
from tests.providers.test_engine_faults import Faulty

BODY = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 400,
    "messages": [{"role": "user", "content": "Tell a very long story about a lighthouse."}],
}


@pytest.fixture
def failing() -> Iterator[tuple[Server, Faulty]]:
    provider = LocalProvider(embedded_model_path(), EngineConfig(n_ctx=1024, n_parallel=1))
    provider.engine.close()
    engine = Faulty(provider.model, EngineConfig(n_ctx=1024, n_parallel=1))
    provider.engine = engine
    server = serve(Gateway(Settings(), {"local": provider}))
    yield server, engine
    stop(server)
    engine.close()


def read(stream: Any) -> tuple[int, str]:
    """Deltas read before the stream ended, and how it ended."""
    n = 0
    try:
        for event in stream["body"]:
            n += json.loads(event["chunk"]["bytes"])["type"] == "content_block_delta"
    except EventStreamError as exc:
        return n, str(exc)
    return n, "ended normally"


def test_streams_end_with_an_error_and_new_requests_get_503(
    failing: tuple[Server, Faulty],
) -> None:
    server, engine = failing
    client = server.bedrock()
    assert httpx.get(server.url + "/readyz").status_code == 200
    model = "anthropic.claude-3-haiku-20240307-v1:0"
    running = client.invoke_model_with_response_stream(modelId=model, body=json.dumps(BODY))
    queued = client.invoke_model_with_response_stream(modelId=model, body=json.dumps(BODY))
    assert wait_until(lambda: engine.active() == (1, 1), timeout=30)
    first = next(iter(running["body"]))  # the running stream has begun
    assert json.loads(first["chunk"]["bytes"])["type"] == "message_start"
    engine.fail = True
    with ThreadPoolExecutor(2) as pool:
        ends = list(pool.map(read, [running, queued]))
    for _, how in ends:
        assert "modelStreamErrorException" in how and "failed" in how
    assert not engine.alive
    with pytest.raises(ClientError) as refused:
        client.invoke_model(modelId=model, body=json.dumps(BODY))
    assert refused.value.response["Error"]["Code"] == "ServiceUnavailableException"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert "restart" in refused.value.response["Error"]["Message"]
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 503 and "injected" in ready.json()["providers"]["local"]
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    figures = httpx.get(server.url + "/sluicegate/engine").json()
    assert figures["alive"] == 0 and figures["running_sequences"] == 0


def test_serve_exits_with_a_message_when_the_warm_up_fails() -> None:
    script = (
        "import sys\n"
        "from sluicegate.providers import llamacpp\n"
        "def broken(self, ctx, batch):\n"
        "    raise RuntimeError('injected: llama_decode returned -3')\n"
        "llamacpp.Llama._decode = broken\n"
        "from sluicegate.cli import main\n"
        "sys.argv = ['sluicegate', 'serve', '--port', '1', '--weights', 'file']\n"
        "main()\n"
    )
    env = {**os.environ, "COLUMNS": "300"}  # one line per message
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    out = done.stdout + done.stderr
    assert done.returncode == 4, out
    assert "could not start" in out and "warm-up failed" in out and "injected" in out
