"""The command line, run as users run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from sluicegate.cli import app
from tests.conftest import free_port, serve_command, wait_ready

runner = CliRunner(env={"COLUMNS": "200"})


def test_help_lists_every_option() -> None:
    out = runner.invoke(app, ["serve", "--help"])
    assert out.exit_code == 0
    for option in ("--host", "--port", "--model", "--config", "--route", "--log-level"):
        assert option in out.output


def test_models_shows_routes_and_the_embedded_file(tmp_path: Path) -> None:
    config = tmp_path / "sg.toml"
    config.write_text(
        '[[routes]]\nmatch = "scripted*"\nprovider = "scripted"\n'
        '[[routes]]\nmatch = "*"\nprovider = "local"\n'
    )
    out = runner.invoke(app, ["models", "--config", str(config)])
    assert out.exit_code == 0, out.output
    assert "'scripted*'" in out.output and "-> scripted" in out.output
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in out.output


UPSTREAMS = """
[providers.gpu]
type = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "GPU_KEY"
[providers.prod]
type = "bedrock"
region = "eu-west-1"
[[routes]]
match = "gpt-*"
provider = "gpu"
[[routes]]
match = "anthropic.claude-*"
provider = "prod"
model = "us.anthropic.claude-sonnet-4-20250514-v1:0"
"""


def test_models_shows_upstreams_and_the_model_ids_sent(tmp_path: Path) -> None:
    config = tmp_path / "sg.toml"
    config.write_text(UPSTREAMS)
    out = runner.invoke(app, ["models", "--config", str(config)])
    assert out.exit_code == 0, out.output
    assert "'gpt-*'" in out.output and "-> gpu (openai at http://127.0.0.1:9/v1)" in out.output
    assert "-> prod (bedrock), sent as 'us.anthropic.claude-sonnet-4-20250514-v1:0'" in out.output
    config.write_text(UPSTREAMS.replace('region = "eu-west-1"', 'api = "invoke"'))
    out = runner.invoke(app, ["models", "--config", str(config)])
    assert "-> prod (bedrock, InvokeModelWithResponseStream), sent as" in out.output


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (UPSTREAMS.replace('provider = "gpu"', 'provider = "gpx"'), "routes[0].provider"),
        (UPSTREAMS.replace('type = "openai"', 'type = "opneai"'), "providers.gpu.type"),
        (UPSTREAMS.replace('base_url = "http://127.0.0.1:9/v1"\n', ""), "providers.gpu"),
        (UPSTREAMS.replace('"GPU_KEY"', '"sk-live-123 456"'), "providers.gpu.api_key_env"),
        (UPSTREAMS + "[providers.local]\ntype = 'openai'\nbase_url = 'x'\n", "built-in"),
        (UPSTREAMS.replace('region = "eu-west-1"', 'api = "invokes"'), "providers.prod.api"),
        (UPSTREAMS.replace('api_key_env = "GPU_KEY"', 'api = "invoke"'), "api (converse or"),
    ],
)
def test_a_bad_provider_config_is_refused_naming_the_key(
    tmp_path: Path, text: str, named: str
) -> None:
    config = tmp_path / "sg.toml"
    config.write_text(text)
    out = runner.invoke(app, ["serve", "--config", str(config)])
    assert out.exit_code == 2 and named in out.output, out.output


def test_bad_flags_and_config_are_refused_clearly(tmp_path: Path) -> None:
    out = runner.invoke(app, ["serve", "--route", "nonsense"])
    assert out.exit_code != 0 and "GLOB=local or GLOB=scripted" in out.output
    assert "PROVIDER one of local, scripted" in out.output
    out = runner.invoke(app, ["serve", "--model", str(tmp_path / "missing.gguf")])
    assert out.exit_code != 0 and "is not a file" in out.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[engine]\nn_parallel = 0\n")
    out = runner.invoke(app, ["models", "--config", str(bad)])
    assert out.exit_code != 0


def test_serve_runs_as_a_process_and_stops_on_sigterm() -> None:
    port = free_port()
    cmd = serve_command(port)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(port, proc)
        body = {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
        }
        r = httpx.post(base + "/model/any/invoke", content=json.dumps(body))
        assert r.json()["usage"]["output_tokens"] == 5
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output = proc.communicate(timeout=20)[0].decode()
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert proc.returncode in (0, -signal.SIGTERM)
    assert "Finished server process" in output
    assert "scripted:" in output and f"http://127.0.0.1:{port}" in output


def test_handlers_reach_this_server_unless_told_to_call_aws(tmp_path: Path) -> None:
    from sluicegate import handlers
    from sluicegate.config import FunctionSettings, Settings
    from sluicegate.routes.app import load_user_routes

    handler = tmp_path / "h.py"
    handler.write_text(
        "import os\nSEEN = os.environ.get('AWS_ENDPOINT_URL_BEDROCK_RUNTIME')\n"
        "def handler(event, context):\n    return SEEN\n"
    )
    fns = {"h": FunctionSettings(handler=f"{handler}:handler")}
    before, ours = dict(os.environ), dict(handlers._SET)
    try:
        os.environ.pop("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", None)
        loaded = load_user_routes(Settings(port=8765, functions=fns, handlers_call_aws=True))
        assert loaded["fn:h"]({}, None) is None
        os.environ.pop("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", None)
        load_user_routes(Settings(port=8765, functions=fns))
        assert os.environ["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] == "http://127.0.0.1:8765"
    finally:
        # Both, or later servers in this process take their own old values for the user's.
        os.environ.clear()
        os.environ.update(before)
        handlers._SET.clear()
        handlers._SET.update(ours)
