"""The local GLM-4 engine: token ids in, streamed token ids out, with the KV cache of the last call kept.

What it owns: loading a checkpoint (any of the three GLM-4 layouts, float or quantized), prefill and
decode, sampling, stop ids, a logits-processor hook, cancellation between tokens, and reuse of the
cached keys and values of the longest prefix a new prompt shares with the previous sequence.

What it does not own: chat formatting and parsing (`glm_runtime.chat_format`), tools, retries, or
deciding what happens after a stop id. It stops and returns; the agent decides.

    >>> engine = load_engine("glm-4-9b-chat", quantize="int4")          # doctest: +SKIP
    >>> ids = engine.encode("[gMASK]<sop><|user|>\\nHi<|assistant|>")     # doctest: +SKIP
    >>> print(engine.decode(list(engine.generate(ids, max_new_tokens=32))))  # doctest: +SKIP
    >>> engine.last_stats.prefill_tokens, engine.last_stats.stop_reason   # doctest: +SKIP
    (9, 'stop')
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from glm_runtime.kv_cache import KVCache
from glm_runtime.tokenizer import drop_stray_marks, marks_case

if TYPE_CHECKING:
    import torch

__all__ = ["Engine", "GenerationStats", "SamplingParams", "load_engine", "sample"]

LogitsProcessor = Callable[[Sequence[int], "torch.Tensor"], "torch.Tensor"]
_PREFILL_CHUNK = 512        # bounds the attention scores' memory on long prompts
_AUTO_INT4_PARAMS = 3e9     # "auto" quantizes float checkpoints at least this big (GLM-4-9B) to INT4


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen; `temperature=0` is greedy.

        >>> SamplingParams(temperature=0.8, top_p=0.8, seed=1)
        SamplingParams(temperature=0.8, top_p=0.8, top_k=0, seed=1)
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@dataclass
class GenerationStats:
    """What the last `generate()` did, from the engine's own counters."""

    prompt_tokens: int = 0
    reused_tokens: int = 0          # prompt tokens whose KV came from the cache
    disk_reused_tokens: int = 0     # of those, tokens loaded from the saved prompt cache (0: none)
    disk_saved_tokens: int = 0      # longest prefix this call saved (or found saved) on disk (0: none)
    prefill_tokens: int = 0         # prompt tokens the model ran on (prompt - reused)
    new_tokens: int = 0             # tokens yielded (the stop id is not counted)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0     # time in one-token forward passes and sampling
    decode_steps: int = 0           # one-token forward passes
    stop_reason: Literal["stop", "length", "cancelled"] = "stop"
    stop_id: int | None = None

    @property
    def prefill_tok_s(self) -> float:
        return self.prefill_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        return self.decode_steps / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "prefill_tok_s": self.prefill_tok_s, "decode_tok_s": self.decode_tok_s}


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> int:
    """Pick a token id from 1-D `logits`: argmax at temperature 0, else top-k, then top-p, then a draw.

        >>> sample(torch.tensor([0.0, 3.0, 1.0]), SamplingParams())   # doctest: +SKIP
        1
    """
    import torch

    if params.temperature == 0:
        # Greedy checks one logit per token, not the vocabulary (the full check only when the pick
        # is not finite): a 151,552-wide isfinite().any() cost as much as the argmax itself.
        tok = _argmax(logits)
        if not torch.isfinite(logits[tok]) and not torch.isfinite(logits).any():
            raise ValueError("every token has -inf or NaN logits (a logits processor ruled out all of them?)")
        return tok
    if not torch.isfinite(logits).any():
        raise ValueError("every token has -inf or NaN logits (a logits processor ruled out all of them?)")
    logits = logits.float() / params.temperature
    if params.top_k > 0 and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens before it already cover top_p (the first always stays).
        drop = (torch.cumsum(probs, dim=-1) - probs) >= params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(0, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def _argmax(logits: torch.Tensor) -> int:
    # numpy's argmax is ~10x faster than torch's on a 151,552-wide CPU row (8 vs 94 us, one thread);
    # both return the first maximum, and NaN counts as the maximum in both.
    import torch

    if not logits.requires_grad and logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.dim() == 1:
        return int(logits.numpy().argmax())
    return int(torch.argmax(logits))


class Engine:
    """One model, one tokenizer, one KV cache; `generate()` streams new token ids.

    Calls are sequential: a `generate()` started while an earlier generator is still paused
    supersedes it (resuming the old one raises). A lock keeps threads from interleaving steps.

    Prompts run through the model's own forward; each one-token step runs through `decoder`
    (a `glm_runtime.decoder.Decoder`, the same math without transformers' per-call machinery)
    when there is one. Both write the same cache. `decoder=None` runs every step through the model.
    """

    def __init__(self, model, tokenizer, *, config, checkpoint_dir: Path, stop_ids: Sequence[int],
                 max_context: int, device, dtype, quantization: dict[str, Any] | None = None,
                 cache: KVCache | None = None, prompt_cache: Any = None, decoder: Any = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.checkpoint_dir = Path(checkpoint_dir)
        self.stop_ids: tuple[int, ...] = tuple(int(i) for i in stop_ids)
        self.max_context = int(max_context)
        self.device = device
        self.dtype = dtype
        self.quantization = quantization
        self.cache = cache if cache is not None else KVCache(config, max_tokens=max_context)
        self.prompt_cache = prompt_cache  # a glm_runtime.prompt_cache.PromptCache, or None
        self.decoder = decoder            # a glm_runtime.decoder.Decoder, or None
        self.last_stats = GenerationStats()
        self.prefill_chunk = _PREFILL_CHUNK
        self._lock = threading.Lock()
        self._epoch = 0
        self._cache_arg = _cache_argument(model)
        self._marks_case = marks_case(tokenizer)  # the demo model's tokenizer: see glm_runtime.tokenizer.CASE_MARK

    # ---- text helpers (the engine itself speaks ids) ----

    def encode(self, text: str) -> list[int]:
        """Token ids of raw `text`; special tokens written in it (`<|user|>`, `[gMASK]`) become their ids."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        text = self.tokenizer.decode(list(ids), skip_special_tokens=False)
        return drop_stray_marks(text) if self._marks_case else text

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def reset_cache(self) -> None:
        with self._lock:
            self.cache.clear()

    # ---- generation ----

    def generate(self, prompt_ids: Sequence[int], *, max_new_tokens: int = 1024,
                 stop_ids: Sequence[int] | None = None, sampling: SamplingParams = SamplingParams(),
                 logits_processor: LogitsProcessor | None = None,
                 cancel: threading.Event | None = None) -> Iterator[int]:
        """Stream the new token ids after `prompt_ids`; the stop id itself is not yielded.

        Arguments are checked now (a ValueError here is the caller's); the model runs as the
        iterator is consumed. Afterwards `self.last_stats` says what happened.
        """
        ids = self._check_prompt(prompt_ids)
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        stops = frozenset(self.stop_ids if stop_ids is None else (int(i) for i in stop_ids))
        self._epoch += 1
        return self._generate(ids, max_new_tokens, stops, sampling, logits_processor, cancel, self._epoch)

    def _generate(self, ids, max_new_tokens, stops, sampling, processor, cancel, epoch) -> Iterator[int]:
        import torch

        if self._epoch != epoch:
            raise RuntimeError("this generation was superseded by a newer generate() call on the same engine")
        stats = self.last_stats = GenerationStats(prompt_tokens=len(ids))
        if hasattr(processor, "reset"):
            processor.reset()
        generator = torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None
        budget = min(max_new_tokens, self.max_context - len(ids))
        if budget <= 0:
            stats.stop_reason = "length"
            return
        t0 = time.perf_counter()
        with self._lock:
            stats.reused_tokens = self.cache.reuse(ids)
            if self.prompt_cache is not None:
                memory, stats.reused_tokens = stats.reused_tokens, self.prompt_cache.restore(
                    self.cache, ids, stats.reused_tokens, device=self.device)
                stats.disk_reused_tokens = stats.reused_tokens if stats.reused_tokens != memory else 0
        stats.prefill_tokens = len(ids) - stats.reused_tokens
        logits = self._run(ids[stats.reused_tokens:], cancel)
        stats.prefill_seconds = time.perf_counter() - t0
        if logits is not None and self.prompt_cache is not None and stats.prefill_tokens:
            with self._lock:  # after the timing: saving is not prefill (its cost is paid once)
                stats.disk_saved_tokens = self.prompt_cache.store(self.cache, ids)
        if logits is None:
            stats.stop_reason = "cancelled"
            return
        seq = list(ids)
        while True:
            t = time.perf_counter()
            if processor is not None:
                logits = self._apply_processor(processor, seq, logits)
            tok = sample(logits, sampling, generator)
            stats.decode_seconds += time.perf_counter() - t
            if tok in stops:
                stats.stop_reason, stats.stop_id = "stop", tok
                return
            seq.append(tok)
            stats.new_tokens += 1
            try:
                yield tok
            except GeneratorExit:  # the consumer stopped iterating: as good as cancelled
                stats.stop_reason = "cancelled"
                raise
            if self._epoch != epoch:
                raise RuntimeError("this generation was superseded by a newer generate() call on the same engine")
            if cancel is not None and cancel.is_set():
                stats.stop_reason = "cancelled"
                return
            if stats.new_tokens >= budget:
                stats.stop_reason = "length"
                return
            t = time.perf_counter()
            logits = self._run([tok], cancel)
            stats.decode_seconds += time.perf_counter() - t
            stats.decode_steps += 1

    def _run(self, ids: list[int], cancel: threading.Event | None) -> torch.Tensor | None:
        """Run the model on `ids` after the cached prefix; return the next token's float32 logits.

        None if `cancel` was set between prefill chunks. On any failure the cache is dropped, since
        a forward pass interrupted midway leaves some layers a token ahead of others.
        """
        import torch

        logits = None
        with self._lock, torch.inference_mode():
            try:
                for start in range(0, len(ids), self.prefill_chunk):
                    if cancel is not None and cancel.is_set():
                        return None
                    chunk = ids[start:start + self.prefill_chunk]
                    if len(chunk) == 1 and self.decoder is not None:
                        logits = self.decoder.step(chunk[0], self.cache.past)
                    else:
                        inp = torch.tensor([chunk], dtype=torch.long, device=self.device)
                        logits = self.model(input_ids=inp, **{self._cache_arg: self.cache.past}, use_cache=True,
                                            logits_to_keep=1).logits[0, -1]
                    self.cache.extend(chunk)
                    logits = logits.float()
            except BaseException:
                self.cache.clear()
                raise
        return logits

    def _apply_processor(self, processor: LogitsProcessor, seq: list[int], logits: torch.Tensor) -> torch.Tensor:
        out = processor(seq, logits)
        if getattr(out, "shape", None) != logits.shape:
            raise TypeError(f"logits processor returned {getattr(out, 'shape', type(out))}, expected {tuple(logits.shape)}")
        return out

    def next_token_logits(self, prompt_ids: Sequence[int]) -> torch.Tensor:
        """The float32 logits of the token after `prompt_ids` (same path as `generate`, cache included)."""
        ids = self._check_prompt(prompt_ids)
        self._epoch += 1
        with self._lock:
            reused = self.cache.reuse(ids)
        return self._run(ids[reused:], None)

    def _check_prompt(self, prompt_ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in prompt_ids]
        if not ids:
            raise ValueError("prompt_ids is empty: a GLM-4 prompt starts with [gMASK]<sop>")
        vocab = self.config.vocab_size
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise ValueError(f"token ids outside the vocabulary of {vocab}: {bad[:5]}")
        if len(ids) > self.max_context:
            raise ValueError(f"prompt of {len(ids)} tokens exceeds the engine's context of {self.max_context}")
        return ids


# ---- loading ----

Quantize = Literal["int4", "int8", "none", "auto"]


def _cache_argument(model) -> str:
    """The name `model.forward` takes the KV cache by: transformers 5 renamed `past_key_values` to
    `cache` (the old name still works there but warns, and goes in 5.40); 4.x knows only the old one."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def load_engine(model: str | os.PathLike, *, quantize: Quantize = "auto", dtype: str = "auto",
                device: str = "auto", max_cache_tokens: int | None = None, group_size: int = 128,
                progress: Callable[[int, int], None] | None = None, offline: bool = False,
                prompt_cache_dir: str | os.PathLike | None = None, prompt_cache_bytes: int | None = None,
                quantized_cache_dir: str | os.PathLike | None = None) -> Engine:
    """Load a checkpoint directory or Hugging Face repo id into an `Engine`.

    `quantize="auto"`: a quantized checkpoint loads as stored; a float one of 3B+ parameters is
    quantized to INT4 on load; smaller ones stay in `dtype`. `dtype="auto"`: bfloat16 on CUDA and
    on CPUs with fast bf16 matmuls, else float16 (MPS) or float32. `max_cache_tokens` bounds the
    KV cache and so the context (default: the model's own context length). `prompt_cache_dir`
    keeps the KV cache of prompt prefixes on disk for later processes (`glm_runtime.prompt_cache`),
    at most `prompt_cache_bytes` (default 2 GiB) over all models in that directory.
    `quantized_cache_dir`: a float checkpoint quantized on load is saved there once
    (`glm_runtime.quantized_cache`) and later loads read that copy instead of quantizing again.

        >>> engine = load_engine("./glm-4-9b-chat-int4", device="cpu")   # doctest: +SKIP
    """
    from glm_runtime.checkpoint import CheckpointError, load_model, open_checkpoint, param_count
    from glm_runtime.quant import QuantConfig
    from glm_runtime.tokenizer import load_tokenizer

    if quantize not in ("int4", "int8", "none", "auto"):
        raise ValueError(f"quantize must be int4, int8, none or auto, got {quantize!r}")
    ckpt = open_checkpoint(model, offline=offline)
    dev = _pick_device(device)
    torch_dtype = _pick_dtype(dtype, dev)
    if ckpt.quant is not None:
        if quantize == "none":
            raise CheckpointError(f"{ckpt.path} stores {ckpt.quant.bits}-bit weights; load it with "
                                  "quantize='auto' (or the same bits), or load the float checkpoint")
        if quantize in ("int4", "int8") and int(quantize[3]) != ckpt.quant.bits:
            raise CheckpointError(f"{ckpt.path} stores {ckpt.quant.bits}-bit weights, not {quantize}")
        quant = None
    elif quantize == "auto":
        quant = QuantConfig(bits=4, group_size=group_size) if param_count(ckpt.config) >= _AUTO_INT4_PARAMS else None
    else:
        quant = None if quantize == "none" else QuantConfig(bits=int(quantize[3]), group_size=group_size)
    if dev.type == "mps" and (quant or ckpt.quant):
        raise CheckpointError("quantized weights have no kernel on MPS here; use quantize='none' with float16")
    if quant is not None and quantized_cache_dir is not None:
        from glm_runtime.quantized_cache import quantized_copy

        copy = quantized_copy(ckpt, quant, quantized_cache_dir, progress=progress)
        if copy is not None:
            ckpt, quant = open_checkpoint(copy), None
    net = load_model(ckpt, dtype=torch_dtype, device=dev, quant=quant, progress=progress)
    context = ckpt.config.max_position_embeddings
    if max_cache_tokens is not None:
        if max_cache_tokens < 1:
            raise ValueError(f"max_cache_tokens must be >= 1, got {max_cache_tokens}")
        context = min(context, max_cache_tokens)
    tokenizer = load_tokenizer(ckpt.path)
    quantization = getattr(net.config, "glm_agent_quantization", None)
    saved = None
    if prompt_cache_dir is not None:
        saved = _prompt_cache(prompt_cache_dir, prompt_cache_bytes, ckpt, tokenizer, quantization, torch_dtype)
    from glm_runtime.decoder import Decoder

    return Engine(net, tokenizer, config=ckpt.config, checkpoint_dir=ckpt.path,
                  stop_ids=ckpt.eos_ids or (151329, 151336, 151338), max_context=context, device=dev,
                  dtype=torch_dtype, quantization=quantization, prompt_cache=saved, decoder=Decoder.from_model(net))


def _prompt_cache(directory, max_bytes, ckpt, tokenizer, quantization, dtype):
    from glm_runtime.prompt_cache import DEFAULT_PROMPT_CACHE_BYTES, PromptCache, model_key

    # A saved prefix ends before a role token, so the system prompt (before the first <|user|>)
    # is what every later session of the same agent finds on disk.
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    boundary = [vocab[t] for t in ("<|user|>", "<|observation|>") if t in vocab]
    return PromptCache(directory, model_key=model_key(ckpt.path, quantization=quantization, dtype=dtype),
                       max_bytes=DEFAULT_PROMPT_CACHE_BYTES if max_bytes is None else max_bytes,
                       boundary_ids=boundary, expect_layers=ckpt.config.num_hidden_layers)


def _pick_device(device: str):
    import torch

    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _pick_dtype(dtype: str, device):
    import torch

    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype != "auto":
        if dtype not in names:
            raise ValueError(f"dtype must be auto, {', '.join(names)}; got {dtype!r}")
        return names[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    # bf16 halves the bytes read per token; worth it only where oneDNN has native bf16 kernels.
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
