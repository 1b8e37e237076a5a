"""Hostile input against a real server: answered in the protocol's shape, never a crash."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from tests.conftest import Server

DEEP = "[" * 60_000 + "]" * 60_000  # under the 128 KiB message limit; past Python's recursion


def test_deeply_nested_bedrock_bodies_are_validation_errors(server: Server) -> None:
    client = server.bedrock()
    for call in (
        lambda: client.invoke_model(modelId="scripted", body=DEEP),
        lambda: client.invoke_model_with_response_stream(modelId="scripted", body=DEEP),
    ):
        with pytest.raises(client.exceptions.ValidationException, match="nests too deeply"):
            call()
    # and the server still serves
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 3,
                       "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert (
        client.invoke_model(modelId="scripted", body=body)["ResponseMetadata"]["HTTPStatusCode"]
        == 200
    )


@pytest.fixture(scope="module")
def ws(server: Server) -> Iterator[ClientConnection]:
    with connect(server.ws_url, max_size=None) as conn:
        yield conn


def still_usable(ws: ClientConnection) -> list[dict[str, Any]]:
    """Ping, and gather every reply up to the pong: the connection must still answer."""
    ws.send(json.dumps({"action": "ping"}))
    replies = []
    while (reply := json.loads(ws.recv(timeout=10)))["type"] != "pong":
        replies.append(reply)
    return replies


def test_deep_nesting_over_the_websocket_is_an_error_message(ws: ClientConnection) -> None:
    ws.send(DEEP[i : i + 30_000] for i in range(0, len(DEEP), 30_000))  # frames under 32 KiB
    [reply] = still_usable(ws)
    assert reply["type"] == "error" and reply["code"] == "BadRequest"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
actions = st.sampled_from(["generate", "stop", "resume", "ping", "whoami", "nope", "", "$default"])
messages = st.one_of(
    st.dictionaries(st.sampled_from(["id", "after", "model", "prompt", "messages", "max_tokens",
                                     "temperature", "seed", "stop_sequences", "system"]),
                    json_values, max_size=5).flatmap(
        lambda d: actions.map(lambda a: json.dumps({"action": a, **d}))),
    json_values.map(json.dumps),
    st.text(max_size=50),
    st.binary(max_size=50),
)  # fmt: skip


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(message=messages)
def test_random_messages_never_break_the_connection(
    ws: ClientConnection, message: str | bytes
) -> None:
    ws.send(message)
    replies = still_usable(ws)
    for reply in replies:
        assert reply["type"] in ("error", "whoami", "start", "delta", "end"), reply
        if reply["type"] == "error":
            assert isinstance(reply["code"], str) and reply["message"]
    ws.send(json.dumps({"action": "stop"}))  # whatever a generate started, stop it
