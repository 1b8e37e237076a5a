"""Three sluicegate replicas behind nginx, sharing one redis-server: the topology to copy.

    python examples/deploy/run.py [--port 8080] [--replicas 3] [--config my.toml]

Starts Debian's redis-server and nginx (`apt-get install redis-server nginx`) and the
replicas on free 127.0.0.1 ports, prints the one URL clients use, and stops everything on
Ctrl-C. Any replica serves any request: a reconnect, a Stop or an @connections call may land
anywhere (see the README's "Replicas" section). Without --config the replicas serve the
scripted provider; give a config with [providers.*] routes to front real models (vLLM, Bedrock,
an embedded-model node).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
SLUICEGATE = [sys.executable, "-m", "sluicegate"]
SCRIPTED = (
    '[scripted]\ndelay_ms = 20\nlength = 200\n[[routes]]\nmatch = "*"\nprovider = "scripted"\n'
)


@dataclass
class Cluster:
    url: str  # nginx: what clients use
    redis_url: str
    replicas: list[str]  # each replica's own URL (for a look behind the proxy)
    procs: dict[str, subprocess.Popen[bytes]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait(ok: object, what: str, proc: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not ok():  # type: ignore[operator]
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.1)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def cluster(port: int = 0, replicas: int = 3, config: Path | None = None) -> Iterator[Cluster]:
    for tool in ("redis-server", "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            raise RuntimeError(f"{tool} is missing: apt-get install redis-server nginx")
    folder = Path(tempfile.mkdtemp(prefix="sluicegate-deploy-"))
    folder.chmod(0o755)  # nginx's workers make their temporary folders in it
    if config is None:
        config = folder / "replica.toml"
        config.write_text(SCRIPTED)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = []

    def spawn(name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = (folder / f"{name}.log").open("wb")
        logs.append(log)
        procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        return procs[name]

    try:
        redis_port = free_port()
        redis = spawn("redis", [
            "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(folder),
        ])  # fmt: skip
        wait(lambda: redis_answers(redis_port), "redis-server", redis)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        urls = []
        for i in range(replicas):
            p = free_port()
            cmd = [*SLUICEGATE, "serve", "--port", str(p), "--config", str(config),
                   "--bus", redis_url, "--log-level", "warning"]  # fmt: skip
            proc = spawn(f"replica{i}", cmd)
            urls.append(f"http://127.0.0.1:{p}")
            wait(lambda u=urls[-1]: answers(u + "/readyz"), f"replica {i}", proc)  # type: ignore[misc]
        port = port or free_port()
        upstreams = "\n".join(f"        server {u[7:]};" for u in urls)
        conf = (HERE / "nginx.conf").read_text()
        conf = conf.format(port=port, upstreams=upstreams, folder=folder)
        (folder / "nginx.conf").write_text(conf)
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        conf_file, errors = str(folder / "nginx.conf"), str(folder / "error.log")
        nginx = spawn("nginx", [binary, "-c", conf_file, "-e", errors])
        url = f"http://127.0.0.1:{port}"
        wait(lambda: answers(url + "/healthz"), "nginx", nginx)
        yield Cluster(url, redis_url, urls, procs)
    finally:
        for name, proc in reversed(procs.items()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGQUIT if name == "nginx" else signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(35)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--config", type=Path)
    args = parser.parse_args()
    with cluster(args.port, args.replicas, args.config) as c:
        print(f"sluicegate on {c.url} (Bedrock Runtime, /ws, /v1/...): {len(c.replicas)} "
              f"replicas {' '.join(c.replicas)}, bus {c.redis_url}. Ctrl-C stops it.")  # fmt: skip
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
