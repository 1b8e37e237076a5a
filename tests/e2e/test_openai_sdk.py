"""The stock `openai` SDK against a real server: Chat Completions, Models and the Responses API
(stream, background, resume with starting_after, cancel). Mostly on the scripted provider;
a few calls on the embedded model."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sluicegate.config import Route, Settings
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider
from tests.conftest import Server, serve, stop, wait_until

openai = pytest.importorskip("openai")

HELLO = [{"role": "user", "content": "Say hello."}]
SLOW = "sluicegate:delay-ms=40"


def sdk(server: Server, key: str = "k") -> Any:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def produced(server: Server, gen_id: str) -> int:
    count: int = server.gateway.providers["scripted"].produced[gen_id]  # type: ignore[attr-defined]
    return count


def stopped(server: Server, gen_id: str, reason: str) -> None:
    """The generation ended with `reason` and its producer makes nothing more."""
    gen = server.gateway.generations[gen_id]
    assert wait_until(lambda: gen.done)
    assert gen.stop_reason == reason
    made = produced(server, gen_id)
    assert made < 64
    time.sleep(0.3)
    assert produced(server, gen_id) == made
    info = httpx.get(f"{server.url}/sluicegate/generations/{gen_id}").json()
    assert info["stop_reason"] == reason and info["produced_tokens"] == made


# -- Chat Completions ---------------------------------------------------------------------------


def test_chat_stream_with_usage(server: Server) -> None:
    stream = sdk(server).chat.completions.create(
        model="scripted", messages=HELLO, max_tokens=10, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert len({(c.id, c.created) for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("You said: Say hello.") and len(text.split()) == 10
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[:-1] == [None] * (len(finishes) - 1) and finishes[-1] == "length"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 10
    assert last.usage.total_tokens == last.usage.prompt_tokens + 10


def test_chat_stream_on_the_wire(server: Server) -> None:
    body = {"model": "scripted", "messages": HELLO, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    ids = [int(e.split("\n")[0].removeprefix("id: ")) for e in events]
    assert ids == sorted(ids) and ids[0] == 1
    assert events[-1].endswith("data: [DONE]")
    assert '"usage"' not in raw  # not asked for


def test_chat_without_streaming(server: Server) -> None:
    out = sdk(server).chat.completions.create(model="scripted", messages=HELLO, max_tokens=200)
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content.startswith("You said: Say hello.")
    assert out.choices[0].finish_reason == "stop"  # the script ended by itself, at 64 words
    assert out.usage.completion_tokens == 64
    assert out._request_id in server.gateway.generations


def test_stop_sequences_finish_with_stop(server: Server) -> None:
    c = sdk(server)
    out = c.chat.completions.create(
        model="scripted", messages=HELLO, max_tokens=60, stop=["screen"]
    )
    text = out.choices[0].message.content
    assert out.choices[0].finish_reason == "stop"
    assert "screen" not in text and text.endswith("on ")
    streamed = c.chat.completions.create(
        model="scripted", messages=HELLO, max_tokens=60, stop="screen", stream=True
    )
    chunks = [ch for ch in streamed if ch.choices]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_the_sdks_chat_stream_helper(server: Server) -> None:
    with sdk(server).chat.completions.stream(
        model="scripted", messages=HELLO, max_tokens=200, stream_options={"include_usage": True}
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "".join(deltas)
    assert final.choices[0].finish_reason == "stop" and final.usage.completion_tokens == 64


def test_finish_reason_length(server: Server) -> None:
    out = sdk(server).chat.completions.create(
        model="scripted", messages=HELLO, max_completion_tokens=4
    )
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 4


def test_models(server: Server) -> None:
    c = sdk(server)
    ids = [m.id for m in c.models.list()]
    assert "smollm2-135m-instruct" in ids and "scripted" in ids
    model = c.models.retrieve("gpt-4o-mini")  # routed by the catch-all glob
    assert (model.id, model.object, model.owned_by) == ("gpt-4o-mini", "model", "sluicegate")


def test_a_bad_request_is_a_400_in_openais_shape(server: Server) -> None:
    c = sdk(server)
    with pytest.raises(openai.BadRequestError) as caught:
        c.chat.completions.create(model="scripted", max_tokens=16, messages="nope")
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == "messages"
    assert caught.value.body["type"] == "invalid_request_error"
    assert "messages" in caught.value.message
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="scripted", messages=HELLO, n=3)
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    with pytest.raises(openai.BadRequestError, match="image_url"):
        c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": [image]}])


def test_a_body_over_the_limit_is_413(server: Server) -> None:
    limit = server.gateway.settings.max_body_bytes
    r = httpx.post(server.url + "/v1/chat/completions", content=b"x" * (limit + 1))
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"


def test_a_failure_mid_stream_raises_and_is_no_finish(server: Server) -> None:
    messages = [{"role": "user", "content": "Go. sluicegate:fail-after=3"}]
    stream = sdk(server).chat.completions.create(
        model="scripted", messages=messages, max_tokens=20, stream=True
    )
    got: list[Any] = []
    with pytest.raises(openai.APIError, match="Scripted failure after 3 tokens"):
        for chunk in stream:
            got.append(chunk)
    assert len(got) == 4  # the role chunk, then three words
    assert all(c.choices[0].finish_reason is None for c in got)
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(server).chat.completions.create(model="scripted", messages=messages, max_tokens=20)
    assert caught.value.body["type"] == "server_error"


def test_a_disconnect_stops_the_producer(server: Server) -> None:
    messages = [{"role": "user", "content": f"Go. {SLOW}"}]
    stream = sdk(server).chat.completions.create(
        model="scripted", messages=messages, max_tokens=64, stream=True
    )
    gen_id = stream.response.headers["x-request-id"]
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    stopped(server, gen_id, "disconnected")


def test_the_embedded_model_streams(server: Server) -> None:
    stream = sdk(server).chat.completions.create(
        model="gpt-4o-mini", max_tokens=24, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Name three rivers."}],
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].usage is not None and 0 < chunks[-1].usage.completion_tokens <= 24
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


# -- with an api_key, and heartbeats -------------------------------------------------------------

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def keyed() -> Iterator[Server]:
    settings = Settings(
        routes=[Route(match="*", provider="scripted")], api_key=KEY, sse_heartbeat_seconds=0.05
    )
    s = serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.002)}))
    yield s
    stop(s)


def test_the_api_key_is_required(keyed: Server) -> None:
    assert sdk(keyed, KEY).chat.completions.create(model="m", messages=HELLO, max_tokens=2)
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(keyed, "wrong").chat.completions.create(model="m", messages=HELLO, max_tokens=2)
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key"
    assert caught.value.body["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        sdk(keyed, "wrong").models.list()
    r = httpx.get(keyed.url + "/v1/models")
    assert r.status_code == 401 and "didn't provide" in r.json()["error"]["message"]


def test_heartbeats_are_comments_the_sdk_ignores(keyed: Server) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "sluicegate:delay-ms=200"}],
            "max_tokens": 2, "stream": True}  # fmt: skip
    auth = {"authorization": f"Bearer {KEY}"}
    r = httpx.post(keyed.url + "/v1/chat/completions", json=body, headers=auth, timeout=30)
    # a comment line, but no blank line after it: that would dispatch an empty event to the SDK
    assert "\n:\nid: " in r.text and ":\n\n" not in r.text
    stream = sdk(keyed, KEY).chat.completions.create(**body)
    assert len([c for c in stream if c.choices]) == 4


# -- Responses ----------------------------------------------------------------------------------


def test_responses_stream(server: Server) -> None:
    events = list(
        sdk(server).responses.create(
            model="scripted", input="Say hi.", max_output_tokens=200, stream=True
        )
    )
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    text = "".join(e.delta for e in deltas)
    final = events[-1].response
    assert final.id.startswith("resp_") and final.status == "completed"
    assert final.output_text == text and text.startswith("You said: Say hi.")
    assert {(e.item_id, e.output_index, e.content_index) for e in deltas} == {
        (final.output[0].id, 0, 0)
    }
    assert final.usage.output_tokens == 64


def test_the_sdks_responses_stream_helper(server: Server) -> None:
    with sdk(server).responses.stream(model="scripted", input="Hi", max_output_tokens=200) as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert final.status == "completed" and final.output_text == "".join(deltas)


def test_responses_without_streaming(server: Server) -> None:
    c = sdk(server)
    r = c.responses.create(
        model="scripted",
        instructions="Be brief.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Hello there."}]}],
        max_output_tokens=200,
    )
    assert r.object == "response" and r.status == "completed"
    assert r.output_text.startswith("You said: Hello there.")
    assert r.output[0].content[0].annotations == []
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.instructions == "Be brief."
    assert c.responses.retrieve(r.id).output_text == r.output_text
    cut = c.responses.create(model="scripted", input="Hi", max_output_tokens=5)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    assert len(cut.output_text.split()) == 5


def test_background_drop_and_resume_with_starting_after(server: Server) -> None:
    c = sdk(server)
    stream = c.responses.create(
        model="scripted", input=f"Go. {SLOW}", max_output_tokens=200, background=True, stream=True
    )
    first: list[str] = []
    rid, last = None, -1
    for ev in stream:
        if ev.type == "response.created":
            rid = ev.response.id
        last = ev.sequence_number
        if ev.type == "response.output_text.delta":
            first.append(ev.delta)
        if len(first) == 5:
            break
    stream.close()
    assert rid is not None
    gen_id = stream.response.headers["x-request-id"]
    time.sleep(0.2)
    assert not server.gateway.generations[gen_id].done  # the drop did not stop it
    seqs, rest, done = [], [], None
    for ev in c.responses.retrieve(rid, stream=True, starting_after=last):
        seqs.append(ev.sequence_number)
        if ev.type == "response.output_text.delta":
            rest.append(ev.delta)
        if ev.type == "response.completed":
            done = ev.response
    assert seqs == list(range(last + 1, last + 1 + len(seqs)))
    assert done is not None and done.status == "completed"
    assert done.output_text == "".join(first + rest)
    assert server.gateway.generations[gen_id].stop_reason == "end_turn"


def test_a_replay_numbers_the_events_as_the_live_stream_did(server: Server) -> None:
    c = sdk(server)
    live = list(c.responses.create(model="scripted", input="Hi", max_output_tokens=8, stream=True))
    again = list(c.responses.retrieve(live[-1].response.id, stream=True))
    assert [e.to_dict() for e in again] == [e.to_dict() for e in live]
    tail = list(c.responses.retrieve(live[-1].response.id, stream=True, starting_after=10))
    assert [e.to_dict() for e in tail] == [e.to_dict() for e in live[11:]]


def test_last_event_id_resumes_too(server: Server) -> None:
    r = sdk(server).responses.create(model="scripted", input="Hi", max_output_tokens=3)
    url = f"{server.url}/v1/responses/{r.id}?stream=true"
    headers = {"last-event-id": "6", "authorization": "Bearer k"}
    with httpx.stream("GET", url, headers=headers) as got:
        assert got.status_code == 200
        text = got.read().decode()
    ids = [line.removeprefix("id: ") for line in text.splitlines() if line.startswith("id: ")]
    assert ids and ids[0] == "7" and "event: response.incomplete" in text


def test_cancel_a_background_response(server: Server) -> None:
    c = sdk(server)
    r = c.responses.create(
        model="scripted", input=f"Write an essay. {SLOW}", max_output_tokens=64, background=True
    )
    assert r.status == "in_progress" and r.background
    time.sleep(0.2)
    cancelled = c.responses.cancel(r.id)
    assert cancelled.status == "cancelled"
    assert c.responses.retrieve(r.id).status == "cancelled"
    gen_id = cancelled._request_id
    stopped(server, gen_id, "cancelled")
    with pytest.raises(openai.BadRequestError):
        c.responses.cancel(c.responses.create(model="scripted", input="Hi", max_output_tokens=2).id)


def test_a_streamed_response_that_is_not_background_stops_on_disconnect(server: Server) -> None:
    stream = sdk(server).responses.create(
        model="scripted", input=f"Go. {SLOW}", max_output_tokens=64, stream=True
    )
    for ev in stream:
        if ev.type == "response.output_text.delta":
            break
    stream.close()
    stopped(server, stream.response.headers["x-request-id"], "disconnected")


def test_responses_belong_to_their_caller(server: Server) -> None:
    r = sdk(server, "alice").responses.create(model="scripted", input="Hi", max_output_tokens=2)
    with pytest.raises(openai.NotFoundError):
        sdk(server, "bob").responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        sdk(server).responses.retrieve("resp_nothing")
    sdk(server, "alice").responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        sdk(server, "alice").responses.retrieve(r.id)


def test_a_bad_responses_request(server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server).responses.create(model="scripted", input=[{"type": "web_search_call"}])
    assert caught.value.body["param"] == "input[0].type"


def test_the_embedded_model_answers_a_response(server: Server) -> None:
    r = sdk(server).responses.create(
        model="gpt-4o-mini", input="Name a river.", max_output_tokens=16
    )
    assert r.status in ("completed", "incomplete") and r.output_text.strip()
    assert 0 < r.usage.output_tokens <= 16


def test_an_unknown_path_is_answered_in_the_shape_of_its_api(server: Server) -> None:
    openai_missing = httpx.post(server.url + "/v1/embeddingz", json={})
    assert openai_missing.status_code == 404
    assert openai_missing.json()["error"]["type"] == "not_found_error"
    anthropic_missing = httpx.post(server.url + "/v1/messages/batches", json={})
    assert anthropic_missing.status_code == 404
    assert anthropic_missing.json()["error"]["type"] == "not_found_error"
    assert anthropic_missing.json()["type"] == "error"
    bedrock_missing = httpx.post(server.url + "/model/x/nope", json={})
    assert bedrock_missing.headers["x-amzn-ErrorType"].startswith("UnknownOperationException")
