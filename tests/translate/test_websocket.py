"""Tests for the WebSocket API's `generate` message as a canonical request: sampling."""

from __future__ import annotations

from typing import Any

import pytest

from sluicegate.errors import ValidationError
from sluicegate.translate.websocket import parse_generate


def generate(**fields: Any) -> dict[str, Any]:
    return {"action": "generate", "prompt": "Say hello.", **fields}


def test_omitted_sampling_parameters_stay_unset_for_the_model_defaults() -> None:
    request = parse_generate(generate())
    assert (request.temperature, request.top_p, request.top_k, request.seed) == (None,) * 4


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0])
def test_explicit_sampling_values_are_kept_even_at_the_edges(value: float) -> None:
    request = parse_generate(generate(temperature=value, top_p=value, top_k=int(value), seed=7))
    assert (request.temperature, request.top_p, request.top_k) == (value, value, value)
    assert type(request.temperature) is float and request.seed == 7


def test_temperature_goes_up_to_two_here() -> None:
    assert parse_generate(generate(temperature=2)).temperature == 2.0


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"temperature": 2.5}, "#/temperature: 2.5 is not between 0 and 2"),
        ({"temperature": None}, "#/temperature: expected a number, found null"),
        ({"top_p": 1.5}, "#/top_p: 1.5 is not between 0 and 1"),
        ({"top_k": -1}, "#/top_k: -1 is not greater or equal to 0"),
    ],
)
def test_bad_sampling_values_say_what_to_fix(fields: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_generate(generate(**fields))
    assert expected in info.value.message
