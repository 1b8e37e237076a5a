"""Bad input gets Bedrock's modelled errors through boto3, and disturbs no other stream."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from tests.conftest import Server

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
V = "bedrock-2023-05-31"
HI = [{"role": "user", "content": "hi"}]

BAD_BODIES: list[tuple[str, Any, str]] = [
    ("malformed json", "{not json", "not valid JSON"),
    ("not an object", "[1, 2]", "JSON object"),
    ("no anthropic_version", {"max_tokens": 10, "messages": HI}, "anthropic_version"),
    (
        "wrong anthropic_version",
        {"anthropic_version": "bedrock-2023-13-45", "max_tokens": 10, "messages": HI},
        "bedrock-2023-05-31",
    ),
    (
        "a lone surrogate",
        '{"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10, '
        '"messages": [{"role": "user", "content": "hi \\ud800"}]}',
        "lone UTF-16 surrogate",
    ),
    (
        "a 5,000-digit integer",
        '{"anthropic_version": "bedrock-2023-05-31", "max_tokens": ' + "9" * 5000 + "}",
        "cannot be read",
    ),
    (
        "extraneous stream",
        {"anthropic_version": V, "max_tokens": 10, "stream": True, "messages": HI},
        "extraneous key [stream] is not permitted",
    ),
    (
        "extraneous model",
        {"anthropic_version": V, "max_tokens": 10, "model": "x", "messages": HI},
        "extraneous key [model] is not permitted",
    ),
    ("no max_tokens", {"anthropic_version": V, "messages": HI}, "max_tokens"),
    ("max_tokens 0", {"anthropic_version": V, "max_tokens": 0, "messages": HI}, "max_tokens"),
    (
        "max_tokens a string",
        {"anthropic_version": V, "max_tokens": "9", "messages": HI},
        "max_tokens",
    ),
    (
        "max_tokens over the context",
        {"anthropic_version": V, "max_tokens": 100_000, "messages": HI},
        "context window",
    ),
    ("empty messages", {"anthropic_version": V, "max_tokens": 10, "messages": []}, "messages"),
    (
        "non-alternating",
        {"anthropic_version": V, "max_tokens": 10, "messages": [*HI, *HI]},
        "alternate",
    ),
    (
        "assistant first",
        {
            "anthropic_version": V,
            "max_tokens": 10,
            "messages": [{"role": "assistant", "content": "hi"}],
        },
        "alternate",
    ),
    (
        "unknown block",
        {
            "anthropic_version": V,
            "max_tokens": 10,
            "messages": [{"role": "user", "content": [{"type": "hologram"}]}],
        },
        "unknown content block type",
    ),
    (
        "image block",
        {
            "anthropic_version": V,
            "max_tokens": 10,
            "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}],
        },
        "'image'",
    ),
    (
        "temperature 7",
        {"anthropic_version": V, "max_tokens": 10, "temperature": 7, "messages": HI},
        "temperature",
    ),
]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "invoke"])
@pytest.mark.parametrize(("case", "raw", "says"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_bodies_raise_validation_exception(
    server: Server, case: str, raw: Any, says: str, stream: bool
) -> None:
    c = server.bedrock()
    payload = raw if isinstance(raw, str) else json.dumps(raw)
    call = c.invoke_model_with_response_stream if stream else c.invoke_model
    with pytest.raises(c.exceptions.ValidationException) as info:
        call(modelId=MODEL, body=payload)
    assert says in info.value.response["Error"]["Message"]
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_converse_errors_are_modelled_too(server: Server) -> None:
    c = server.bedrock()
    with pytest.raises(c.exceptions.ValidationException, match="alternate"):
        c.converse_stream(
            modelId=MODEL,
            messages=[{"role": "user", "content": [{"text": "a"}]}] * 2,
        )
    with pytest.raises(c.exceptions.ValidationException, match="image"):
        c.converse(
            modelId=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [{"image": {"format": "png", "source": {"bytes": b"\x89PNG"}}}],
                }
            ],
        )


def test_a_body_over_25_mb_is_refused(server: Server) -> None:
    c = server.bedrock()
    huge = json.dumps(
        {
            "anthropic_version": V,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x" * (25 * 1024 * 1024 + 10)}],
        }
    )
    with pytest.raises(c.exceptions.ValidationException, match="limit"):
        c.invoke_model(modelId=MODEL, body=huge)


def test_a_large_body_sent_chunked_is_refused_without_reading_it_all(server: Server) -> None:
    def pieces() -> Any:
        yield b'{"anthropic_version": "bedrock-2023-05-31", "messages": [{"content": "'
        for _ in range(30):
            yield b"y" * (1024 * 1024)

    r = httpx.post(f"{server.url}/model/{MODEL}/invoke", content=pieces(), timeout=60)
    assert r.status_code == 400
    assert r.headers["x-amzn-errortype"].startswith("ValidationException")
    assert "limit" in r.json()["message"]


def test_unknown_routes_answer_in_the_aws_error_shape(server: Server) -> None:
    for method, path in [
        ("POST", "/model/x/explode"),
        ("GET", "/model/x/invoke"),
        ("PUT", "/nope"),
    ]:
        r = httpx.request(method, server.url + path)
        assert r.status_code == 404
        assert r.headers["x-amzn-errortype"].startswith("UnknownOperationException")
        assert path in r.json()["message"]


def test_invalid_utf8_and_truncated_bodies_get_clear_errors(server: Server) -> None:
    r = httpx.post(f"{server.url}/model/{MODEL}/invoke", content=b'{"a": "\xff\xfe"}')
    assert r.status_code == 400 and "JSON" in r.json()["message"]
    # A client that promises more than it sends and hangs up: the server shrugs it off.
    addr = urlparse(server.url)
    with socket.create_connection((addr.hostname, addr.port)) as s:
        s.sendall(b'POST /model/x/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"anth')
    assert httpx.get(f"{server.url}/metrics").status_code == 200


def test_bad_requests_do_not_disturb_a_running_stream(server: Server) -> None:
    c = server.bedrock()
    texts: list[str] = []

    def stream() -> None:
        body = json.dumps({"anthropic_version": V, "max_tokens": 200, "messages": HI})
        r = c.invoke_model_with_response_stream(modelId="scripted-steady", body=body)
        for e in r["body"]:
            chunk = json.loads(e["chunk"]["bytes"])
            if chunk["type"] == "content_block_delta":
                texts.append(chunk["delta"]["text"])

    t = threading.Thread(target=stream)
    t.start()
    hostile = [b"{", b"\x00" * 1000, b'{"anthropic_version": 5}', b"[]" * 5000, b'"' * 10]
    bad = server.bedrock()
    for raw in hostile * 4:
        with pytest.raises(bad.exceptions.ValidationException):
            bad.invoke_model_with_response_stream(modelId=MODEL, body=raw)
    t.join(60)
    assert len(texts) == 64  # the scripted answer, whole: every word arrived


def test_stop_sequences_past_the_limit_are_refused_before_anything_runs(server: Server) -> None:
    """8,191 stop sequences are allowed, but not 24 MB of them: matching runs at every token."""
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5,
            "stop_sequences": ["x" * 3000] * 30,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    before = len(server.gateway.generations)
    with pytest.raises(Exception) as refused:
        server.bedrock().invoke_model(modelId="scripted-stops", body=json.dumps(body))
    error = refused.value.response  # type: ignore[attr-defined]
    assert error["Error"]["Code"] == "ValidationException"
    assert "90000 characters in all, over sluicegate's limit of 65536" in error["Error"]["Message"]
    assert len(server.gateway.generations) == before
    body["stop_sequences"] = [f"s{i}" for i in range(8191)]  # many, but short: fine
    ok = server.bedrock().invoke_model(modelId="scripted-stops", body=json.dumps(body))
    assert json.loads(ok["body"].read())["stop_reason"] == "max_tokens"


@pytest.mark.parametrize("case", ["surrogate", "digits"])
def test_undecodable_bodies_are_validation_errors_on_every_operation(
    server: Server, case: str
) -> None:
    """Converse, ConverseStream and CountTokens too, never a plain-text 500."""
    text = "hi \\ud800" if case == "surrogate" else "hi"
    tokens = "9" * 5000 if case == "digits" else "10"
    converse = (
        '{"messages": [{"role": "user", "content": [{"text": "' + text + '"}]}], '
        '"inferenceConfig": {"maxTokens": ' + tokens + "}}"
    )
    for operation in ("converse", "converse-stream"):
        r = httpx.post(f"{server.url}/model/{MODEL}/{operation}", content=converse)
        assert r.status_code == 400 and r.headers["x-amzn-ErrorType"].startswith("Validation")
    count = '{"input": {"converse": ' + converse + "}}"
    r = httpx.post(f"{server.url}/model/{MODEL}/count-tokens", content=count)
    assert r.status_code == 400 and r.headers["x-amzn-ErrorType"].startswith("Validation")
    chat = (
        '{"model": "m", "max_tokens": '
        + tokens
        + ', "messages": [{"role": "user", "content": "'
        + text
        + '"}]}'
    )
    r = httpx.post(f"{server.url}/v1/chat/completions", content=chat)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
