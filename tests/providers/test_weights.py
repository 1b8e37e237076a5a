"""The embedded model's weights served as Q8_0: converted once, cached, same answers."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import pytest
from llama_cpp import _internals as llm

from sluicegate.providers.engine import EngineConfig
from sluicegate.providers.local import LocalProvider, embedded_model_path, q8_0_weights


def file_type(path: Path) -> int:
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llm.LlamaModel(path_model=str(path), params=params, verbose=False)
    kind = int(model.metadata()["general.file_type"])
    model.close()  # type: ignore[no-untyped-call]
    return kind


def test_conversion_is_done_once_and_cached(tmp_path: Path) -> None:
    source = embedded_model_path()
    assert file_type(source) == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1
    first = q8_0_weights(source, tmp_path)
    assert file_type(first) == llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    made = first.stat().st_mtime_ns
    again = q8_0_weights(source, tmp_path)
    assert again == first and again.stat().st_mtime_ns == made  # reused, not redone
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no partial files left


def test_served_model_is_the_converted_one(local: object) -> None:
    weights = local.weights  # type: ignore[attr-defined]
    assert weights.name.endswith(".q8_0.gguf") and file_type(weights) == 7
    assert "weights as Q8_0" in local.describe()  # type: ignore[attr-defined]


def test_without_a_writable_cache_the_file_is_served_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    provider = LocalProvider(
        embedded_model_path(), EngineConfig(n_ctx=512, n_parallel=1), q8_0=True
    )
    try:
        assert provider.weights == embedded_model_path()
        assert "as it is" in caplog.text and "Q8_0" not in provider.describe()
    finally:
        provider.close()
