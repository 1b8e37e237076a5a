"""Handlers that post to `https://{domainName}/{stage}`, as AWS samples do, over real TLS."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from sluicegate.config import Route, Settings, WebSocketSettings
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider
from tests.conftest import Server, free_port, serve, serve_command, stop, wait_ready

# The handler of the AWS samples, unchanged: its endpoint comes from the event, not from the
# environment, so only a listener at https://{domainName} that it trusts can serve it.
HANDLERS = """
import json
import boto3


def send_message(event, context):
    domain = event["requestContext"]["domainName"]
    stage = event["requestContext"]["stage"]
    apigw = boto3.client("apigatewaymanagementapi", endpoint_url=f"https://{domain}/{stage}")
    data = json.loads(event["body"])["data"]
    apigw.post_to_connection(
        ConnectionId=event["requestContext"]["connectionId"],
        Data=json.dumps({"echo": data, "domainName": domain}).encode(),
    )
    return {"statusCode": 200}


def where(event, context):
    apigw = boto3.client("apigatewaymanagementapi")  # AWS_ENDPOINT_URL_* from sluicegate
    domain = event["requestContext"]["domainName"]
    apigw.post_to_connection(
        ConnectionId=event["requestContext"]["connectionId"],
        Data=json.dumps({"domainName": domain}).encode(),
    )
    return {"statusCode": 200}
"""


def handler_server(folder: Path, *, tls: bool) -> Server:
    module = folder / "sample.py"
    module.write_text(HANDLERS)
    routes = {"sendmessage": f"{module}:send_message", "where": f"{module}:where"}
    settings = Settings(
        routes=[Route(match="*", provider="scripted")], websocket=WebSocketSettings(routes=routes)
    )
    return serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.001)}), tls=tls)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = handler_server(tmp_path_factory.mktemp("tls"), tls=True)
    yield s
    stop(s)


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = handler_server(tmp_path_factory.mktemp("plain"), tls=False)
    yield s
    stop(s)


def exchange(url: str, message: dict[str, Any], context: ssl.SSLContext | None = None) -> Any:
    async def main() -> Any:
        async with websockets.connect(url, ssl=context) as ws:
            await ws.send(json.dumps(message))
            return json.loads(await asyncio.wait_for(ws.recv(), 30))

    return asyncio.run(main())


def trusting(server: Server) -> ssl.SSLContext:
    assert server.cert is not None
    return ssl.create_default_context(cafile=str(server.cert.ca_file))


def test_the_aws_sample_posts_back_through_https_domain_name(tls_server: Server) -> None:
    got = exchange(tls_server.ws_url, {"action": "sendmessage", "data": "hello"})
    tls_port = tls_server.gateway.settings.tls_port
    assert got == {"echo": "hello", "domainName": f"127.0.0.1:{tls_port}"}


def test_the_tls_listener_serves_the_same_api(tls_server: Server) -> None:
    wss = tls_server.tls_url.replace("https", "wss", 1) + "/ws"
    got = exchange(wss, {"action": "sendmessage", "data": "over wss"}, trusting(tls_server))
    assert got["echo"] == "over wss"
    assert exchange(wss, {"action": "ping"}, trusting(tls_server)) == {"type": "pong"}
    ok = httpx.get(tls_server.tls_url + "/metrics", verify=trusting(tls_server))
    assert ok.status_code == 200 and "sluicegate_" in ok.text


def test_the_certificate_is_real_tls_that_others_do_not_trust(tls_server: Server) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(tls_server.tls_url + "/metrics", verify=ssl.create_default_context())


def test_without_tls_domain_name_is_the_plain_listener(plain_server: Server) -> None:
    got = exchange(plain_server.ws_url, {"action": "where"})
    assert got == {"domainName": plain_server.url.removeprefix("http://")}
    assert plain_server.gateway.settings.tls_port is None and len(plain_server.listeners) == 1


def test_sluicegate_serve_tls_port(tmp_path: Path) -> None:
    """The command line: the sample reaches its client, and the certificate goes at the end."""
    (tmp_path / "sample.py").write_text(HANDLERS)
    port, tls_port = free_port(), free_port()
    cmd = serve_command(
        port, "--tls-port", str(tls_port), "--ws-route", "sendmessage=sample.py:send_message"
    )
    env = {**os.environ, "COLUMNS": "300"}
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_ready(port, proc)
        got = exchange(f"ws://127.0.0.1:{port}/ws", {"action": "sendmessage", "data": 1})
        assert got == {"echo": 1, "domainName": f"127.0.0.1:{tls_port}"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output = proc.communicate(timeout=20)[0].decode()
    assert proc.returncode in (0, -signal.SIGTERM)
    assert f"TLS listener: https://127.0.0.1:{tls_port}" in output
    found = re.search(r"certificate authority (\S+)", output)
    assert found is not None and not Path(found.group(1)).exists()  # removed on the way out
