"""The Anthropic SDK's Bedrock client (`anthropic.AnthropicBedrock`), unchanged, against a real
server and the real model: it signs with SigV4 and sends its own `anthropic_version`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sluicegate.config import Route, Settings
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider
from tests.conftest import Server, serve, stop

anthropic = pytest.importorskip("anthropic")
httpx2 = pytest.importorskip("httpx2")  # the SDK's HTTP client since 2.x
# What the SDK puts in anthropic_version on Bedrock: its API version ("2026-10-21" in 2.15).
SDK_VERSION = pytest.importorskip("anthropic._constants").ANTHROPIC_API_VERSION

MODEL = "us.anthropic.claude-sonnet-4-20250514-v1:0"  # routed to the embedded model
HELLO = [{"role": "user", "content": "Say hello in five words."}]


class Recorder:
    """The JSON bodies the SDK sends, as the server receives them."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: Any) -> None:
        self.bodies.append(json.loads(request.read()))


def sdk(url: str, recorder: Recorder | None = None, secret: str = "secret") -> Any:
    hooks: dict[str, list[Callable[..., Any]]] = {"request": [recorder]} if recorder else {}
    return anthropic.AnthropicBedrock(
        aws_region="us-east-1",
        aws_access_key="AKIDEXAMPLE",
        aws_secret_key=secret,
        base_url=url,
        max_retries=0,
        http_client=httpx2.Client(timeout=120, event_hooks=hooks),
    )


def test_messages_create(server: Server) -> None:
    recorder = Recorder()
    message = sdk(server.url, recorder).messages.create(
        model=MODEL, max_tokens=24, system="You are terse.", messages=HELLO
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.model == MODEL
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 24
    # The version this SDK sends (its own constant), which sluicegate accepts.
    [sent] = recorder.bodies
    assert sent["anthropic_version"] == SDK_VERSION
    assert "model" not in sent and "stream" not in sent  # the SDK moves them to the URL


def test_messages_stream_yields_deltas_then_the_final_message(server: Server) -> None:
    recorder = Recorder()
    with sdk(server.url, recorder).messages.stream(
        model=MODEL,
        max_tokens=40,
        messages=[{"role": "user", "content": "Write a short poem about rivers."}],
    ) as stream:
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(deltas) > 1 and all(deltas)
    assert final.content[0].text == "".join(deltas)
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    assert recorder.bodies[0]["anthropic_version"] == SDK_VERSION


@pytest.mark.parametrize("version", ["bedrock-2026-10-21", "2026-10-21"])
def test_a_newer_anthropic_version_is_served(server: Server, version: str) -> None:
    recorder = Recorder()
    message = sdk(server.url, recorder).messages.create(
        model="scripted-version",
        max_tokens=4,
        messages=HELLO,
        extra_body={"anthropic_version": version},
    )
    assert recorder.bodies[0]["anthropic_version"] == version
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 4


def test_a_version_that_is_not_a_date_is_a_bad_request(server: Server) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        sdk(server.url).messages.create(
            model="scripted-version",
            max_tokens=4,
            messages=HELLO,
            extra_body={"anthropic_version": "bedrock-2023-13-45"},
        )
    assert info.value.status_code == 400
    assert "#/anthropic_version" in str(info.value)


KEY = "k3y-for-the-sdk"


@pytest.fixture(scope="module")
def keyed() -> Iterator[Server]:
    settings = Settings(routes=[Route(match="*", provider="scripted")], api_key=KEY)
    s = serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.001)}))
    yield s
    stop(s)


def test_its_sigv4_signature_is_verified(keyed: Server) -> None:
    """With an api_key the SDK's signature is checked, model id with colons in the path too."""
    message = sdk(keyed.url, secret=KEY).messages.create(model=MODEL, max_tokens=3, messages=HELLO)
    assert message.usage.output_tokens == 3
    with sdk(keyed.url, secret=KEY).messages.stream(
        model=MODEL, max_tokens=3, messages=HELLO
    ) as stream:
        assert len(list(stream.text_stream)) == 3
    with pytest.raises(anthropic.PermissionDeniedError):
        sdk(keyed.url, secret="wrong").messages.create(model=MODEL, max_tokens=3, messages=HELLO)
