"""The `openai` provider in front of a real OpenAI-compatible server nobody here wrote:
llama-cpp-python's own server, on the embedded model file, in a process of its own.

It is started with one change: llama.cpp's extra weight buffers off where AMX kernels are built
in (as sluicegate loads models: see providers/local.model_params), or it dies at its first
decode on the AMX machines this project runs on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import openai
import pytest

from sluicegate.config import Route as ModelRoute
from sluicegate.config import Settings, UpstreamSettings
from sluicegate.gateway import Gateway
from sluicegate.providers.local import embedded_model_path
from sluicegate.providers.openai import OpenAIProvider
from tests.conftest import Server, free_port, serve, stop, wait_until

LAUNCH = (
    "import runpy, llama_cpp.llama_cpp as low\n"
    "from sluicegate.providers.local import model_params\n"
    "low.llama_model_default_params = model_params\n"
    "runpy.run_module('llama_cpp.server', run_name='__main__')\n"
)


@pytest.fixture(scope="module")
def peer() -> Iterator[str]:
    port = free_port()
    args = ["--model", str(embedded_model_path()), "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", "2048", "--n_threads", "2", "--interrupt_requests", "false"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, "llama-cpp-python's server exited"
        try:
            return httpx.get(url + "/v1/models", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        assert wait_until(up, timeout=120)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


@pytest.fixture(scope="module")
def relay(peer: str) -> Iterator[Server]:
    upstream = UpstreamSettings(type="openai", base_url=peer + "/v1")
    settings = Settings(
        providers={"peer": upstream},
        routes=[ModelRoute(match="*", provider="peer", model="smollm2")],
    )
    gw = serve(Gateway(settings, {"peer": OpenAIProvider("peer", upstream)}))
    yield gw
    stop(gw)


def test_a_bedrock_stream_from_llama_cpp_pythons_server(relay: Server) -> None:
    prompt = "Write a long essay about rivers."
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 24, "temperature": 0,
            "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
    response = relay.bedrock().invoke_model_with_response_stream(
        modelId="anthropic.claude-3-haiku-20240307-v1:0", body=json.dumps(body)
    )
    chunks = [json.loads(e["chunk"]["bytes"]) for e in response["body"]]
    deltas = [c["delta"]["text"] for c in chunks if c["type"] == "content_block_delta"]
    assert len(deltas) >= 5 and "".join(deltas).strip()
    delta = next(c for c in chunks if c["type"] == "message_delta")
    assert delta["delta"]["stop_reason"] == "max_tokens"
    metrics = chunks[-1]["amazon-bedrock-invocationMetrics"]
    # This peer ignores stream_options.include_usage: output tokens are its chunks counted,
    # a token each (its server sends one per token); input tokens it never says.
    assert metrics["outputTokenCount"] == len(deltas) == 24 and metrics["inputTokenCount"] == 0


def test_the_openai_door_relays_it_and_a_client_that_leaves_closes_the_upstream(
    relay: Server,
) -> None:
    client = openai.OpenAI(base_url=relay.url + "/v1", api_key="k", max_retries=0)
    texts = [
        c.choices[0].delta.content
        for c in client.chat.completions.create(
            model="gpt-4o-mini",
            max_tokens=16,
            temperature=0,
            stream=True,
            messages=[{"role": "user", "content": "Say hello."}],
        )
        if c.choices and c.choices[0].delta.content
    ]
    assert len(texts) >= 3
    before = set(relay.gateway.generations)
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        max_tokens=1000,
        stream=True,
        messages=[{"role": "user", "content": "Write a long essay about rivers."}],
    )
    for i, _ in enumerate(stream):
        if i >= 5:
            break
    stream.close()
    [gen] = [g for k, g in relay.gateway.generations.items() if k not in before]
    assert wait_until(lambda: gen.done, timeout=10)
    assert gen.stop_reason == "disconnected" and gen.usage.output_tokens < 100
