"""Start-up progress: plain lines when the output is not a terminal (a real `sluicegate serve`
converting the embedded weights into an empty cache), a Rich bar under a pseudo-terminal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pexpect

from tests.conftest import free_port, wait_ready

SHIPPED = "SmolLM2-135M-Instruct.Q4_1"


def test_serve_prints_a_line_per_start_up_step_when_not_a_terminal(tmp_path: Path) -> None:
    config = tmp_path / "small.toml"
    config.write_text("[engine]\nn_ctx = 512\nn_parallel = 2\n")  # a small KV cache: cheap
    cache = tmp_path / "cache"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluicegate", "serve", "--port", str(port), "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "XDG_CACHE_HOME": str(cache), "COLUMNS": "80"},
    )
    try:
        wait_ready(port, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    [converted] = (cache / "sluicegate").glob("*.q8_0.gguf")
    steps = [
        f"Loading {SHIPPED}.gguf (98 MB)",
        f"Converting {SHIPPED}.gguf to Q8_0 (once, kept in {cache / 'sluicegate'})",
        f"Loading {converted.name} ({converted.stat().st_size / 1e6:.0f} MB)",
    ]
    lines = out.splitlines()
    at = [lines.index(f"{step}...") for step in steps]  # whole lines, however long
    assert at == sorted(at)
    for step in steps:
        [done] = [line for line in lines if line.startswith(f"{step}: done in ")]
        assert done.endswith(" s")
    assert "\r" not in out and "\x1b[" not in out and "━" not in out  # no bar, no colours


STEP = """
import time
from rich.console import Console
from sluicegate.progress import console_steps
step = console_steps(Console())
with step("Converting weights") as update:
    for i in range(1, 11):
        update(i / 10)
        time.sleep(0.05)
print("after the step")
"""


def test_a_terminal_gets_a_progress_bar() -> None:
    term = pexpect.spawn(sys.executable, ["-c", STEP], env={**os.environ, "COLUMNS": "80"})
    term.expect("after the step", timeout=30)
    shown = term.before.decode()
    term.expect(pexpect.EOF)
    assert "Converting weights" in shown and "━" in shown and "100%" in shown
    assert "Converting weights..." not in shown  # not the plain lines
