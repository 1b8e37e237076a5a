"""examples/deploy: three replicas behind Debian's nginx on one redis-server, used through the
one nginx URL as a client would, with requests spread across the replicas by nginx."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import websockets
from botocore.config import Config

HERE = Path(__file__).resolve().parents[2] / "examples" / "deploy" / "run.py"
spec = importlib.util.spec_from_file_location("deploy_run", HERE)
assert spec is not None and spec.loader is not None
deploy = importlib.util.module_from_spec(spec)
sys.modules["deploy_run"] = deploy  # (its dataclass looks its module up)
spec.loader.exec_module(deploy)

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="needs Debian's nginx (make test installs it)",
)
BODY = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50,
                   "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with deploy.cluster(replicas=3) as c:
        yield c


def client(service: str, url: str) -> Any:
    return boto3.client(
        service, region_name="us-east-1", endpoint_url=url,
        aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
        config=Config(retries={"max_attempts": 1}),
    )  # fmt: skip


def test_nginx_spreads_requests_over_the_three_replicas(cluster: Any) -> None:
    with httpx.Client() as http:
        seen = {http.get(cluster.url + "/healthz").json()["replica"] for _ in range(9)}
    assert len(seen) == 3


def test_the_seed_boto3_stream_through_nginx(cluster: Any) -> None:
    stream = client("bedrock-runtime", cluster.url).invoke_model_with_response_stream(
        modelId="anthropic.claude-3-haiku-20240307-v1:0", body=BODY
    )
    chunks = [json.loads(e["chunk"]["bytes"]) for e in stream["body"]]
    texts = [c["delta"]["text"] for c in chunks if c["type"] == "content_block_delta"]
    assert len(texts) == 50 and chunks[-1]["type"] == "message_stop"


def test_generate_drop_resume_stop_and_connections_through_nginx(cluster: Any) -> None:
    ws_url = cluster.url.replace("http", "ws") + "/ws"

    async def recv(ws: Any) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 30))
        return message

    async def main() -> None:
        first = await websockets.connect(ws_url)
        await first.send(json.dumps({"action": "generate", "id": "d1", "prompt": "go"}))
        start = await recv(first)
        seqs = []
        while len(seqs) < 5:
            m = await recv(first)
            if m["type"] == "delta":
                seqs.append(m["seq"])
        await first.close()
        # The reconnect goes through nginx to whichever replica is next.
        async with websockets.connect(ws_url) as second:
            resume = {"action": "resume", "id": "d1", "after": 5,
                      "resumeToken": start["resumeToken"]}  # fmt: skip
            await second.send(json.dumps(resume))
            while len(seqs) < 10:
                m = await recv(second)
                assert m["type"] == "delta", m
                seqs.append(m["seq"])
            async with websockets.connect(ws_url) as third:  # Stop, from yet another one
                await third.send(json.dumps({"action": "stop", "id": "d1",
                                             "resumeToken": start["resumeToken"]}))  # fmt: skip
                while (m := await recv(second))["type"] == "delta":
                    seqs.append(m["seq"])
            assert m["type"] == "end" and m["stop_reason"] == "cancelled"
            assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) < 200
            # @connections through nginx, to this socket wherever it is held.
            await second.send(json.dumps({"action": "whoami"}))
            cid = (await recv(second))["connectionId"]
            mgmt = client("apigatewaymanagementapi", cluster.url + "/ws")
            for i in range(3):  # three posts, spread over the replicas by nginx
                await asyncio.to_thread(mgmt.post_to_connection, ConnectionId=cid,
                                        Data=f"hello {i}".encode())  # fmt: skip
                assert await asyncio.wait_for(second.recv(), 10) == f"hello {i}"

    asyncio.run(main())
