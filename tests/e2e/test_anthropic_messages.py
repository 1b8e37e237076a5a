"""The Anthropic Messages door (`POST /v1/messages`) through the stock `anthropic` SDK and raw
httpx against a real uvicorn: streams, whole messages, count_tokens, errors before and during
the stream, heartbeats, the api_key, disconnects, and resuming any generation's events."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from sluicegate.config import Route, Settings
from sluicegate.events import TextDelta
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider
from tests.conftest import Server, serve, stop, wait_until

anthropic = pytest.importorskip("anthropic")

KEY = "k3y-for-the-messages-door"
EVENTS = ["message_start", "content_block_start", "ping", "content_block_delta"]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def sdk(url: str, **options: Any) -> Any:
    return anthropic.Anthropic(base_url=url, **{"api_key": "k", "max_retries": 0, **options})


@dataclass
class Sse:
    """One event as it came on the wire (id None: the line was absent)."""

    event: str
    data: dict[str, Any]
    id: str | None


def sse_events(lines: Iterator[str]) -> Iterator[Sse]:
    """Events from `text/event-stream` lines, each field as sent (no id inherited)."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if fields:
                yield Sse(fields["event"], json.loads(fields["data"]), fields.get("id"))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


def stream_body(text: str, max_tokens: int = 32, model: str = "scripted") -> dict[str, Any]:
    return {"model": model, "max_tokens": max_tokens, "stream": True, "messages": user(text)}


def post_stream(server: Server, body: dict[str, Any]) -> list[Sse]:
    with httpx.stream("POST", server.url + "/v1/messages", json=body, timeout=30) as r:
        assert r.status_code == 200
        return list(sse_events(r.iter_lines()))


def text_of(events: list[Sse]) -> str:
    return "".join(e.data["delta"]["text"] for e in events if e.event == "content_block_delta")


@pytest.fixture(scope="module")
def beating() -> Iterator[Server]:
    """Scripted models only (anything else is unknown), heartbeats after 50 ms of silence, a
    small body limit."""
    settings = Settings(
        routes=[Route(match="scripted*", provider="scripted")],
        sse_heartbeat_seconds=0.05,
        max_body_bytes=4096,
    )
    s = serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.001, length=64)}))
    yield s
    stop(s)


@pytest.fixture(scope="module")
def keyed() -> Iterator[Server]:
    settings = Settings(routes=[Route(match="*", provider="scripted")], api_key=KEY)
    s = serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.001, length=16)}))
    yield s
    stop(s)


# -- the SDK: stream, create, count_tokens ---------------------------------------------------


def test_messages_stream_with_the_sdk(server: Server) -> None:
    kinds: list[str] = []
    with sdk(server.url).messages.stream(
        model="scripted-claude", max_tokens=20, messages=user("Name three rivers.")
    ) as stream:
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_message()
        pieces = [e for e in kinds if e == "text"]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert len(pieces) == 20
    assert final.model == "scripted-claude"  # the request's model, echoed
    assert final.content[0].text.startswith("You said: Name three rivers. Streaming")
    assert final.stop_reason == "max_tokens" and final.stop_sequence is None
    assert final.usage.input_tokens == 3 and final.usage.output_tokens == 20
    gen = server.gateway.generations[final.id]
    assert gen.route == "anthropic" and gen.stop_reason == "max_tokens"


def test_text_stream_pieces_make_the_final_text(server: Server) -> None:
    with sdk(server.url).messages.stream(
        model="scripted", max_tokens=100, messages=user("Café 🙂")
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 20 and "".join(pieces) == final.content[0].text
    assert "日本語" in final.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 64


def test_messages_create_with_the_sdk(server: Server) -> None:
    message = sdk(server.url).messages.create(
        model="scripted-x", max_tokens=8, system="Be terse.", messages=user("Hi there")
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "scripted-x"
    assert message.content[0].type == "text"
    assert message.content[0].text == "You said: Hi there Streaming puts the first "
    assert message.stop_reason == "max_tokens"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 8)


def test_the_embedded_model_through_the_sdk(server: Server) -> None:
    client = sdk(server.url)
    with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=24, messages=user("Name three rivers.")
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) >= 3 and "".join(pieces) == final.content[0].text
    assert final.model == "claude-sonnet-4-5"
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert 0 < final.usage.output_tokens <= 24
    counted = client.messages.count_tokens(
        model="claude-sonnet-4-5", messages=user("Name three rivers.")
    )
    assert counted.input_tokens == final.usage.input_tokens > 0


def test_hosting_options_are_accepted_and_sampling_goes_as_extra_body(server: Server) -> None:
    message = sdk(server.url).messages.create(
        model="scripted",
        max_tokens=3,
        messages=user("hi"),
        service_tier="auto",
        inference_geo="us",
        speed="standard",
        cache_control={"type": "ephemeral"},
        metadata={"user_id": "u-1"},
        stop_sequences=["never"],
        extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 5},  # no longer SDK arguments
    )
    assert message.usage.output_tokens == 3
    request = server.gateway.generations[message.id].request
    assert (request.temperature, request.top_p, request.top_k) == (0.5, 0.9, 5)
    assert request.stop_sequences == ("never",)


def test_count_tokens(server: Server) -> None:
    client = sdk(server.url)
    counted = client.messages.count_tokens(
        model="scripted", system="Be brief.", messages=user("one two three")
    )
    assert counted.input_tokens == 5
    message = client.messages.create(
        model="scripted", max_tokens=1, system="Be brief.", messages=user("one two three")
    )
    assert message.usage.input_tokens == counted.input_tokens


# -- errors before the stream ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ({"max_tokens": -5, "messages": []}, "messages: expected a non-empty list"),
        ({"max_tokens": -5, "messages": user("hi")}, "max_tokens: -5 is not greater or equal"),
        ({"max_tokens": 5, "messages": user("hi"), "extra_body": {"top_p": 3}}, "top_p: 3 is"),
        (
            {"max_tokens": 5, "messages": user("hi"), "tools": [{"type": "bash_20250124"}]},
            "server tools ('bash_20250124') are not supported",
        ),
        (
            {"max_tokens": 5, "messages": user("hi"), "output_config": {}},
            "[output_config] is not supported",
        ),
    ],
)
def test_a_bad_request_is_the_sdks_bad_request_error(
    server: Server, request_: dict[str, Any], expected: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        sdk(server.url).messages.create(model="scripted", **request_)
    assert info.value.status_code == 400
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert expected in info.value.body["error"]["message"]


def test_a_bad_stream_request_fails_before_any_event(server: Server) -> None:
    with (
        pytest.raises(anthropic.BadRequestError),
        sdk(server.url).messages.stream(model="scripted", max_tokens=0, messages=user("x")),
    ):
        pass


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{nope", "the body is not valid JSON"),
        (json.dumps({"max_tokens": 5, "messages": user("x")}).encode(), "model: Field required"),
        (
            json.dumps({"model": "scripted", "messages": user("x")}).encode(),
            "max_tokens: Field required",
        ),
        (
            json.dumps(
                {"model": "s", "max_tokens": 5, "messages": user("x"), "anthropic_version": "v"}
            ).encode(),
            "anthropic_version: Extra inputs are not permitted",
        ),
        (
            json.dumps(
                {"model": "s", "max_tokens": 5, "messages": user("x"), "stream": 1}
            ).encode(),
            "stream: expected a boolean, found 1",
        ),
    ],
)
def test_raw_bad_bodies_get_anthropics_error_shape(
    server: Server, body: bytes, expected: str
) -> None:
    r = httpx.post(server.url + "/v1/messages", content=body)
    assert r.status_code == 400
    error = r.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert expected in error["error"]["message"]


def test_an_unknown_model_is_not_found(beating: Server) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        sdk(beating.url).messages.create(model="claude-x", max_tokens=5, messages=user("hi"))
    assert info.value.body["error"]["type"] == "not_found_error"
    assert "claude-x" in info.value.body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError):
        sdk(beating.url).messages.count_tokens(model="claude-x", messages=user("hi"))


def test_an_unknown_route_is_not_found(server: Server) -> None:
    assert httpx.post(server.url + "/v1/messages/nope", json={}).status_code == 404
    assert httpx.get(server.url + "/v1/messages").status_code == 404
    assert httpx.get(server.url + "/sluicegate/generations/msg_nope/events").json() == {
        "type": "error",
        "error": {
            "type": "not_found_error",
            "message": "No such generation (or it ended long ago).",
        },
    }


def test_a_body_over_the_limit_is_413(beating: Server) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        sdk(beating.url).messages.create(
            model="scripted", max_tokens=5, messages=user("word " * 2000)
        )
    assert info.value.status_code == 413
    assert info.value.body["error"]["type"] == "request_too_large"


def test_a_failure_before_the_answer_of_create_is_a_500_api_error(server: Server) -> None:
    with pytest.raises(anthropic.InternalServerError) as info:
        sdk(server.url).messages.create(
            model="scripted", max_tokens=20, messages=user("sluicegate:fail-after=2")
        )
    assert info.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": "Scripted failure after 2 tokens."},
    }


# -- errors in the stream ------------------------------------------------------------------------


def test_a_failure_mid_stream_raises_the_sdks_api_error(server: Server) -> None:
    pieces: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as info,
        sdk(server.url).messages.stream(
            model="scripted", max_tokens=20, messages=user("sluicegate:fail-after=3")
        ) as stream,
    ):
        for text in stream.text_stream:
            pieces.append(text)
    assert pieces == ["You ", "said: ", "sluicegate:fail-after=3 "]
    assert isinstance(info.value, anthropic.APIError)
    assert info.value.body["error"] == {
        "type": "api_error",
        "message": "Scripted failure after 3 tokens.",
    }


def test_a_failure_mid_stream_is_the_last_event_on_the_wire(server: Server) -> None:
    events = post_stream(server, stream_body("sluicegate:fail-after=2"))
    assert [e.event for e in events][-3:] == ["content_block_delta", "content_block_delta", "error"]
    assert events[-1].data == {
        "type": "error",
        "error": {"type": "api_error", "message": "Scripted failure after 2 tokens."},
    }
    assert not any(e.event == "message_delta" for e in events)


# -- the wire: ids, headers, heartbeats ---------------------------------------------------------


def test_every_event_has_its_log_index_as_id_and_the_stream_headers(server: Server) -> None:
    url = server.url + "/v1/messages"
    with httpx.stream("POST", url, json=stream_body("Hello", max_tokens=5), timeout=30) as r:
        headers = r.headers
        events = list(sse_events(r.iter_lines()))
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache" and headers["x-accel-buffering"] == "no"
    assert [e.event for e in events] == [
        *EVENTS,
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    # The ping the API sends after the block start shares that event's id.
    assert [e.id for e in events] == ["1", "2", "2", *[str(i) for i in range(3, 11)]]
    gen = server.gateway.generations[events[0].data["message"]["id"]]
    assert headers["request-id"] == gen.id and len(gen.log) == 10
    assert events[-2].data == {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
        "usage": {"output_tokens": 5},
    }


def test_heartbeats_are_pings_between_slow_deltas(beating: Server) -> None:
    events = post_stream(beating, stream_body("sluicegate:delay-ms=200", max_tokens=3))
    kinds = [e.event for e in events]
    assert kinds.count("content_block_delta") == 3
    beats = [i for i, e in enumerate(events) if e.event == "ping" and e.id is None]
    first, last = (
        kinds.index("content_block_delta"),
        len(kinds) - kinds[::-1].index("content_block_delta"),
    )
    assert sum(first < i < last for i in beats) >= 4  # at least two between each pair
    assert all(events[i].data == {"type": "ping"} for i in beats)
    # The SDK reads through them.
    with sdk(beating.url).messages.stream(
        model="scripted", max_tokens=2, messages=user("sluicegate:delay-ms=150")
    ) as stream:
        assert len(list(stream.text_stream)) == 2


# -- the api_key --------------------------------------------------------------------------------


def test_with_an_api_key_a_missing_or_wrong_key_is_401(keyed: Server) -> None:
    r = httpx.post(keyed.url + "/v1/messages", json=stream_body("hi"))
    assert r.status_code == 401
    assert r.json()["error"] == {
        "type": "authentication_error",
        "message": "x-api-key header is required",
    }
    with pytest.raises(anthropic.AuthenticationError) as info:
        sdk(keyed.url, api_key="wrong").messages.create(
            model="m", max_tokens=5, messages=user("hi")
        )
    assert info.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        sdk(keyed.url, api_key="wrong").messages.count_tokens(model="m", messages=user("hi"))


def test_with_an_api_key_the_right_key_gets_through(keyed: Server) -> None:
    by_header = sdk(keyed.url, api_key=KEY).messages.create(
        model="m", max_tokens=3, messages=user("hi")
    )
    assert by_header.usage.output_tokens == 3
    bearer = anthropic.Anthropic(base_url=keyed.url, auth_token=KEY, max_retries=0)
    with bearer.messages.stream(model="m", max_tokens=3, messages=user("hi")) as stream:
        assert len(list(stream.text_stream)) == 3
    assert (
        sdk(keyed.url, api_key=KEY).messages.count_tokens(model="m", messages=user("hi"))
    ).input_tokens == 1
    # The same key is the same owner, whichever header carried it.
    owners = {g.owner for g in keyed.gateway.generations.values()}
    assert len(owners) == 1 and owners.pop().startswith("bearer:")


def test_without_an_api_key_any_key_and_any_version_are_accepted(server: Server) -> None:
    headers = {"x-api-key": "whatever", "anthropic-version": "1999-01-01"}
    body = {"model": "scripted", "max_tokens": 2, "messages": user("hi")}
    r = httpx.post(server.url + "/v1/messages", json=body, headers=headers)
    assert r.status_code == 200 and r.json()["usage"]["output_tokens"] == 2
    assert httpx.post(server.url + "/v1/messages", json=body).status_code == 200


# -- disconnects --------------------------------------------------------------------------------


def test_a_client_that_leaves_mid_stream_stops_the_producer(server: Server) -> None:
    body = stream_body("sluicegate:delay-ms=20", max_tokens=64)
    with httpx.stream("POST", server.url + "/v1/messages", json=body, timeout=30) as r:
        events = sse_events(r.iter_lines())
        gen_id = next(events).data["message"]["id"]
        deltas = 0
        for event in events:
            deltas += event.event == "content_block_delta"
            if deltas == 3:
                break
    gen = server.gateway.generations[gen_id]
    assert wait_until(lambda: gen.done)
    assert gen.stop_reason == "disconnected"
    info = httpx.get(f"{server.url}/sluicegate/generations/{gen_id}").json()
    assert info["stop_reason"] == "disconnected"
    produced = info["produced_tokens"]
    assert 3 <= produced < 64
    time.sleep(0.3)  # fifteen steps of this pace: nothing more is produced
    assert server.gateway.describe(gen)["produced_tokens"] == produced
    # Read back through the events route, the early end is an error, never a stop reason.
    with httpx.stream("GET", f"{server.url}/sluicegate/generations/{gen_id}/events") as r:
        replay = list(sse_events(r.iter_lines()))
    assert replay[-1].event == "error" and replay[-1].data["error"]["type"] == "api_error"
    assert "client left" in replay[-1].data["error"]["message"]
    assert not any(e.event == "message_delta" for e in replay)
    assert replay[-1].id is not None
    after_the_error = {"Last-Event-ID": replay[-1].id}
    assert httpx.get(r.url, headers=after_the_error).status_code == 204


# -- resuming: GET /sluicegate/generations/{id}/events ---------------------------------------------


def consume_in_background(
    server: Server, body: dict[str, Any]
) -> tuple[str, list[Sse], threading.Thread]:
    """Stream `body` to its end in a thread; returns the generation id once it is known, the
    list the thread fills, and the thread."""
    got: list[Sse] = []
    ids: queue.Queue[str] = queue.Queue()

    def run() -> None:
        with httpx.stream("POST", server.url + "/v1/messages", json=body, timeout=30) as r:
            for event in sse_events(r.iter_lines()):
                if event.event == "message_start":
                    ids.put(event.data["message"]["id"])
                got.append(event)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return ids.get(timeout=10), got, thread


def logged(events: list[Sse]) -> list[Sse]:
    """The events that come from the log (heartbeats carry no id)."""
    return [e for e in events if e.id is not None]


def test_resume_with_last_event_id_has_no_gap_and_no_repeat(server: Server) -> None:
    body = stream_body("sluicegate:delay-ms=15", max_tokens=40)
    gen_id, original, thread = consume_in_background(server, body)
    url = f"{server.url}/sluicegate/generations/{gen_id}/events"
    first: list[Sse] = []
    with httpx.stream("GET", url, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        for event in sse_events(r.iter_lines()):
            first.append(event)
            if len([e for e in first if e.event == "content_block_delta"]) == 5:
                break  # the connection drops mid-answer
    gen = server.gateway.generations[gen_id]
    assert not gen.done  # still generating: the rest is live tail
    last_id = logged(first)[-1].id
    assert last_id is not None
    with httpx.stream("GET", url, headers={"Last-Event-ID": last_id}, timeout=30) as r:
        second = list(sse_events(r.iter_lines()))
    thread.join(10)
    assert gen.done and gen.stop_reason == "max_tokens"
    resumed = logged(first) + logged(second)
    assert [(e.id, e.event, e.data) for e in resumed] == [
        (e.id, e.event, e.data) for e in logged(original)
    ]
    assert text_of(resumed) == text_of(original)
    assert text_of(resumed) == "".join(e.text for e in gen.log if isinstance(e, TextDelta))
    assert resumed[-1].event == "message_stop"


def test_after_query_and_header_precedence(server: Server) -> None:
    events = post_stream(server, stream_body("Hello", max_tokens=5))
    gen_id = events[0].data["message"]["id"]
    url = f"{server.url}/sluicegate/generations/{gen_id}/events"

    def replay(**kwargs: Any) -> list[Sse]:
        with httpx.stream("GET", url, timeout=30, **kwargs) as r:
            return list(sse_events(r.iter_lines()))

    assert [(e.id, e.event) for e in replay()] == [(e.id, e.event) for e in events]
    assert [e.id for e in replay(params={"after": 8})] == ["9", "10"]
    # EventSource reconnects to the same URL with the header: the header wins.
    assert [e.id for e in replay(params={"after": 2}, headers={"Last-Event-ID": "9"})] == ["10"]
    # Past the end of an ended generation: 204, which stops an EventSource reconnecting.
    r = httpx.get(url, headers={"Last-Event-ID": "10"})
    assert r.status_code == 204 and r.content == b""
    assert [e.event for e in replay(params={"after": 1})][:2] == ["content_block_start", "ping"]
    for bad in ("11", "-1", "x"):
        r = httpx.get(url, params={"after": bad})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_events_of_a_generation_from_another_door(server: Server) -> None:
    out = server.bedrock().converse(
        modelId="scripted",
        messages=[{"role": "user", "content": [{"text": "From Converse"}]}],
        inferenceConfig={"maxTokens": 4},
    )
    gen_id = out["ResponseMetadata"]["RequestId"]
    with httpx.stream("GET", f"{server.url}/sluicegate/generations/{gen_id}/events") as r:
        events = list(sse_events(r.iter_lines()))
    assert [e.event for e in events][:3] == ["message_start", "content_block_start", "ping"]
    assert text_of(events) == out["output"]["message"]["content"][0]["text"]
    assert events[-2].data["delta"]["stop_reason"] == "max_tokens"


def test_a_watcher_leaving_does_not_stop_the_generation(server: Server) -> None:
    body = stream_body("sluicegate:delay-ms=10", max_tokens=20)
    gen_id, _, thread = consume_in_background(server, body)
    url = f"{server.url}/sluicegate/generations/{gen_id}/events"
    with httpx.stream("GET", url, timeout=30) as r:
        next(sse_events(r.iter_lines()))
    thread.join(10)
    assert server.gateway.generations[gen_id].stop_reason == "max_tokens"
