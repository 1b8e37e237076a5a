"""Replicas sharing one real redis-server (`sluicegate serve --bus redis://...`): a client's
reconnect, its Stop, a handler's @connections call and the introspection route may land on any
replica, and work as on one. Faults: kill -9 of the replica running a generation, and Redis
restarted under running streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import openai
import pytest
import websockets
from botocore.config import Config
from botocore.exceptions import ClientError

from sluicegate.events import StopReason
from tests.conftest import Redis, free_port, redis_server, serve_command, wait_ready, wait_until

CONFIG = "[scripted]\ndelay_ms = 30\nlength = 200\n"
NATURAL: tuple[StopReason, ...] = ("end_turn", "max_tokens")


@dataclass
class Replica:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def management(self) -> Any:
        return boto3.client(
            "apigatewaymanagementapi", region_name="us-east-1", endpoint_url=self.url + "/ws",
            aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
            config=Config(retries={"max_attempts": 1}),
        )  # fmt: skip


@contextlib.contextmanager
def replicas(redis: Redis, n: int, folder: Path) -> Iterator[list[Replica]]:
    config = folder / "replica.toml"
    config.write_text(CONFIG)
    started: list[Replica] = []
    try:
        for i in range(n):
            port = free_port()
            log = (folder / f"replica{i}.log").open("wb")
            cmd = serve_command(port, "--config", str(config), "--bus", redis.url)
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            started.append(Replica(port, proc))
        for r in started:
            wait_ready(r.port, r.proc)
        yield started
    finally:
        for r in started:
            if r.proc.poll() is None:
                r.proc.send_signal(signal.SIGTERM)
        for r in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                r.proc.wait(15)
            if r.proc.poll() is None:
                r.proc.kill()


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Redis, list[Replica]]]:
    with redis_server() as redis:
        folder = Path(tempfile.mkdtemp(prefix="sg-replicas-"))
        with replicas(redis, 3, folder) as three:
            yield redis, three


async def recv(ws: Any) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 30))
    return message


async def start(url: str, gen_id: str, max_tokens: int = 200) -> tuple[Any, dict[str, Any]]:
    ws = await websockets.connect(url)
    await ws.send(json.dumps({"action": "generate", "id": gen_id, "prompt": "go",
                              "max_tokens": max_tokens}))  # fmt: skip
    first = await recv(ws)
    assert first["type"] == "start", first
    return ws, first


async def deltas(ws: Any, n: int) -> list[int]:
    seqs: list[int] = []
    while len(seqs) < n:
        m = await recv(ws)
        if m["type"] == "delta":
            seqs.append(m["seq"])
    return seqs


async def rest(ws: Any) -> tuple[list[int], dict[str, Any]]:
    """Every delta until the end (or an error), and that last message."""
    seqs: list[int] = []
    while True:
        m = await recv(ws)
        if m["type"] == "delta":
            seqs.append(m["seq"])
        elif m["type"] in ("end", "error"):
            return seqs, m


def test_a_generation_dropped_on_a_resumes_on_b_and_replays_on_c(
    cluster: tuple[Redis, list[Replica]],
) -> None:
    _, (a, b, c) = cluster

    async def main() -> None:
        ws, begun = await start(a.ws, "g1")
        seen = await deltas(ws, 10)
        await ws.close()
        async with websockets.connect(b.ws) as wb:
            resume = {"action": "resume", "id": "g1", "after": 10,
                      "resumeToken": begun["resumeToken"]}  # fmt: skip
            await wb.send(json.dumps(resume))
            more, end = await rest(wb)
        assert seen + more == list(range(1, 201))  # exactly the missing ones, then the tail
        assert end["type"] == "end" and end["stop_reason"] in NATURAL
        # The same generation from a third replica, as an EventSource reconnects.
        gid = begun["requestId"]
        async with httpx.AsyncClient(timeout=30) as http:
            events = await http.get(
                f"{c.url}/sluicegate/generations/{gid}/events", headers={"Last-Event-ID": "5"}
            )
            described = [
                (await http.get(f"{r.url}/sluicegate/generations/{gid}")).json() for r in (a, b, c)
            ]
        ids = [int(line[4:]) for line in events.text.splitlines() if line.startswith("id: ")]
        assert events.status_code == 200 and ids[0] == 6 and ids == sorted(set(ids))
        assert "event: message_stop" in events.text
        # And every replica describes it.
        for one in described:
            assert one["id"] == gid and one["done"] is True
            assert one["usage"]["output_tokens"] == 200

    asyncio.run(main())


def test_stop_sent_to_b_stops_the_generation_running_on_a(
    cluster: tuple[Redis, list[Replica]],
) -> None:
    _, (a, b, _) = cluster

    async def main() -> None:
        ws, begun = await start(a.ws, "g2")
        await deltas(ws, 3)
        async with websockets.connect(b.ws) as wb:
            stop = {"action": "stop", "id": "g2", "resumeToken": begun["resumeToken"]}
            await wb.send(json.dumps(stop))
            t0 = time.monotonic()
            _, end = await rest(ws)  # the end arrives on A's socket
            took = time.monotonic() - t0
        await ws.close()
        assert end["type"] == "end" and end["stop_reason"] == "cancelled"
        assert end["usage"]["output_tokens"] < 30 and took < 5
        async with httpx.AsyncClient() as http:
            url = f"{a.url}/sluicegate/generations/{begun['requestId']}"
            described = (await http.get(url)).json()
        # Stopped at once: the model produced no more than what was sent after the stop.
        assert described["produced_tokens"] <= end["usage"]["output_tokens"] + 1
        # A stop without the token, from another connection, is refused on every replica.
        async with websockets.connect(b.ws) as wb:
            await wb.send(json.dumps({"action": "stop", "id": "g2", "resumeToken": "guess"}))
            refused = await recv(wb)
        assert refused["type"] == "error" and refused["code"] == "ForbiddenException"

    asyncio.run(main())


def test_connections_api_on_b_reaches_a_socket_held_by_a(
    cluster: tuple[Redis, list[Replica]],
) -> None:
    _, (a, b, c) = cluster

    async def main() -> None:
        async with websockets.connect(a.ws, user_agent_header="replica-test/1") as wa:
            await wa.send(json.dumps({"action": "whoami"}))
            cid = (await recv(wa))["connectionId"]
            mgmt = b.management()
            await asyncio.to_thread(mgmt.post_to_connection, ConnectionId=cid, Data=b"from B")
            assert await asyncio.wait_for(wa.recv(), 10) == "from B"
            info = await asyncio.to_thread(c.management().get_connection, ConnectionId=cid)
            assert info["Identity"]["UserAgent"] == "replica-test/1"
            await asyncio.to_thread(mgmt.delete_connection, ConnectionId=cid)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(wa.recv(), 10)
        for r in (a, b, c):
            with pytest.raises(ClientError) as gone:
                r.management().post_to_connection(ConnectionId=cid, Data=b"anyone?")
            assert gone.value.response["Error"]["Code"] == "GoneException"

    asyncio.run(main())


def test_kill_9_of_the_running_replica_ends_a_resume_elsewhere_with_interrupted(
    cluster: tuple[Redis, list[Replica]], tmp_path: Path
) -> None:
    redis, (_, b, _) = cluster
    with replicas(redis, 1, tmp_path) as (doomed,):

        async def main() -> None:
            ws, begun = await start(doomed.ws, "k")
            seen = await deltas(ws, 10)
            os.kill(doomed.proc.pid, signal.SIGKILL)
            t0 = time.monotonic()
            async with websockets.connect(b.ws) as wb:
                resume = {"action": "resume", "id": "k", "after": seen[-1],
                          "resumeToken": begun["resumeToken"]}  # fmt: skip
                await wb.send(json.dumps(resume))
                more, last = await rest(wb)
                if last["type"] == "error":
                    end = await recv(wb)
            took = time.monotonic() - t0
            assert seen + more == list(range(1, len(seen) + len(more) + 1))
            assert last["type"] == "error" and last["code"] == "ServiceUnavailableException"
            assert "stopped before it ended" in last["message"]
            assert end["type"] == "end" and end["stop_reason"] == "error"
            assert took < 5 + 3  # the lease (5 s) and a read: bounded, never a hang

        asyncio.run(main())


def test_redis_restarted_under_running_streams(cluster: tuple[Redis, list[Replica]]) -> None:
    redis, (a, b, _) = cluster

    async def main() -> None:
        ws, begun = await start(a.ws, "r1")
        await deltas(ws, 3)
        await ws.send(json.dumps({"action": "whoami"}))
        while (m := await recv(ws))["type"] != "whoami":
            pass
        cid = m["connectionId"]
        redis.kill()
        await asyncio.sleep(0.5)
        # The stream on A keeps streaming without Redis.
        assert len(await deltas(ws, 10)) == 10
        # What needs Redis answers with a clear error in the door's shape.
        with pytest.raises(ClientError) as down:
            await asyncio.to_thread(b.management().post_to_connection, ConnectionId=cid, Data=b"x")
        assert down.value.response["Error"]["Code"] == "ServiceUnavailableException"
        redis.start()
        # After the restart: cross-replica stop works again (the name was written again).
        # A stop that worked has no reply; one that could not yet gets an error: retry.
        async with websockets.connect(b.ws) as wb:
            stop = {"action": "stop", "id": "r1", "resumeToken": begun["resumeToken"]}
            refusals = []
            for _ in range(50):
                await wb.send(json.dumps(stop))
                try:
                    refusals.append(json.loads(await asyncio.wait_for(wb.recv(), 0.5)))
                except TimeoutError:
                    break
                await asyncio.sleep(0.1)
        _, end = await rest(ws)
        await ws.close()
        assert end["stop_reason"] == "cancelled", (end, refusals)
        assert all(r["type"] == "error" for r in refusals)

    try:
        asyncio.run(main())
    finally:
        if not redis.answers():
            redis.start()
    assert wait_until(lambda: redis.answers())


def test_a_background_response_made_on_a_is_followed_and_cancelled_on_b(
    cluster: tuple[Redis, list[Replica]],
) -> None:
    _, (a, b, _) = cluster
    on_a = openai.OpenAI(base_url=a.url + "/v1", api_key="k", max_retries=0)
    on_b = openai.OpenAI(base_url=b.url + "/v1", api_key="k", max_retries=0)
    made = on_a.responses.create(model="m", input="go", background=True)
    time.sleep(0.3)  # a few events in: B starts after the 3rd, then follows A live
    events = list(on_b.responses.retrieve(made.id, stream=True, starting_after=3))
    numbers = [e.sequence_number for e in events]
    assert numbers[0] == 4 and numbers == list(range(4, 4 + len(numbers)))
    assert events[-1].type == "response.completed"
    assert on_b.responses.retrieve(made.id).status == "completed"
    other = on_a.responses.create(model="m", input="go", background=True)
    time.sleep(0.2)
    assert on_b.responses.cancel(other.id).status == "cancelled"
    assert on_a.responses.retrieve(other.id).status == "cancelled"
    stranger = openai.OpenAI(base_url=b.url + "/v1", api_key="someone-else", max_retries=0)
    with pytest.raises(openai.NotFoundError):  # a Response is its owner's, on every replica
        stranger.responses.retrieve(made.id)
