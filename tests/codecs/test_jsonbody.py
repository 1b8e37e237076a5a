"""Strict JSON bodies: what json.loads lets through but nothing downstream can use; and the
fast dump and parse of streamed chunks, which must say what json says."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from sluicegate.codecs.jsonbody import BadJSON, dumpb, dumps, loads, parse


def old_dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def test_paired_surrogates_and_plain_text_pass() -> None:
    assert loads(b'{"t": "\\ud83d\\ude00 caf\\u00e9"}') == {"t": "😀 café"}
    assert loads('["ok", 1, 2.5, {"n": null}]') == ["ok", 1, 2.5, {"n": None}]


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b'{"t": "a\\ud800"}', "lone UTF-16 surrogate"),
        (b'{"\\udc00": 1}', "lone UTF-16 surrogate"),  # in a key
        (b'[[[{"deep": ["\\ud83d"]}]]]', "lone UTF-16 surrogate"),
        (b'{"n": ' + b"1" * 5000 + b"}", "cannot be read"),
        (b"[" * 100_000, "nests too deeply"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"a": }', "not valid JSON"),
    ],
)
def test_what_cannot_be_used_is_refused_with_a_reason(raw: bytes, says: str) -> None:
    with pytest.raises(BadJSON, match=says):
        loads(raw)


# JSON values as the doors and logs hold them: any text (lone surrogates included), integers
# past 64 bits, finite floats (json and orjson may write a float differently: 1e-07, 1e-7).
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(values)
def test_dumps_writes_what_json_wrote(value: Any) -> None:
    assert dumps(value) == old_dumps(value)


@given(values)
def test_dumpb_is_dumps_as_utf8(value: Any) -> None:
    try:
        expected = old_dumps(value).encode()
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 for it, as before
        with pytest.raises(UnicodeEncodeError):
            dumpb(value)
        return
    assert dumpb(value) == expected


def _within_64_bits(value: Any) -> bool:
    """Whether every integer in value is one orjson reads exactly (-2**63 to 2**64 - 1)."""
    if isinstance(value, bool) or not isinstance(value, int | list | dict):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**64
    items = value.values() if isinstance(value, dict) else value
    return all(_within_64_bits(v) for v in items)


@given(values)
def test_parse_reads_what_json_reads(value: Any) -> None:
    assume(_within_64_bits(value))  # past them, a float (parse's docstring; tested below)
    raw = old_dumps(value)
    assert parse(raw) == json.loads(raw)
    if raw.isascii() or not any(0xD800 <= ord(c) < 0xE000 for c in raw):
        assert parse(raw.encode()) == json.loads(raw)  # bytes too, where they can be UTF-8


def test_an_integer_past_64_bits_is_read_as_a_float() -> None:
    for big in (2**64, -(2**63) - 1):
        assert parse(str(big)) == float(big) and isinstance(parse(str(big)), float)
    assert parse(str(2**64 - 1)) == 2**64 - 1 and parse(str(-(2**63))) == -(2**63)


def test_what_only_json_does_still_works() -> None:
    assert dumps({1: "a", "b": 2**70}) == '{"1":"a","b":1180591620717411303424}'
    assert dumps("a\ud800") == '"a\ud800"'
    assert parse('{"t": "a\\ud800", "n": NaN}')["t"] == "a\ud800"
    assert parse(b"[Infinity]") == [float("inf")]


@pytest.mark.parametrize("raw", [b'{"a": }', b"\xff", b"", b'{"a": 1,}', b"[1] [2]"])
def test_parse_refuses_what_json_refuses(raw: bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(raw)
    with pytest.raises(ValueError):
        parse(raw)
