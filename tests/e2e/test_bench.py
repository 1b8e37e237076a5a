"""`sluicegate bench URL` against a real server, every door: what it counts is what was sent."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluicegate import bench
from sluicegate.config import Route, Settings
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider
from tests.conftest import Server, free_port, serve, stop

TOKENS = 12


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    settings = Settings(routes=[Route(match="*", provider="scripted")])
    s = serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.004)}))
    yield s
    stop(s)


@pytest.mark.parametrize("door", bench.DOORS)
def test_each_door_counts_every_delta_of_every_stream(server: Server, door: bench.Door) -> None:
    before = set(server.gateway.generations)
    target = bench.Target(server.url, door, "scripted-model", max_tokens=TOKENS)
    levels = asyncio.run(bench.measure(target, [1, 4], rounds=2, warmup=1))

    assert [(lv.concurrency, len(lv.rounds)) for lv in levels] == [(1, 2), (4, 2)]
    for level in levels:
        for s in level.streams:
            assert s.error is None
            assert (s.tokens, len(s.deltas), len(s.gaps)) == (TOKENS, TOKENS, TOKENS - 1)
            assert s.started < s.deltas[0] <= s.deltas[-1] <= (s.ended or 0)
        figures = level.figures()
        assert (figures["streams"], figures["errors"]) == (2 * level.concurrency, 0)
        assert figures["tokens"] == 2 * level.concurrency * TOKENS
        assert figures["aggregate_tps"] and figures["stream_tps"]
    # The four streams of a round ran at once: each started before any ended.
    for run in levels[1].rounds:
        assert max(s.started for s in run) < min(s.ended or 0 for s in run)
    # The server saw exactly the streams measured, plus one warm-up per level, all to the end.
    made = [server.gateway.generations[g] for g in set(server.gateway.generations) - before]
    assert len(made) == 2 * 1 + 2 * 4 + 2
    assert {g.stop_reason for g in made} == {"max_tokens"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sluicegate", "bench", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_the_command_prints_a_table_and_writes_the_plot_and_stamps(
    server: Server, tmp_path: Path
) -> None:
    out, png, raw = tmp_path / "t.md", tmp_path / "p.png", tmp_path / "r.json"
    done = cli(server.url, "--door", "ws", "--model", "scripted", "--concurrency", "1,3",
               "--rounds", "1", "--max-tokens", "8", "--label", "here",
               "--out", str(out), "--plot", str(png), "--raw", str(raw))  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| here |")]
    assert [r.split("|")[2].strip() for r in rows] == ["1 x 1", "3 x 1"]
    assert all(r.split("|")[3].strip() == "0" for r in rows)  # no errors
    assert out.read_text() in done.stdout + "\n"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stamps = json.loads(raw.read_text())["here"]
    assert [len(lv["rounds"][0]) for lv in stamps] == [1, 3]
    assert all(len(s["deltas"]) == s["tokens"] == 8 for lv in stamps for s in lv["rounds"][0])


def test_failures_are_counted_with_their_reason_and_fail_the_command(server: Server) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    done = cli(nobody, "--concurrency", "2", "--rounds", "1")
    assert done.returncode == 1
    assert "| 2 x 1 | 2 |" in done.stdout
    assert "ConnectError" in done.stderr

    # The server refuses the request: its status and message are what the table's note says.
    done = cli(server.url, "--door", "bedrock", "--concurrency", "1", "--rounds", "1",
               "--max-tokens", "0")  # fmt: skip
    assert done.returncode == 1
    assert "HTTP 400" in done.stderr and "ValidationException" in done.stderr


def test_bad_arguments_are_refused_before_any_request() -> None:
    done = cli("http://127.0.0.1:9", "--door", "smtp")
    assert done.returncode == 2 and "--door must be one of" in done.stderr
    done = cli("http://127.0.0.1:9", "--concurrency", "1,x")
    assert done.returncode == 2 and "--concurrency takes numbers" in done.stderr
