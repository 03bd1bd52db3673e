"""Test doubles for the engine seam: tiny random GLM-4 checkpoints and forced model outputs.

Everything here is real except the weights: a checkpoint built by `build_random_checkpoint` is a
directory in the exact layout of a published GLM-4 checkpoint (`config.json`, safetensors weights,
the real tokenizer files, `generation_config.json`), loaded by the same code path as a real model.
`ForcedTokens` is a logits processor that makes such a model "say" a scripted reply, so that
tests of the agent loop run the real engine and the real tokenizer end to end.

    >>> ckpt = build_random_checkpoint(tmp_path / "m")            # doctest: +SKIP
    >>> engine = load_engine(ckpt, quantize="none")                # doctest: +SKIP
    >>> proc = forced_text(engine.tokenizer, "python\\nprint(1)<|observation|>", then=None)  # doctest: +SKIP
    >>> engine.tokenizer.decode(list(engine.generate(prompt_ids, logits_processor=proc)))  # doctest: +SKIP
    'python\\nprint(1)'

The weights are drawn once in the `glm` layout from a seeded generator and renamed (and, for the
original `chatglm` layout, fused) for the other formats, so two checkpoints built with the same
seed in the `glm` and `chatglm` formats hold the same network.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

__all__ = [
    "GLM4_EOS_IDS", "GLM4_VOCAB", "ForcedTokens", "build_random_checkpoint", "build_random_quantized_checkpoint",
    "forced_text",
]

GLM4_VOCAB = 151552
GLM4_EOS_IDS = (151329, 151336, 151338)  # <|endoftext|>, <|user|>, <|observation|>
_ENDOFTEXT = 151329
_DEFAULT_TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "shared" / "glm4"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")

Format = Literal["glm", "glm4", "chatglm"]


def build_random_checkpoint(
    path: str | os.PathLike,
    *,
    format: Format = "glm",
    tokenizer_dir: str | os.PathLike | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int = GLM4_VOCAB,
    rope_theta: float = 5_000_000.0,
    eos_ids: Sequence[int] = GLM4_EOS_IDS,
    seed: int = 0,
    dtype: str = "float32",
) -> Path:
    """Write a loadable GLM-4-shaped checkpoint with seeded random weights into `path`.

    `format` is `glm` (glm-4-9b-chat-hf), `glm4` (GLM-4-0414, two extra norms per layer) or
    `chatglm` (the original glm-4-9b-chat layout: fused QKV, `rope_ratio`). Same seed, same
    shape: `glm` and `chatglm` hold identical networks. `tokenizer_dir` defaults to `../shared/glm4`;
    a tiny model with its own `tokenizer.json` passes its `vocab_size` and `eos_ids` too.

        >>> build_random_checkpoint("/tmp/tiny", format="chatglm", seed=1)  # doctest: +SKIP
        PosixPath('/tmp/tiny')
    """
    import torch
    from safetensors.torch import save_file

    if format not in ("glm", "glm4", "chatglm"):
        raise ValueError(f"unknown checkpoint format {format!r}; expected glm, glm4 or chatglm")
    shape = _shape(hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size, vocab_size, rope_theta,
                   eos_ids)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights = _random_glm_weights(shape, seed=seed, extra_norms=(format == "glm4"))
    if format == "chatglm":
        weights = _glm_to_chatglm_names(weights, num_layers)
    torch_dtype = getattr(torch, dtype)
    weights = {k: v.to(torch_dtype).contiguous() for k, v in weights.items()}
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    _write_side_files(path, format, shape, dtype, tokenizer_dir)
    return path


def build_random_quantized_checkpoint(
    path: str | os.PathLike,
    *,
    bits: int = 4,
    group_size: int = 128,
    format: Literal["glm", "glm4"] = "glm",
    tokenizer_dir: str | os.PathLike | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int = GLM4_VOCAB,
    rope_theta: float = 5_000_000.0,
    eos_ids: Sequence[int] = GLM4_EOS_IDS,
    seed: int = 0,
    dtype: str = "bfloat16",
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a quantized checkpoint of seeded random weights, as `glm-agent model quantize` would.

    The network is the one `build_random_checkpoint` writes with the same arguments (stored in
    `dtype`); here each float tensor is drawn, rounded to `dtype` and handed straight to
    `checkpoint.save_quantized` (the writer and quantizer of `glm-agent model quantize`), so the
    float weights never exist whole, in memory or on disk: GLM-4-9B's shape (18.8 GB in bf16)
    costs one tensor in float32 plus one 2 GiB output shard. `progress(done, total)` as tensors go.

        >>> build_random_quantized_checkpoint("/tmp/q9b", hidden_size=4096, num_layers=40, num_heads=32,
        ...     intermediate_size=13696)                               # doctest: +SKIP
        PosixPath('/tmp/q9b')
    """
    import tempfile

    import torch

    from glm_runtime.checkpoint import Checkpoint, _hf_config, save_quantized
    from glm_runtime.quant import QuantConfig

    if format not in ("glm", "glm4"):
        raise ValueError(f"format must be glm or glm4 (the layouts save_quantized writes), got {format!r}")
    shape = _shape(hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size, vocab_size, rope_theta,
                   eos_ids)
    torch_dtype = getattr(torch, dtype)
    quant = QuantConfig(bits=bits, group_size=group_size, source=f"glm_runtime.testing random weights, seed {seed}")
    with tempfile.TemporaryDirectory(prefix="random-float-") as src:
        # The float checkpoint minus its weights: config and tokenizer, which save_quantized copies.
        src = Path(src)
        _write_side_files(src, format, shape, dtype, tokenizer_dir)
        raw = json.loads((src / "config.json").read_text())
        names = [n for n, _ in _iter_random_glm_weights(_names_only(shape), seed=seed,
                                                        extra_norms=format == "glm4")]
        ckpt = Checkpoint(path=src, format=format, config=_hf_config(raw, format), raw_config=raw,
                          weight_files=[], eos_ids=tuple(shape["eos"]),
                          weight_map={n: src / "generated" for n in names})  # only counted (progress)
        tensors = ((n, t.to(torch_dtype)) for n, t in
                   _iter_random_glm_weights(shape, seed=seed, extra_norms=format == "glm4"))
        return save_quantized(ckpt, path, quant, progress=progress, tensors=tensors)


def _shape(hidden, layers, heads, kv_heads, ffn, vocab, rope_theta, eos_ids) -> dict:
    if hidden % heads or heads % kv_heads:
        raise ValueError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")
    return dict(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, ffn=ffn, vocab=vocab,
                rope_theta=rope_theta, eos=[int(i) for i in eos_ids])


def _names_only(shape: dict) -> dict:
    # The same layout at one unit per dimension: the tensor names without drawing 9B numbers.
    return {**shape, "hidden": shape["heads"], "ffn": 1, "vocab": 1}


def _write_side_files(path: Path, format: str, shape: dict, dtype: str, tokenizer_dir) -> None:
    config = _CONFIG_WRITERS[format](shape, dtype)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    gen = {"eos_token_id": shape["eos"], "pad_token_id": shape["eos"][0], "do_sample": True,
           "temperature": 0.8, "top_p": 0.8}
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2))
    _copy_tokenizer(Path(tokenizer_dir) if tokenizer_dir else _DEFAULT_TOKENIZER_DIR, path)


def _random_glm_weights(shape: dict, *, seed: int, extra_norms: bool) -> dict[str, torch.Tensor]:
    return dict(_iter_random_glm_weights(shape, seed=seed, extra_norms=extra_norms))


def _iter_random_glm_weights(shape: dict, *, seed: int, extra_norms: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, float32 tensor) in the `glm` layout, one at a time: the 9B shape never sits in memory whole."""
    import torch

    g = torch.Generator().manual_seed(seed)
    h, nh, kv, ffn, vocab = shape["hidden"], shape["heads"], shape["kv_heads"], shape["ffn"], shape["vocab"]
    hd = h // nh

    def lin(out_f: int, in_f: int) -> torch.Tensor:
        # 1/sqrt(fan_in) keeps activations O(1) through the layers, so logits are not flat.
        return torch.randn(out_f, in_f, generator=g) / in_f**0.5

    def norm() -> torch.Tensor:
        # Not all ones: a mapping that drops or swaps a norm must change the logits.
        return 1.0 + 0.1 * torch.randn(h, generator=g)

    yield "model.embed_tokens.weight", torch.randn(vocab, h, generator=g)
    for i in range(shape["layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", norm()
        yield p + "self_attn.q_proj.weight", lin(nh * hd, h)
        yield p + "self_attn.q_proj.bias", 0.1 * torch.randn(nh * hd, generator=g)
        yield p + "self_attn.k_proj.weight", lin(kv * hd, h)
        yield p + "self_attn.k_proj.bias", 0.1 * torch.randn(kv * hd, generator=g)
        yield p + "self_attn.v_proj.weight", lin(kv * hd, h)
        yield p + "self_attn.v_proj.bias", 0.1 * torch.randn(kv * hd, generator=g)
        yield p + "self_attn.o_proj.weight", lin(h, nh * hd)
        yield p + "post_attention_layernorm.weight", norm()
        yield p + "mlp.gate_up_proj.weight", lin(2 * ffn, h)
        yield p + "mlp.down_proj.weight", lin(h, ffn)
        if extra_norms:
            yield p + "post_self_attn_layernorm.weight", norm()
            yield p + "post_mlp_layernorm.weight", norm()
    yield "model.norm.weight", norm()
    yield "lm_head.weight", lin(vocab, h)


def _glm_to_chatglm_names(w: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """The inverse of the loader's chatglm mapping: fuse QKV and use the original names."""
    import torch

    out = {
        "transformer.embedding.word_embeddings.weight": w["model.embed_tokens.weight"],
        "transformer.encoder.final_layernorm.weight": w["model.norm.weight"],
        "transformer.output_layer.weight": w["lm_head.weight"],
    }
    for i in range(num_layers):
        src, dst = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
        a = src + "self_attn."
        out[dst + "input_layernorm.weight"] = w[src + "input_layernorm.weight"]
        out[dst + "self_attention.query_key_value.weight"] = torch.cat(
            [w[a + "q_proj.weight"], w[a + "k_proj.weight"], w[a + "v_proj.weight"]])
        out[dst + "self_attention.query_key_value.bias"] = torch.cat(
            [w[a + "q_proj.bias"], w[a + "k_proj.bias"], w[a + "v_proj.bias"]])
        out[dst + "self_attention.dense.weight"] = w[a + "o_proj.weight"]
        out[dst + "post_attention_layernorm.weight"] = w[src + "post_attention_layernorm.weight"]
        out[dst + "mlp.dense_h_to_4h.weight"] = w[src + "mlp.gate_up_proj.weight"]
        out[dst + "mlp.dense_4h_to_h.weight"] = w[src + "mlp.down_proj.weight"]
    return out


def _glm_config(shape: dict, dtype: str, *, model_type: str = "glm", arch: str = "GlmForCausalLM") -> dict:
    # The key layout of published glm-4-9b-chat-hf / GLM-4-0414 configs (top-level rope_theta).
    return {
        "architectures": [arch], "model_type": model_type,
        "attention_bias": True, "attention_dropout": 0.0,
        "eos_token_id": shape["eos"], "pad_token_id": shape["eos"][0],
        "head_dim": shape["hidden"] // shape["heads"], "hidden_act": "silu",
        "hidden_size": shape["hidden"], "intermediate_size": shape["ffn"], "initializer_range": 0.02,
        "max_position_embeddings": 131072, "num_attention_heads": shape["heads"],
        "num_hidden_layers": shape["layers"], "num_key_value_heads": shape["kv_heads"],
        "partial_rotary_factor": 0.5, "rms_norm_eps": 1.5625e-07, "rope_theta": shape["rope_theta"],
        "tie_word_embeddings": False, "torch_dtype": dtype, "vocab_size": shape["vocab"],
    }


def _glm4_config(shape: dict, dtype: str) -> dict:
    return _glm_config(shape, dtype, model_type="glm4", arch="Glm4ForCausalLM")


def _chatglm_config(shape: dict, dtype: str) -> dict:
    # The layout of THUDM/glm-4-9b-chat's config.json, scaled down; RoPE base = 10000 * rope_ratio.
    return {
        "model_type": "chatglm", "architectures": ["ChatGLMModel"],
        "add_bias_linear": False, "add_qkv_bias": True, "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False, "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True, "ffn_hidden_size": shape["ffn"],
        "fp32_residual_connection": False, "hidden_dropout": 0.0, "hidden_size": shape["hidden"],
        "kv_channels": shape["hidden"] // shape["heads"], "layernorm_epsilon": 1.5625e-07,
        "multi_query_attention": True, "multi_query_group_num": shape["kv_heads"],
        "num_attention_heads": shape["heads"], "num_layers": shape["layers"],
        "num_hidden_layers": shape["layers"], "rope_ratio": shape["rope_theta"] / 10000.0,
        "original_rope": True, "padded_vocab_size": shape["vocab"], "post_layer_norm": True,
        "rmsnorm": True, "seq_length": 131072, "use_cache": True, "torch_dtype": dtype,
        "tie_word_embeddings": False, "eos_token_id": shape["eos"], "pad_token_id": shape["eos"][0],
    }


_CONFIG_WRITERS = {"glm": _glm_config, "glm4": _glm4_config, "chatglm": _chatglm_config}


def _copy_tokenizer(src: Path, dest: Path) -> None:
    found = [name for name in _TOKENIZER_FILES if (src / name).is_file()]
    if not any(n in found for n in ("tokenizer.json", "tokenizer.model")):
        raise FileNotFoundError(f"no tokenizer.json or tokenizer.model in {src}")
    for name in found:
        shutil.copyfile(src / name, dest / name)


class ForcedTokens:
    """A logits processor that forces `ids`, then forces `then` (a stop id), on every generate call.

    Its position is the number of tokens generated in the current call: the engine calls `reset()`
    when a call starts, so the same object works across calls and with a reused KV prefix. With
    `then=None` it stops forcing after `ids` and the model's own logits take over.

        >>> proc = ForcedTokens([9707, 11], then=151329)
        >>> import torch; out = proc([1, 2, 3], torch.zeros(8 + 151329))
        >>> int(out.argmax())
        9707
    """

    def __init__(self, ids: Sequence[int], *, then: int | None = _ENDOFTEXT) -> None:
        self.ids = [int(i) for i in ids]
        self.then = then
        self._start: int | None = None
        self._pos = 0

    def reset(self) -> None:
        self._start = None
        self._pos = 0

    @property
    def position(self) -> int:
        """How many tokens have been forced in the current call (0 before the first)."""
        return self._pos

    def __call__(self, ids_so_far: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        import torch

        n = len(ids_so_far)
        if self._start is None or n < self._start:
            # First call of a generate() (or a caller that never resets): the prompt ends here.
            self._start = n
        self._pos = n - self._start
        target = self.ids[self._pos] if self._pos < len(self.ids) else self.then
        if target is None:
            return logits
        if not 0 <= target < logits.shape[-1]:
            raise ValueError(f"forced id {target} is outside the model's vocabulary of {logits.shape[-1]}")
        forced = torch.full_like(logits, float("-inf"))
        forced[..., target] = 0.0
        return forced


def forced_text(tokenizer, text: str, *, then: int | None = _ENDOFTEXT) -> ForcedTokens:
    """A `ForcedTokens` that makes the model write `text` (special tokens like `<|observation|>` allowed).

        >>> proc = forced_text(tok, "\\nThe answer is 391.", then=151336)  # doctest: +SKIP
    """
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ForcedTokens(ids, then=then)
