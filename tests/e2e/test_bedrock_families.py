"""Every Bedrock model family's own InvokeModel body and chunks, through the real boto3 client.

Shapes are checked on the scripted provider (deterministic text, so a stream's pieces can be
compared with the whole answer); a few tests run the real model to show the family's prompt
reaches it as a conversation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EventStreamError

from sluicegate.config import Route, Settings
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider
from tests.conftest import Server, serve, stop

Json = dict[str, Any]
LENGTH = 12  # words in every scripted answer (a word is a token)


@pytest.fixture(scope="module")
def scripted() -> Iterator[Server]:
    settings = Settings(routes=[Route(match="*", provider="scripted")])
    s = serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.001, length=LENGTH)}))
    yield s
    stop(s)


def client(server: Server) -> Any:
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=server.url,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        config=Config(read_timeout=120, retries={"max_attempts": 1}),
    )


@dataclass(frozen=True)
class Case:
    """A family: a body asking for `limit` tokens, where its text is, how it says stop."""

    model: str
    body: Callable[[str, int], Json]
    whole_text: Callable[[Json], str]
    whole_stop: Callable[[Json], Any]
    piece: Callable[[Json], str | None]  # the text of a chunk (None: a chunk without text)
    chunk_stop: Callable[[Json], Any]  # the stop reason a chunk carries (None until the end)
    natural: str  # the family's word for a natural end
    length: str  # ... and for an answer cut at the limit


def nova_stop(c: Json) -> Any:
    return c.get("messageStop", {}).get("stopReason")


CASES = {
    "claude-text": Case(
        "anthropic.claude-v2:1",
        lambda t, n: {"prompt": f"\n\nHuman: {t}\n\nAssistant:", "max_tokens_to_sample": n},
        lambda o: o["completion"],
        lambda o: o["stop_reason"],
        lambda c: c["completion"],
        lambda c: c["stop_reason"],
        "stop_sequence",
        "max_tokens",
    ),
    "titan": Case(
        "amazon.titan-text-express-v1",
        lambda t, n: {"inputText": t, "textGenerationConfig": {"maxTokenCount": n}},
        lambda o: o["results"][0]["outputText"],
        lambda o: o["results"][0]["completionReason"],
        lambda c: c["outputText"],
        lambda c: c["completionReason"],
        "FINISH",
        "LENGTH",
    ),
    "llama": Case(
        "meta.llama3-8b-instruct-v1:0",
        lambda t, n: {"prompt": t, "max_gen_len": n},
        lambda o: o["generation"],
        lambda o: o["stop_reason"],
        lambda c: c["generation"],
        lambda c: c["stop_reason"],
        "stop",
        "length",
    ),
    "mistral": Case(
        "mistral.mistral-7b-instruct-v0:2",
        lambda t, n: {"prompt": f"<s>[INST] {t} [/INST]", "max_tokens": n},
        lambda o: o["outputs"][0]["text"],
        lambda o: o["outputs"][0]["stop_reason"],
        lambda c: c["outputs"][0]["text"],
        lambda c: c["outputs"][0]["stop_reason"],
        "stop",
        "length",
    ),
    "cohere-command": Case(
        "cohere.command-text-v14",
        lambda t, n: {"prompt": t, "max_tokens": n},
        lambda o: o["generations"][0]["text"],
        lambda o: o["generations"][0]["finish_reason"],
        lambda c: c.get("text"),
        lambda c: c.get("finish_reason"),
        "COMPLETE",
        "MAX_TOKENS",
    ),
    "cohere-command-r": Case(
        "cohere.command-r-plus-v1:0",
        lambda t, n: {"message": t, "max_tokens": n},
        lambda o: o["text"],
        lambda o: o["finish_reason"],
        lambda c: c.get("text"),
        lambda c: c.get("finish_reason"),
        "COMPLETE",
        "MAX_TOKENS",
    ),
    "nova": Case(
        "amazon.nova-lite-v1:0",
        lambda t, n: {
            "schemaVersion": "messages-v1",
            "messages": [{"role": "user", "content": [{"text": t}]}],
            "inferenceConfig": {"maxTokens": n},
        },
        lambda o: o["output"]["message"]["content"][0]["text"],
        lambda o: o["stopReason"],
        lambda c: c.get("contentBlockDelta", {}).get("delta", {}).get("text"),
        nova_stop,
        "end_turn",
        "max_tokens",
    ),
    "openai": Case(
        "openai.gpt-oss-20b-1:0",
        lambda t, n: {"messages": [{"role": "user", "content": t}], "max_completion_tokens": n},
        lambda o: o["choices"][0]["message"]["content"],
        lambda o: o["choices"][0]["finish_reason"],
        lambda c: c["choices"][0]["delta"].get("content"),
        lambda c: c["choices"][0]["finish_reason"],
        "stop",
        "length",
    ),
    "anthropic-messages": Case(
        "anthropic.claude-3-haiku-20240307-v1:0",
        lambda t, n: {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": n,
            "messages": [{"role": "user", "content": t}],
        },
        lambda o: o["content"][0]["text"],
        lambda o: o["stop_reason"],
        lambda c: c.get("delta", {}).get("text"),
        lambda c: c.get("delta", {}).get("stop_reason"),
        "end_turn",
        "max_tokens",
    ),
}
IDS = list(CASES)


def invoke(br: Any, model: str, body: Json) -> tuple[Json, dict[str, str]]:
    out = br.invoke_model(modelId=model, body=json.dumps(body))
    return json.loads(out["body"].read()), out["ResponseMetadata"]["HTTPHeaders"]


def stream(br: Any, model: str, body: Json) -> list[Json]:
    out = br.invoke_model_with_response_stream(modelId=model, body=json.dumps(body))
    return [json.loads(e["chunk"]["bytes"]) for e in out["body"]]


@pytest.mark.parametrize("name", IDS)
def test_invoke_model_answers_in_the_family_shape(scripted: Server, name: str) -> None:
    case = CASES[name]
    out, headers = invoke(client(scripted), case.model, case.body("Say hello.", 100))
    text = case.whole_text(out)
    assert text.startswith("You said: Say hello.") and len(text.split()) == LENGTH
    assert case.whole_stop(out) == case.natural
    assert headers["x-amzn-bedrock-output-token-count"] == str(LENGTH)


@pytest.mark.parametrize("name", IDS)
def test_the_stream_is_in_the_family_chunks_with_metrics_last(scripted: Server, name: str) -> None:
    case = CASES[name]
    br = client(scripted)
    whole, _ = invoke(br, case.model, case.body("Count.", 5))
    chunks = stream(br, case.model, case.body("Count.", 5))
    pieces = [p for p in map(case.piece, chunks) if p]
    assert len(pieces) == 5 and "".join(pieces) == case.whole_text(whole)
    stops = [case.chunk_stop(c) for c in chunks]
    assert [s for s in stops if s is not None] == [case.length]  # said once, at the end
    assert case.whole_stop(whole) == case.length
    metrics = [
        c["amazon-bedrock-invocationMetrics"]
        for c in chunks
        if "amazon-bedrock-invocationMetrics" in c
    ]
    assert metrics == [chunks[-1]["amazon-bedrock-invocationMetrics"]]
    assert metrics[0]["outputTokenCount"] == 5 and metrics[0]["inputTokenCount"] > 0
    assert metrics[0]["invocationLatency"] >= metrics[0]["firstByteLatency"] >= 0


def test_the_families_own_token_counts(scripted: Server) -> None:
    br = client(scripted)
    llama = stream(br, "meta.llama3-70b-instruct-v1:0", {"prompt": "a b c", "max_gen_len": 3})
    assert [c["prompt_token_count"] for c in llama] == [3, None, None, None]
    assert [c["generation_token_count"] for c in llama] == [1, 2, 3, 3]
    titan = stream(br, "amazon.titan-text-lite-v1", {"inputText": "a b c d"})
    assert titan[0]["inputTextTokenCount"] == 4 and titan[1]["inputTextTokenCount"] is None
    assert [c["totalOutputTextTokenCount"] for c in titan][-2:] == [None, LENGTH]
    nova = stream(br, "amazon.nova-micro-v1:0", CASES["nova"].body("x y", 4))
    assert nova[0] == {"messageStart": {"role": "assistant"}}
    assert nova[-3:-1] == [
        {"contentBlockStop": {"contentBlockIndex": 0}},
        {"messageStop": {"stopReason": "max_tokens"}},
    ]
    assert nova[-1]["metadata"]["usage"] == {"inputTokens": 2, "outputTokens": 4}
    whole, _ = invoke(br, "amazon.nova-micro-v1:0", CASES["nova"].body("x y", 4))
    assert whole["usage"]["totalTokens"] == 6


def test_cohere_chunks_carry_is_finished_and_the_whole_response_at_the_end(
    scripted: Server,
) -> None:
    br = client(scripted)
    command = stream(br, "cohere.command-light-text-v14", {"prompt": "hi", "max_tokens": 3})
    assert [c["is_finished"] for c in command] == [False, False, False, True]
    assert command[-1]["response"]["generations"][0]["text"] == "You said: hi "
    history = [{"role": "USER", "message": "Hi."}, {"role": "CHATBOT", "message": "Hello."}]
    body = {
        "message": "And now?",
        "chat_history": history,
        "preamble": "Be brief.",
        "max_tokens": 4,
    }
    r = stream(br, "cohere.command-r-v1:0", body)
    assert [c["event_type"] for c in r] == ["stream-start", *["text-generation"] * 4, "stream-end"]
    end = r[-1]["response"]
    assert [t["role"] for t in end["chat_history"]] == ["USER", "CHATBOT", "USER", "CHATBOT"]
    assert end["chat_history"][-1]["message"] == end["text"] == "You said: And now? "


@pytest.mark.parametrize(
    "model",
    [
        "us.meta.llama3-2-1b-instruct-v1:0",
        "global.meta.llama3-8b-instruct-v1:0",
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/eu.meta.llama3-8b-instruct-v1:0",
        "arn:aws:bedrock:us-east-1::foundation-model/meta.llama3-8b-instruct-v1:0",
    ],
)
def test_the_family_is_chosen_after_an_inference_profile_prefix_or_arn(
    scripted: Server, model: str
) -> None:
    out, _ = invoke(client(scripted), model, {"prompt": "hi", "max_gen_len": 2})
    assert out == {
        "generation": "You said: ",
        "prompt_token_count": 1,
        "generation_token_count": 2,
        "stop_reason": "length",
    }


def test_claude_v2_with_a_messages_body_answers_as_messages(scripted: Server) -> None:
    out, _ = invoke(
        client(scripted), "anthropic.claude-v2", CASES["anthropic-messages"].body("hi", 2)
    )
    assert out["type"] == "message" and out["content"][0]["text"] == "You said: "


def test_count_tokens_reads_an_invoke_model_body_of_any_family(scripted: Server) -> None:
    br = client(scripted)
    blob = json.dumps({"prompt": "one two three", "max_gen_len": 5}).encode()
    out = br.count_tokens(
        modelId="meta.llama3-8b-instruct-v1:0", input={"invokeModel": {"body": blob}}
    )
    assert out["inputTokens"] == 3


def test_a_failure_mid_stream_is_an_exception_frame_in_every_family(scripted: Server) -> None:
    body = {"prompt": "sluicegate:fail-after=2", "max_gen_len": 8}
    out = client(scripted).invoke_model_with_response_stream(
        modelId="meta.llama3-8b-instruct-v1:0", body=json.dumps(body)
    )
    seen: list[Json] = []
    with pytest.raises(EventStreamError, match="modelStreamErrorException"):
        for event in out["body"]:
            seen.append(json.loads(event["chunk"]["bytes"]))
    assert [c["generation"] for c in seen] == ["You ", "said: "]
    assert all(c["stop_reason"] is None for c in seen)


BAD: list[tuple[str, str, Json, str]] = [
    (
        "llama extra key",
        "meta.llama3-8b-instruct-v1:0",
        {"prompt": "hi", "max_tokens": 5},
        "extraneous key [max_tokens] is not permitted",
    ),
    (
        "llama no prompt",
        "meta.llama3-8b-instruct-v1:0",
        {"max_gen_len": 5},
        "#: required key [prompt] not found",
    ),
    (
        "llama max_gen_len 0",
        "meta.llama3-8b-instruct-v1:0",
        {"prompt": "hi", "max_gen_len": 0},
        "#/max_gen_len: 0 is not greater or equal to 1",
    ),
    (
        "llama images",
        "meta.llama3-2-11b-instruct-v1:0",
        {"prompt": "hi", "images": []},
        "[images] is not supported",
    ),
    (
        "mistral extra key",
        "mistral.mixtral-8x7b-instruct-v0:1",
        {"prompt": "hi", "max_gen_len": 5},
        "extraneous key [max_gen_len]",
    ),
    (
        "mistral stop",
        "mistral.mistral-7b-instruct-v0:2",
        {"prompt": "hi", "stop": "x"},
        "#/stop: expected a list of strings",
    ),
    (
        "titan no inputText",
        "amazon.titan-text-express-v1",
        {"prompt": "hi"},
        "extraneous key [prompt]",
    ),
    (
        "titan config key",
        "amazon.titan-text-express-v1",
        {"inputText": "hi", "textGenerationConfig": {"maxTokens": 5}},
        "#/textGenerationConfig: extraneous key [maxTokens]",
    ),
    (
        "titan config value",
        "amazon.titan-text-premier-v1:0",
        {"inputText": "hi", "textGenerationConfig": {"maxTokenCount": "5"}},
        "#/textGenerationConfig/maxTokenCount: expected an integer",
    ),
    (
        "titan temperature",
        "amazon.titan-text-express-v1",
        {"inputText": "hi", "textGenerationConfig": {"temperature": 3}},
        "#/textGenerationConfig/temperature",
    ),
    (
        "claude-v2 no max",
        "anthropic.claude-v2",
        {"prompt": "\n\nHuman: hi\n\nAssistant:"},
        "required key [max_tokens_to_sample]",
    ),
    (
        "claude-v2 no Human",
        "anthropic.claude-instant-v1",
        {"prompt": "hi", "max_tokens_to_sample": 5},
        'prompt must start with "\\n\\nHuman:" turn',
    ),
    (
        "claude-v2 no Assistant",
        "anthropic.claude-v2",
        {"prompt": "\n\nHuman: hi", "max_tokens_to_sample": 5},
        'prompt must end with "\\n\\nAssistant:" turn',
    ),
    ("cohere r no message", "cohere.command-r-v1:0", {"prompt": "hi"}, "extraneous key [prompt]"),
    (
        "cohere r history role",
        "cohere.command-r-v1:0",
        {"message": "hi", "chat_history": [{"role": "BOT", "message": "x"}]},
        "#/chat_history/0/role",
    ),
    (
        "cohere r tools",
        "cohere.command-r-v1:0",
        {"message": "hi", "tools": []},
        "[tools] is not supported",
    ),
    (
        "cohere command no prompt",
        "cohere.command-text-v14",
        {"message": "hi"},
        "extraneous key [message]",
    ),
    (
        "cohere num_generations",
        "cohere.command-text-v14",
        {"prompt": "hi", "num_generations": 3},
        "num_generations",
    ),
    (
        "nova config key",
        "us.amazon.nova-pro-v1:0",
        {
            "messages": [{"role": "user", "content": [{"text": "hi"}]}],
            "inferenceConfig": {"max_tokens": 5},
        },
        "#/inferenceConfig: extraneous key [max_tokens]",
    ),
    (
        "nova string content",
        "amazon.nova-lite-v1:0",
        {"messages": [{"role": "user", "content": "hi"}]},
        "#/messages/0/content",
    ),
    (
        "nova image",
        "amazon.nova-lite-v1:0",
        {"messages": [{"role": "user", "content": [{"image": {}}]}]},
        "image blocks are not supported",
    ),
    (
        "nova tools",
        "amazon.nova-lite-v1:0",
        {"messages": [], "toolConfig": {}},
        "[toolConfig] is not supported",
    ),
    ("openai no messages", "openai.gpt-oss-120b-1:0", {"max_tokens": 5}, "messages"),
    (
        "openai unknown key",
        "openai.gpt-oss-20b-1:0",
        {"messages": [{"role": "user", "content": "hi"}], "max_gen_len": 5},
        "max_gen_len",
    ),
    (
        "unknown prefix keeps Messages",
        "writer.palmyra-x5-v1:0",
        {"prompt": "hi"},
        "extraneous key [prompt]",
    ),
]


@pytest.mark.parametrize("streamed", [False, True], ids=["invoke", "stream"])
@pytest.mark.parametrize(("case", "model", "body", "says"), BAD, ids=[b[0] for b in BAD])
def test_validation_errors_name_the_familys_own_keys(
    scripted: Server, case: str, model: str, body: Json, says: str, streamed: bool
) -> None:
    br = client(scripted)
    call = br.invoke_model_with_response_stream if streamed else br.invoke_model
    with pytest.raises(br.exceptions.ValidationException) as raised:
        call(modelId=model, body=json.dumps(body))
    assert says in raised.value.response["Error"]["Message"]


# -- the real model -------------------------------------------------------------------------------

LLAMA3 = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nAnswer in one word."
    "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat colour is the sky?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n"
)


def test_a_llama_3_template_prompt_reaches_the_model_as_a_conversation(server: Server) -> None:
    br = server.bedrock()
    model = "meta.llama3-8b-instruct-v1:0"
    out = br.invoke_model(modelId=model, body=json.dumps({"prompt": LLAMA3, "max_gen_len": 8}))
    gen = server.gateway.generations[out["ResponseMetadata"]["RequestId"]]
    assert gen.roles == ("user",)  # the template's tokens are not the user's text
    whole = json.loads(out["body"].read())
    assert whole["generation"].strip() and "<|" not in whole["generation"]
    assert whole["stop_reason"] in ("stop", "length") and whole["generation_token_count"] <= 8


def test_a_nova_stream_from_the_real_model(server: Server) -> None:
    chunks = stream(
        server.bedrock(), "us.amazon.nova-lite-v1:0", CASES["nova"].body("Say hello.", 8)
    )
    texts = [CASES["nova"].piece(c) for c in chunks]
    assert sum(1 for t in texts if t) >= 2
    assert next(iter(chunks[0])) == "messageStart" and next(iter(chunks[-1])) == "metadata"
    assert chunks[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] <= 8
