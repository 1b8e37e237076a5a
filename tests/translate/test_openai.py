"""OpenAI Chat Completions and Responses shapes <-> canonical form, without a server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluicegate import errors
from sluicegate.events import (
    BlockStart,
    BlockStop,
    ChatRequest,
    ErrorEvent,
    Event,
    Message,
    MessageDelta,
    MessageStart,
    MessageStop,
    Metrics,
    TextDelta,
    Usage,
)
from sluicegate.translate import openai, openai_fields
from sluicegate.translate.openai_responses import (
    ResponseCall,
    ResponseMeta,
    ResponseStream,
    parse_request,
    replay,
)


def raw(**body: Any) -> bytes:
    return json.dumps(body).encode()


def chat(**body: Any) -> openai.ChatCall:
    body.setdefault("model", "gpt-4o-mini")
    body.setdefault("messages", [{"role": "user", "content": "Hi"}])
    return openai.parse_chat(raw(**body))


def text(t: str) -> dict[str, str]:
    return {"type": "text", "text": t}


def refused(parse: Any, **body: Any) -> openai_fields.InvalidRequest:
    with pytest.raises(openai_fields.InvalidRequest) as caught:
        parse(**body)
    return caught.value


# -- Chat Completions requests -----------------------------------------------------------------


def test_a_full_chat_request_becomes_canonical() -> None:
    call = chat(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [text("Use English.")]},
            {"role": "user", "content": [text("A"), text("B")]},
            {"role": "assistant", "content": "Yes?"},
            {"role": "user", "content": "Go on.", "name": "ann"},
        ],
        max_completion_tokens=40,
        temperature=1.5,
        top_p=0.5,
        stop="END",
        seed=7,
        n=1,
        stream=True,
        stream_options={"include_usage": True},
        user="u",
        metadata={"k": "v"},
    )  # fmt: skip
    assert call.stream and call.include_usage
    assert call.request == ChatRequest(
        model="gpt-4o-mini",
        messages=(Message("user", "AB"), Message("assistant", "Yes?"), Message("user", "Go on.")),
        max_tokens=40,
        system="Be brief.\n\nUse English.",
        temperature=1.5,
        top_p=0.5,
        stop_sequences=("END",),
        seed=7,
    )


def test_unset_sampling_stays_unset_and_nulls_count_as_absent() -> None:
    call = chat(temperature=None, top_p=None, stop=None, seed=None, max_tokens=None, n=None)
    r = call.request
    assert (r.temperature, r.top_p, r.seed, r.stop_sequences) == (None, None, None, ())
    assert r.max_tokens == openai.DEFAULT_MAX_TOKENS
    assert not call.stream and not call.include_usage


def test_max_tokens_and_stop_lists() -> None:
    assert chat(max_tokens=9).request.max_tokens == 9
    assert chat(max_tokens=9, max_completion_tokens=5).request.max_tokens == 5
    assert chat(stop=["a", "b"]).request.stop_sequences == ("a", "b")


def test_consecutive_turns_of_one_role_merge() -> None:
    call = chat(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert call.request.messages == (Message("user", "a\n\nb"),)


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"messages": "nope"}, "messages", "invalid_type"),
        ({"messages": []}, "messages", "empty_array"),
        ({"messages": None}, "messages", "missing_required_parameter"),
        ({"model": None}, "model", "missing_required_parameter"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "invalid_value"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "missing_required_parameter"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages", "invalid_value"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role",
         "unsupported_parameter"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id",
         "missing_required_parameter"),
        ({"n": 2}, "n", "invalid_value"),
        ({"max_tokens": 0}, "max_tokens", "integer_below_min_value"),
        ({"max_tokens": "9"}, "max_tokens", "invalid_type"),
        ({"temperature": 2.5}, "temperature", "decimal_above_maximum_value"),
        ({"top_p": -1}, "top_p", "decimal_below_minimum_value"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "array_above_max_length"),
        ({"stop": 3}, "stop", "invalid_type"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
        ({"tools": [{"type": "function"}]}, "tools[0].function", "missing_required_parameter"),
        ({"tools": [{"type": "custom"}]}, "tools[0].type", "unsupported_parameter"),
        ({"logprobs": True}, "logprobs", "unsupported_parameter"),
        ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_parameter"),
        ({"frobnicate": 1}, "frobnicate", "unknown_parameter"),
    ],
)  # fmt: skip
def test_bad_chat_requests_name_the_parameter(body: dict[str, Any], param: str, code: str) -> None:
    exc = refused(chat, **body)
    assert (exc.param, exc.openai_code, exc.status) == (param, code, 400)
    assert openai_fields.error_json(exc)["error"]["type"] == "invalid_request_error"


def test_other_content_parts_are_a_clear_400() -> None:
    image = {"type": "image_url", "image_url": {"url": "http://x/a.png"}}
    exc = refused(chat, messages=[{"role": "user", "content": [image]}])
    assert exc.param == "messages[0].content[0].type"
    assert "'image_url' is not supported" in exc.message and "'text'" in exc.message


def test_the_message_for_a_string_where_messages_go() -> None:
    exc = refused(chat, messages="nope")
    assert exc.message == (
        "Invalid type for 'messages': expected an array of message objects, "
        "but got a string instead."
    )


@pytest.mark.parametrize("body", [b"{", b"[1]", b"\xff", b"[" * 100_000 + b"]" * 100_000])
def test_bodies_that_are_not_json_objects(body: bytes) -> None:
    with pytest.raises(openai_fields.InvalidRequest):
        openai.parse_chat(body)


# -- errors --------------------------------------------------------------------------------------


def test_error_shape_and_statuses() -> None:
    assert openai_fields.error_json(errors.Throttled("slow down")) == {
        "error": {
            "message": "slow down",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    key = openai_fields.InvalidApiKey("no")
    assert openai_fields.status_of(key) == 401
    assert openai_fields.error_json(key)["error"]["code"] == "invalid_api_key"
    assert openai_fields.status_of(errors.PayloadTooLarge("big")) == 413
    assert openai_fields.error_json(errors.NotFound("x"))["error"]["type"] == "not_found_error"
    assert (
        openai_fields.error_json(openai_fields.ModelNotFound("x"))["error"]["code"]
        == "model_not_found"
    )


# -- Chat Completions answers ------------------------------------------------------------------


def log(*middle: Event, reason: str = "end_turn", usage: Usage | None = None) -> list[Event]:
    usage = usage or Usage(3, 2)
    return [
        MessageStart("msg_1", "m", 3),
        BlockStart(),
        *middle,
        BlockStop(),
        MessageDelta(reason, None, usage.output_tokens),  # type: ignore[arg-type]
        MessageStop(usage, Metrics(0, 5, 2400)),
    ]


def chunks(events: list[Event], include_usage: bool = True) -> list[Any]:
    stream = openai.ChatStream("chatcmpl-1", 100, "m", include_usage)
    out: list[Any] = []
    for e in events:
        out += [d if d == openai.DONE else json.loads(d) for d in stream.feed(e)]
    return out


def test_a_streamed_completion_chunk_by_chunk() -> None:
    out = chunks(log(TextDelta("Hel"), TextDelta("lo")))
    assert out[-1] == openai.DONE
    body = out[:-1]
    assert {(c["id"], c["created"], c["object"], c["model"]) for c in body} == {
        ("chatcmpl-1", 100, "chat.completion.chunk", "m")
    }
    deltas = [c["choices"][0]["delta"] for c in body[:-1]]
    assert deltas == [
        {"role": "assistant", "content": "", "refusal": None},
        {"content": "Hel"},
        {"content": "lo"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in body[:-1]] == [None, None, None, "stop"]
    assert body[-1]["choices"] == []
    assert body[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


@pytest.mark.parametrize(
    ("reason", "finish"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length")],
)
def test_finish_reasons(reason: str, finish: str) -> None:
    out = chunks(log(TextDelta("x"), reason=reason), include_usage=False)
    assert out[-1] == openai.DONE and "usage" not in out[-2]
    assert out[-2]["choices"][0]["finish_reason"] == finish


def test_an_in_band_error_is_not_a_finish() -> None:
    events = log(TextDelta("x"), ErrorEvent("ModelStreamError", "boom"), reason="error")
    out = chunks(events)
    assert out[-1] == {
        "error": {"message": "boom", "type": "server_error", "param": None, "code": "model_error"}
    }
    assert openai.DONE not in out
    assert all(c["choices"][0]["finish_reason"] is None for c in out[:-1])


@pytest.mark.parametrize(
    ("reason", "kind"),
    [("cancelled", "server_error"), ("disconnected", "server_error"), ("timeout", "timeout_error")],
)
def test_an_early_end_is_an_error_and_no_done(reason: str, kind: str) -> None:
    out = chunks(log(TextDelta("x"), reason=reason))
    assert out[-1]["error"]["type"] == kind and openai.DONE not in out


def test_a_whole_completion() -> None:
    body = openai.completion_json("chatcmpl-1", 100, "m", log(TextDelta("Hi"), reason="max_tokens"))
    assert body["object"] == "chat.completion" and body["id"] == "chatcmpl-1"
    assert body["choices"][0]["message"]["content"] == "Hi"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["total_tokens"] == 5


def test_models() -> None:
    assert openai.models_json(["a"], 5) == {
        "object": "list",
        "data": [{"id": "a", "object": "model", "created": 5, "owned_by": "sluicegate"}],
    }


# -- Responses requests --------------------------------------------------------------------------


def responses(**body: Any) -> ResponseCall:
    body.setdefault("model", "gpt-4o-mini")
    body.setdefault("input", "Hi")
    return parse_request(raw(**body))


def test_a_string_input_and_the_options() -> None:
    call = responses(
        instructions="Be brief.",
        max_output_tokens=30,
        temperature=0.3,
        top_p=0.8,
        stream=True,
        background=True,
        metadata={"a": "b"},
    )
    assert call.request == ChatRequest(
        model="gpt-4o-mini",
        messages=(Message("user", "Hi"),),
        max_tokens=30,
        system="Be brief.",
        temperature=0.3,
        top_p=0.8,
    )
    assert (call.stream, call.background, call.store, call.max_output_tokens) == (
        True,
        True,
        True,
        30,
    )


def test_message_items_with_input_and_output_text() -> None:
    call = responses(
        input=[
            {"role": "developer", "content": "Rules."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "A"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "B"}]},
            {"role": "user", "content": "C"},
        ],
    )  # fmt: skip
    r = call.request
    assert r.system == "Rules." and r.max_tokens == openai.DEFAULT_MAX_TOKENS
    assert r.messages == (Message("user", "A"), Message("assistant", "B"), Message("user", "C"))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": 3}, "input"),
        ({"input": []}, "input"),
        ({"input": None}, "input"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": [{"type": "file_search_call"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
         "input[0].content[0].type"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"background": True, "store": False}, "store"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"nope": 1}, "nope"),
    ],
)  # fmt: skip
def test_bad_responses_requests_name_the_parameter(body: dict[str, Any], param: str) -> None:
    assert refused(responses, **body).param == param


# -- Responses events ------------------------------------------------------------------------------


META = ResponseMeta("resp_abc", 1000, responses(max_output_tokens=50))


def events_of(events: list[Event]) -> list[dict[str, Any]]:
    stream = ResponseStream(META)
    return [e for event in events for e in stream.feed(event)]


def test_a_response_stream_in_order_and_numbered() -> None:
    out = events_of(log(TextDelta("Hel"), TextDelta("lo")))
    assert [e["type"] for e in out] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    assert out[0]["response"]["status"] == "in_progress" and out[0]["response"]["output"] == []
    delta = out[4]
    assert (delta["item_id"], delta["output_index"], delta["content_index"]) == ("msg_abc", 0, 0)
    assert out[6]["text"] == "Hello"
    done = out[-1]["response"]
    assert done["status"] == "completed" and done["id"] == "resp_abc"
    assert done["output"] == [
        {
            "type": "message",
            "id": "msg_abc",
            "status": "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}
            ],
        }
    ]
    assert done["usage"]["total_tokens"] == 5 and done["max_output_tokens"] == 50
    assert done["completed_at"] == 1002


def test_the_same_log_numbers_the_same_events() -> None:
    events = log(TextDelta("a"), TextDelta("b"))
    assert events_of(events) == events_of(events)


def test_max_tokens_is_incomplete() -> None:
    out = events_of(log(TextDelta("a"), reason="max_tokens"))
    last = out[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["status"] == "incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert out[-2]["item"]["status"] == "incomplete"


def test_an_error_fails_the_response() -> None:
    out = events_of(log(TextDelta("a"), ErrorEvent("ModelStreamError", "boom"), reason="error"))
    assert out[-1]["type"] == "response.failed"
    assert out[-1]["response"]["error"] == {"code": "server_error", "message": "boom"}


def test_a_cancelled_response_says_so() -> None:
    out = events_of(log(TextDelta("a"), reason="cancelled"))
    assert out[-1]["type"] == "response.failed"
    assert out[-1]["response"]["status"] == "cancelled"
    assert out[-1]["response"]["error"] is None


def test_snapshots_as_the_log_grows() -> None:
    events = log(TextDelta("a"), TextDelta("b"))
    assert replay(META, events[:1]).snapshot()["status"] == "in_progress"
    partial = replay(META, events[:4]).snapshot()
    assert partial["output"][0]["content"][0]["text"] == "ab" and partial["usage"] is None
    assert replay(META, events).snapshot()["status"] == "completed"


@given(text=st.text(min_size=1), model=st.text(), include_usage=st.booleans())
def test_a_text_chunk_is_what_encoding_its_dict_gives(
    text: str, model: str, include_usage: bool
) -> None:
    """The chunk built from its fixed ends, character for character, whatever the text or the
    model id (quotes, control characters, the placeholder itself) holds."""
    chat = openai.ChatStream("chatcmpl-1", 7, model + openai.PLACE, include_usage)
    (fast,) = chat.feed(TextDelta(text))
    assert fast == chat._chunk({"content": text})
    assert json.loads(fast)["choices"][0]["delta"] == {"content": text}
    (again,) = chat.feed(TextDelta(text + openai.PLACE))
    assert json.loads(again)["choices"][0]["delta"]["content"] == text + openai.PLACE
