"""Strict JSON bodies: what json.loads lets through but nothing downstream can use."""

from __future__ import annotations

import pytest

from sluicegate.codecs.jsonbody import BadJSON, loads


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
