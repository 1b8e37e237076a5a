"""Bedrock Runtime through the real boto3 client against a real uvicorn and the real model."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest
from botocore.exceptions import EventStreamError

from tests.conftest import Server, wait_until

MODEL = "anthropic.claude-3-sonnet-20240229-v1:0"
ARN = (
    "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
    "us.anthropic.claude-3-5-sonnet-20241022-v2:0"
)


def body(text: str = "Say hello.", **extra: Any) -> str:
    return json.dumps(
        {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": extra.pop("max_tokens", 32),
            "messages": [{"role": "user", "content": text}],
            **extra,
        }
    )


def chunks(response: Any) -> list[dict[str, Any]]:
    return [json.loads(e["chunk"]["bytes"]) for e in response["body"]]


def test_the_seed_snippet_streams_tokens_while_the_model_generates(server: Server) -> None:
    bedrock_runtime = server.bedrock()
    user_query = "Write a Python function that reverses a string."
    response = bedrock_runtime.invoke_model_with_response_stream(
        modelId="anthropic.claude-3-sonnet-20240229-v1:0",
        body=json.dumps(
            {
                "anthropic_version": "bedrock-2023-05-31",
                "max_tokens": 2048,
                "messages": [{"role": "user", "content": user_query}],
            }
        ),
    )
    gen = server.gateway.generations[response["ResponseMetadata"]["RequestId"]]
    tokens, done_at_token, stop_reason = [], [], None
    for event in response["body"]:
        chunk = json.loads(event["chunk"]["bytes"])
        if chunk["type"] == "content_block_delta":
            token = chunk["delta"]["text"]
            tokens.append(token)
            done_at_token.append(gen.done)
        elif chunk["type"] == "message_delta":
            stop_reason = chunk["delta"]["stop_reason"]
    assert len(tokens) >= 10
    assert stop_reason in ("end_turn", "max_tokens")
    # The first tokens reached this client while the model was still generating.
    assert done_at_token[0] is False
    assert gen.usage.output_tokens >= len(tokens)


def test_stream_event_order_usage_and_invocation_metrics(server: Server) -> None:
    response = server.bedrock().invoke_model_with_response_stream(modelId=MODEL, body=body())
    events = chunks(response)
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    start, delta, stop = events[0]["message"], events[-2], events[-1]
    assert start["model"] == MODEL and start["id"].startswith("msg_bdrk_")
    metrics = stop["amazon-bedrock-invocationMetrics"]
    assert metrics["inputTokenCount"] == start["usage"]["input_tokens"] > 0
    assert metrics["outputTokenCount"] == delta["usage"]["output_tokens"] > 0
    assert 0 < metrics["firstByteLatency"] <= metrics["invocationLatency"]
    assert response["contentType"] == "application/json"


# An id no model family claims takes the Messages body too (families: test_bedrock_families.py).
@pytest.mark.parametrize("model_id", [MODEL, ARN, "us." + MODEL, "my-fine-tune"])
def test_every_model_id_form_is_served_and_named_back(server: Server, model_id: str) -> None:
    out = server.bedrock().invoke_model(modelId=model_id, body=body(max_tokens=8))
    message = json.loads(out["body"].read())
    assert message["model"] == model_id
    assert message["content"][0]["type"] == "text"
    headers = out["ResponseMetadata"]["HTTPHeaders"]
    assert int(headers["x-amzn-bedrock-output-token-count"]) == message["usage"]["output_tokens"]


def test_unencoded_colon_in_the_path_works_too(server: Server) -> None:
    # The Anthropic SDK leaves ':' as is; botocore sends %3A. Both name the same model.
    url = f"{server.url}/model/{MODEL}/invoke"
    r = httpx.post(url, content=body(max_tokens=4), timeout=60)
    assert r.status_code == 200 and r.json()["model"] == MODEL


def test_converse_and_count_tokens_agree_with_invoke(server: Server) -> None:
    c = server.bedrock()
    messages = [{"role": "user", "content": [{"text": "Name a colour."}]}]
    out = c.converse(modelId=MODEL, messages=messages, inferenceConfig={"maxTokens": 12})
    assert out["output"]["message"]["role"] == "assistant"
    assert out["stopReason"] in ("end_turn", "max_tokens")
    usage = out["usage"]
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
    assert out["metrics"]["latencyMs"] > 0
    counted = c.count_tokens(modelId=MODEL, input={"converse": {"messages": messages}})
    assert counted["inputTokens"] == usage["inputTokens"]
    invoke_body = body("Name a colour.")
    counted = c.count_tokens(modelId=MODEL, input={"invokeModel": {"body": invoke_body}})
    invoked = json.loads(c.invoke_model(modelId=MODEL, body=invoke_body)["body"].read())
    assert counted["inputTokens"] == invoked["usage"]["input_tokens"]


def test_converse_stream_has_bedrock_shape(server: Server) -> None:
    out = server.bedrock().converse_stream(
        modelId=ARN,
        system=[{"text": "You are terse."}],
        messages=[{"role": "user", "content": [{"text": "Say hello."}]}],
        inferenceConfig={"maxTokens": 16, "temperature": 0.2},
    )
    events = list(out["stream"])
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "messageStart" and "contentBlockStart" not in kinds
    assert kinds[-3:] == ["contentBlockStop", "messageStop", "metadata"]
    deltas = [e["contentBlockDelta"] for e in events if "contentBlockDelta" in e]
    assert deltas and all(d["contentBlockIndex"] == 0 for d in deltas)
    meta = events[-1]["metadata"]
    assert meta["usage"]["outputTokens"] > 0 and meta["metrics"]["latencyMs"] > 0


def test_stop_sequences_end_the_answer_without_the_stop_text(server: Server) -> None:
    c = server.bedrock()
    prompt = "List the days of the week."  # greedy: "Here are the days..."
    events = chunks(
        c.invoke_model_with_response_stream(
            modelId=MODEL, body=body(prompt, max_tokens=64, temperature=0, stop_sequences=["e"])
        )
    )
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "e"}
    assert "e" not in text


def test_stop_sequence_cuts_exactly_before_the_stop_text(server: Server) -> None:
    # The scripted text is known in advance, so the cut can be checked exactly.
    c = server.bedrock()
    whole = json.loads(c.invoke_model(modelId="scripted", body=body("x"))["body"].read())
    full = whole["content"][0]["text"]
    stop = "the first words"
    cut = json.loads(
        c.invoke_model(modelId="scripted", body=body("x", stop_sequences=["zzz", stop]))[
            "body"
        ].read()
    )
    assert cut["content"][0]["text"] == full[: full.index(stop)]
    assert (cut["stop_reason"], cut["stop_sequence"]) == ("stop_sequence", stop)


def test_utf8_survives_the_stream(server: Server) -> None:
    # The scripted provider's text mixes accents, CJK and emoji; frames must carry them whole.
    response = server.bedrock().invoke_model_with_response_stream(
        modelId="scripted-utf8", body=body("héllo 日本 🙂", max_tokens=64)
    )
    text = "".join(
        e["delta"]["text"] for e in chunks(response) if e["type"] == "content_block_delta"
    )
    assert "You said: héllo 日本 🙂" in text
    assert "日本語" in text and "🙂" in text and "\ufffd" not in text


def test_concurrent_streams_all_get_their_first_token_before_any_finishes(server: Server) -> None:
    clients = [server.bedrock() for _ in range(8)]
    log: list[tuple[int, str]] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        prompt = f"Tell story number {i} about a lighthouse."
        r = clients[i].invoke_model_with_response_stream(
            modelId=MODEL, body=body(prompt, max_tokens=48)
        )
        for e in chunks_lazy(r):
            if e["type"] in ("content_block_delta", "message_stop"):
                with lock:
                    log.append((i, e["type"]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    first_stop = next(n for n, (_, kind) in enumerate(log) if kind == "message_stop")
    started = {i for i, kind in log[:first_stop] if kind == "content_block_delta"}
    assert started == set(range(8)), (
        f"streams without a token before the first ended: {log[:first_stop]}"
    )
    assert sum(kind == "message_stop" for _, kind in log) == 8


def chunks_lazy(response: Any) -> Any:
    for e in response["body"]:
        yield json.loads(e["chunk"]["bytes"])


def test_a_failure_after_the_stream_started_is_an_exception_frame(server: Server) -> None:
    response = server.bedrock().invoke_model_with_response_stream(
        modelId="scripted", body=body("please sluicegate:fail-after=5", max_tokens=64)
    )
    seen = []
    with pytest.raises(EventStreamError) as info:
        for e in response["body"]:
            seen.append(json.loads(e["chunk"]["bytes"])["type"])
    assert info.value.response["Error"]["Code"] == "modelStreamErrorException"
    assert seen.count("content_block_delta") == 5 and "message_stop" not in seen


def test_a_failure_during_invoke_model_is_the_modelled_exception(server: Server) -> None:
    c = server.bedrock()
    with pytest.raises(c.exceptions.ModelStreamErrorException):
        c.invoke_model(modelId="scripted", body=body("sluicegate:fail-after=2"))


def test_disconnect_mid_stream_stops_decoding(server: Server, local: Any) -> None:
    url = f"{server.url}/model/{MODEL}/invoke-with-response-stream"
    long_body = body("Write a very long story about the sea.", max_tokens=2000, temperature=0.8)
    with httpx.Client(timeout=60) as client, client.stream("POST", url, content=long_body) as r:
        gen_id = r.headers["x-amzn-requestid"]
        received = 0
        for part in r.iter_raw():
            received += len(part)
            if received > 1500:
                break
    gen = server.gateway.generations[gen_id]
    assert wait_until(lambda: gen.done)
    assert gen.stop_reason == "disconnected"
    assert wait_until(lambda: local.engine.decoded(gen_id) == local.engine.recent.get(gen_id))
    decoded = local.engine.recent[gen_id]
    assert 0 < decoded < 2000
    # Nothing decodes for it any more, and its KV cells are free.
    assert not wait_until(lambda: local.engine.decoded(gen_id) != decoded, timeout=0.5)
    assert wait_until(lambda: local.engine.active() == (0, 0))
    assert local.engine.kv_cells_used() == 0
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'stop_reason="disconnected"' in metrics


def test_a_client_gone_before_the_first_token_is_noticed(server: Server) -> None:
    url = f"{server.url}/model/scripted-slow/invoke-with-response-stream"
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", url, content=body(max_tokens=60)) as r,
    ):
        gen_id = r.headers["x-amzn-requestid"]
    gen = server.gateway.generations[gen_id]
    assert wait_until(lambda: gen.done)
    assert gen.stop_reason == "disconnected"
    produced = server.gateway.providers["scripted"].produced[gen_id]  # type: ignore[attr-defined]
    assert produced < 60


def test_introspection_reports_the_generation(server: Server) -> None:
    out = server.bedrock().invoke_model(modelId=MODEL, body=body(max_tokens=6))
    gen_id = out["ResponseMetadata"]["RequestId"]
    info = httpx.get(f"{server.url}/sluicegate/generations/{gen_id}").json()
    assert info["done"] and info["provider"] == "local" and info["route"] == "bedrock"
    assert info["produced_tokens"] >= info["usage"]["output_tokens"] > 0


def sampling_of(server: Server, response: Any) -> Any:
    gen_id = response["ResponseMetadata"]["RequestId"]
    return httpx.get(f"{server.url}/sluicegate/generations/{gen_id}").json()["sampling"]


def test_converse_without_temperature_samples_as_the_model_card_says(server: Server) -> None:
    out = server.bedrock().converse(
        modelId=MODEL,
        system=[{"text": "You are a helpful assistant."}],
        messages=[{"role": "user", "content": [{"text": "What is the capital of France?"}]}],
        inferenceConfig={"maxTokens": 24},
    )
    # What the engine got: SmolLM2-135M-Instruct's model card values, not 1.0.
    assert sampling_of(server, out) == {"temperature": 0.2, "top_p": 0.9, "top_k": 0, "seed": None}


def test_explicit_sampling_reaches_the_engine_unchanged(server: Server) -> None:
    out = server.bedrock().converse(
        modelId=MODEL,
        messages=[{"role": "user", "content": [{"text": "Say hello."}]}],
        inferenceConfig={"maxTokens": 4, "temperature": 1.0, "topP": 1.0},
        additionalModelRequestFields={"top_k": 5},
    )
    assert sampling_of(server, out) == {"temperature": 1.0, "top_p": 1.0, "top_k": 5, "seed": None}
    scripted = server.bedrock().converse(
        modelId="scripted-x", messages=[{"role": "user", "content": [{"text": "Hi."}]}]
    )
    assert sampling_of(server, scripted) is None  # the scripted provider does not sample


@pytest.mark.parametrize("operation", ["invoke", "converse"])
def test_a_stream_the_server_ends_early_never_names_a_stop_reason_bedrock_lacks(
    server: Server, operation: str
) -> None:
    """Bedrock has no stop reason for "cancelled": the stream ends with an exception frame."""
    client = server.bedrock()
    text = "sluicegate:delay-ms=20 Go on and on."
    before = set(server.gateway.generations)
    if operation == "invoke":
        body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 500,
                "messages": [{"role": "user", "content": text}]}  # fmt: skip
        response = client.invoke_model_with_response_stream(
            modelId="scripted-early", body=json.dumps(body)
        )
        events = iter(response["body"])
    else:
        response = client.converse_stream(
            modelId="scripted-early",
            messages=[{"role": "user", "content": [{"text": text}]}],
            inferenceConfig={"maxTokens": 500},
        )
        events = iter(response["stream"])
    seen = [next(events) for _ in range(4)]
    [gen] = [g for k, g in server.gateway.generations.items() if k not in before]
    gen.cancel("cancelled")  # the server ends it (as at shutdown)
    with pytest.raises(EventStreamError, match="internalServerException") as ended:
        seen += list(events)
    assert "stopped before it finished" in str(ended.value)
    assert not any("cancelled" in json.dumps(e, default=str) for e in seen)
