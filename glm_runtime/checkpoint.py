"""GLM-4 checkpoints: find them, read their config, stream their tensors, load them, quantize them.

Three layouts load into transformers' own model classes, without remote code:

| format    | published as                      | model class        | what differs                          |
| --------- | --------------------------------- | ------------------ | ------------------------------------- |
| `glm`     | glm-4-9b-chat-hf                  | `GlmForCausalLM`   | (transformers' names)                 |
| `glm4`    | GLM-4-0414                        | `Glm4ForCausalLM`  | two extra norms per layer             |
| `chatglm` | glm-4-9b-chat, glm-4-9b-chat-1m   | `GlmForCausalLM`   | fused QKV, other names, `rope_ratio`  |

A `chatglm` checkpoint's RoPE base is `10000 * rope_ratio` (5e6 for GLM-4-9B) on half of each head,
with interleaved pairs: exactly `GlmForCausalLM` with `partial_rotary_factor=0.5`, so the mapping
only renames tensors and splits the fused QKV projection.

Tensors are read one at a time (safetensors is memory-mapped), so loading with quantization, and
loading a quantized checkpoint, never holds the full-precision model in memory.

    >>> ckpt = open_checkpoint("THUDM/glm-4-9b-chat")      # doctest: +SKIP
    >>> ckpt.format, ckpt.config.rope_parameters["rope_theta"]  # doctest: +SKIP
    ('chatglm', 5000000.0)
    >>> model = load_model(ckpt, dtype=torch.bfloat16, device="cpu", quant=QuantConfig(bits=4))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glm_runtime.quant import QuantConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "Checkpoint", "CheckpointError", "load_model", "open_checkpoint", "page_out", "param_count", "resolve_model_dir",
    "save_quantized",
]

log = logging.getLogger(__name__)

FORMATS = ("glm", "glm4", "chatglm")
_FETCH_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja"]
_SHARD_BYTES = 2 * 1024**3
_IGNORED = re.compile(r"(^|\.)rotary_(pos_)?emb\.inv_freq$")


class CheckpointError(Exception):
    """A checkpoint is missing, incomplete, corrupt, or in a layout glm-agent does not load."""


@dataclass
class Checkpoint:
    """A checkpoint directory, read but not loaded: its format, its transformers config, its files."""

    path: Path
    format: str
    config: Any                                   # transformers GlmConfig or Glm4Config
    raw_config: dict[str, Any]
    weight_files: list[Path]
    quant: QuantConfig | None = None              # set when the checkpoint stores quantized weights
    eos_ids: tuple[int, ...] = ()
    weight_map: dict[str, Path] = field(default_factory=dict)  # tensor name (as stored) -> file

    @property
    def model_class(self) -> type:
        from transformers import Glm4ForCausalLM, GlmForCausalLM

        return Glm4ForCausalLM if self.format == "glm4" else GlmForCausalLM


# ---- finding a checkpoint ----

def resolve_model_dir(model: str | os.PathLike, *, offline: bool = False, cache_dir: str | None = None) -> Path:
    """A local directory as is; a Hugging Face repo id from the local cache first, else downloaded.

        >>> resolve_model_dir("THUDM/glm-4-9b-chat-hf", offline=True)   # doctest: +SKIP
        PosixPath('/root/.cache/huggingface/hub/models--THUDM--glm-4-9b-chat-hf/snapshots/...')
    """
    p = Path(model).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise CheckpointError(f"{p} is a file; a checkpoint is a directory holding config.json and *.safetensors")
    repo = str(model)
    if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", repo):
        raise CheckpointError(f"{repo}: no such directory, and not a Hugging Face repo id (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=_FETCH_PATTERNS, local_files_only=True, cache_dir=cache_dir))
    except Exception as cached_miss:  # noqa: BLE001 - any miss means: not fully in the cache
        miss = cached_miss
    hint = (f"{repo} is not in the local Hugging Face cache. It needs config.json, the *.safetensors "
            f"weights and the tokenizer files; fetch them with\n"
            f"  huggingface-cli download {repo} --include {' '.join(repr(p) for p in _FETCH_PATTERNS)} "
            f"--local-dir DIR\nand pass DIR instead")
    if offline:
        raise CheckpointError(hint) from miss
    try:
        return Path(snapshot_download(repo, allow_patterns=_FETCH_PATTERNS, cache_dir=cache_dir))
    except Exception as e:  # noqa: BLE001 - network, auth or missing repo: all end the same way
        raise CheckpointError(f"{hint}\n(download failed: {type(e).__name__}: {e})") from e


# ---- reading the config ----

def open_checkpoint(model: str | os.PathLike, *, offline: bool = False) -> Checkpoint:
    """Read a checkpoint's config and list its weights; checks the files exist and parse."""
    path = resolve_model_dir(model, offline=offline)
    raw = _read_json(path / "config.json", what="config.json")
    model_type = raw.get("model_type")
    if model_type not in FORMATS:
        raise CheckpointError(
            f"{path}/config.json: model_type {model_type!r} is not a GLM-4 layout glm-agent loads "
            f"(expected one of {', '.join(FORMATS)})")
    quant = None
    if "quantization_config" in raw:
        try:
            quant = QuantConfig.from_dict(raw["quantization_config"])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}/config.json: quantization_config: {e}") from e
    config = _chatglm_config(raw, path) if model_type == "chatglm" else _hf_config(raw, model_type)
    _check_rope(config, model_type, path)
    weight_map = _weight_map(path)
    eos = _eos_ids(path, raw)
    return Checkpoint(path=path, format=model_type, config=config, raw_config=raw,
                      weight_files=sorted(set(weight_map.values())), quant=quant, eos_ids=eos,
                      weight_map=weight_map)


def _read_json(file: Path, *, what: str) -> dict[str, Any]:
    if not file.is_file():
        raise CheckpointError(f"{file.parent}: no {what} (is this a checkpoint directory?)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} must hold a JSON object")
    return data


def _hf_config(raw: dict[str, Any], model_type: str):
    from transformers import Glm4Config, GlmConfig

    d = {k: v for k, v in raw.items() if k != "quantization_config"}
    try:
        return (Glm4Config if model_type == "glm4" else GlmConfig).from_dict(d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"config.json does not describe a {model_type} model: {e}") from e


def _chatglm_config(raw: dict[str, Any], path: Path):
    """Map the original ChatGLM config onto `GlmConfig`, refusing variants the mapping does not cover."""
    from transformers import GlmConfig

    expected = {"rmsnorm": True, "add_qkv_bias": True, "add_bias_linear": False, "post_layer_norm": True,
                "apply_residual_connection_post_layernorm": False}
    wrong = {k: raw.get(k) for k, v in expected.items() if raw.get(k, v) != v}
    if wrong:
        raise CheckpointError(f"{path}/config.json: a chatglm variant glm-agent cannot map ({wrong}); "
                              "GLM-4 checkpoints have RMSNorm, QKV bias and no other linear bias")
    try:
        heads = int(raw["num_attention_heads"])
        hidden = int(raw["hidden_size"])
        kv = int(raw["multi_query_group_num"]) if raw.get("multi_query_attention", False) else heads
        rope_theta = 10000.0 * float(raw.get("rope_ratio", 1.0))
        return GlmConfig(
            vocab_size=int(raw["padded_vocab_size"]), hidden_size=hidden,
            intermediate_size=int(raw["ffn_hidden_size"]), num_hidden_layers=int(raw["num_layers"]),
            num_attention_heads=heads, num_key_value_heads=kv,
            head_dim=int(raw.get("kv_channels", hidden // heads)),
            max_position_embeddings=int(raw.get("seq_length", 131072)),
            rms_norm_eps=float(raw.get("layernorm_epsilon", 1.5625e-07)), attention_bias=True,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "partial_rotary_factor": 0.5},
            eos_token_id=raw.get("eos_token_id"), pad_token_id=raw.get("pad_token_id", 151329),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}/config.json: incomplete chatglm config ({type(e).__name__}: {e})") from e


def _check_rope(config, model_type: str, path: Path) -> None:
    theta = config.rope_parameters.get("rope_theta")
    # One glm-4-9b-chat-hf converter wrote 10000 where the original rope_ratio 500 means 5e6.
    is_9b = (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (4096, 40, 151552)
    if model_type == "glm" and is_9b and theta == 10000.0:
        log.warning("%s: rope_theta is 10000, but GLM-4-9B uses 5e6 (10000 * rope_ratio 500); "
                    "this config may come from a faulty conversion", path)


def _weight_map(path: Path) -> dict[str, Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        wm = _read_json(index, what="model.safetensors.index.json").get("weight_map")
        if not isinstance(wm, dict) or not wm:
            raise CheckpointError(f"{index} has no weight_map")
        files = {name: path / f for name, f in wm.items()}
        missing = sorted({f.name for f in files.values() if not f.is_file()})
        if missing:
            raise CheckpointError(f"{path}: incomplete checkpoint, missing shard(s) {', '.join(missing)} "
                                  f"named in {index.name}")
        return files
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        extra = " (found PyTorch .bin weights: convert them to safetensors)" if list(path.glob("*.bin")) else ""
        raise CheckpointError(f"{path}: no *.safetensors weights{extra}")
    out: dict[str, Path] = {}
    for shard in shards:
        for name in _safetensors_keys(shard):
            out[name] = shard
    return out


def _safetensors_keys(file: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            return list(f.keys())
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a bad header
        raise CheckpointError(f"{file} is not a readable safetensors file (corrupt or truncated?): {e}") from e


def _eos_ids(path: Path, raw: dict[str, Any]) -> tuple[int, ...]:
    ids: list[int] = []
    sources = [raw.get("eos_token_id")]
    gen = path / "generation_config.json"
    if gen.is_file():
        sources.append(_read_json(gen, what="generation_config.json").get("eos_token_id"))
    for v in sources:
        for i in v if isinstance(v, list) else [v]:
            if isinstance(i, int) and i not in ids:
                ids.append(i)
    return tuple(ids)


def param_count(config) -> int:
    """Parameters of the network `config` describes (embedding and output projection included)."""
    h, v, ffn, n = config.hidden_size, config.vocab_size, config.intermediate_size, config.num_hidden_layers
    hd = config.head_dim or h // config.num_attention_heads
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    attn = h * (q + 2 * kv) + (q + 2 * kv) + q * h
    mlp = h * 2 * ffn + ffn * h
    norms = (4 if config.model_type == "glm4" else 2) * h
    return v * h * 2 + n * (attn + mlp + norms) + h


# ---- streaming tensors in transformers' names ----

def iter_tensors(ckpt: Checkpoint) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) one at a time, named as in the transformers model class."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for name, f in ckpt.weight_map.items():
        by_file.setdefault(f, []).append(name)
    for file, names in by_file.items():
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in names:
                    if _IGNORED.search(name):
                        continue
                    t = f.get_tensor(name)
                    if ckpt.format == "chatglm":
                        yield from _chatglm_tensor(name, t, ckpt.config)
                    else:
                        yield name, t
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - a truncated or corrupt file fails in safetensors
            raise CheckpointError(f"{file}: could not read tensor data (corrupt or truncated?): {e}") from e


_CHATGLM_RENAMES = [
    (re.compile(r"^transformer\.embedding\.word_embeddings\.weight$"), "model.embed_tokens.weight"),
    (re.compile(r"^transformer\.encoder\.final_layernorm\.weight$"), "model.norm.weight"),
    (re.compile(r"^transformer\.output_layer\.weight$"), "lm_head.weight"),
    (re.compile(r"^transformer\.encoder\.layers\.(\d+)\.self_attention\.dense\.weight$"),
     r"model.layers.\1.self_attn.o_proj.weight"),
    (re.compile(r"^transformer\.encoder\.layers\.(\d+)\.mlp\.dense_h_to_4h\.weight$"),
     r"model.layers.\1.mlp.gate_up_proj.weight"),
    (re.compile(r"^transformer\.encoder\.layers\.(\d+)\.mlp\.dense_4h_to_h\.weight$"),
     r"model.layers.\1.mlp.down_proj.weight"),
    (re.compile(r"^transformer\.encoder\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight$"),
     r"model.layers.\1.\2.weight"),
]
_CHATGLM_QKV = re.compile(r"^transformer\.encoder\.layers\.(\d+)\.self_attention\.query_key_value\.(weight|bias)$")


def _chatglm_tensor(name: str, t: torch.Tensor, config) -> Iterator[tuple[str, torch.Tensor]]:
    m = _CHATGLM_QKV.match(name)
    if m:
        layer, kind = m.groups()
        hd = config.head_dim
        sizes = [config.num_attention_heads * hd, config.num_key_value_heads * hd, config.num_key_value_heads * hd]
        if t.shape[0] != sum(sizes):
            raise CheckpointError(f"{name}: {t.shape[0]} rows, config implies {sum(sizes)} (q, k, v)")
        for proj, part in zip(("q_proj", "k_proj", "v_proj"), t.split(sizes, dim=0)):
            yield f"model.layers.{layer}.self_attn.{proj}.{kind}", part
        return
    for pattern, repl in _CHATGLM_RENAMES:
        if pattern.match(name):
            yield pattern.sub(repl, name), t
            return
    raise CheckpointError(f"unexpected tensor {name!r} in a chatglm checkpoint")


# ---- loading ----

def load_model(ckpt: Checkpoint, *, dtype: torch.dtype, device: str | torch.device = "cpu",
               quant: QuantConfig | None = None, progress: Callable[[int, int], None] | None = None) -> nn.Module:
    """Build the transformers model on the meta device and fill it tensor by tensor.

    `quant` quantizes a float checkpoint on the fly (one tensor in float32 at a time); a quantized
    checkpoint is loaded as stored, and `quant` must then be None or equal to its own scheme.
    `progress(done, total)` is called as tensors arrive.
    """
    import torch
    from accelerate import init_empty_weights

    if ckpt.quant is not None and quant is not None and (quant.bits, quant.group_size) != (
            ckpt.quant.bits, ckpt.quant.group_size):
        raise CheckpointError(f"{ckpt.path} is already quantized ({ckpt.quant.scheme}, {ckpt.quant.bits} bits); "
                              f"load it as stored, or re-quantize from the float checkpoint")
    stored_quant = ckpt.quant is not None
    quant = ckpt.quant or quant
    device = torch.device(device)
    with init_empty_weights(include_buffers=False):
        model = ckpt.model_class(ckpt.config)
    model.eval()
    if quant is not None:
        quant = _fit_group_size(quant, model)
    targets = set(_quant_targets(model, quant)) if quant else set()
    pending: dict[str, dict[str, torch.Tensor]] = {}
    total = len(ckpt.weight_map)
    for done, (name, t) in enumerate(iter_tensors(ckpt), start=1):
        mod_name, _, leaf = name.rpartition(".")
        if mod_name in targets:
            parts = pending.setdefault(mod_name, {})
            parts[leaf] = t
            module = _build_quantized(model, mod_name, parts, quant, stored_quant, dtype, device)
            if module is not None:
                from glm_runtime.quant import replace_linear

                replace_linear(model, mod_name, module)
                del pending[mod_name]
        elif name == "model.embed_tokens.weight" and _embedding_stays_stored(model, t, quant, dtype, device):
            _set_tensor(model, name, t, t.dtype, device)
            model.model.embed_tokens.register_forward_hook(lambda _m, _args, rows: rows.to(dtype))
        else:
            _set_tensor(model, name, t, dtype, device)
        if progress:
            progress(min(done, total), total)
    if getattr(model.config, "tie_word_embeddings", False) and model.lm_head.weight.device.type == "meta":
        model.lm_head.weight = model.model.embed_tokens.weight  # tied: stored once, as the embedding
    _check_complete(model, ckpt)
    for buf_owner in model.modules():  # non-persistent buffers (RoPE frequencies) were built on CPU
        for bname, buf in list(buf_owner.named_buffers(recurse=False)):
            if buf.device != device:
                buf_owner._buffers[bname] = buf.to(device)
    if quant is not None:
        if quant.bits == 4:  # an old layout was repacked on load: what runs is the current one
            from dataclasses import replace

            from glm_runtime.quant import INT4_PACKING

            quant = replace(quant, packing=INT4_PACKING)
        model.config.glm_agent_quantization = quant.to_dict()
    return model


def _embedding_stays_stored(model: nn.Module, t: torch.Tensor, quant: QuantConfig | None, dtype, device) -> bool:
    """Whether a quantized model keeps its 16-bit embedding table as stored and upcasts the rows it looks up.

    A float32 run (CPUs without fast bf16) would otherwise hold GLM-4-9B's 151552 x 4096 table in
    float32: 2.3 GiB instead of 1.16. Upcasting bf16/fp16 is exact, so the rows are the same numbers.
    Only for quantized (inference-only) models with an untied output projection.
    """
    import torch

    return (quant is not None and dtype == torch.float32 and t.dtype in (torch.bfloat16, torch.float16)
            and not getattr(model.config, "tie_word_embeddings", False) and torch.device(device).type == "cpu")


def _quant_targets(model: nn.Module, quant: QuantConfig) -> Iterator[str]:
    from glm_runtime.quant import quantized_linear_names

    # A tied output projection is the embedding table itself: it stays as the embedding is.
    tied = getattr(model.config, "tie_word_embeddings", False)
    yield from quantized_linear_names(model.config.num_hidden_layers, lm_head=quant.lm_head and not tied)


def _fit_group_size(quant: QuantConfig, model: nn.Module) -> QuantConfig:
    """Shrink the INT4 group size until it divides every quantized layer's input width (tiny models)."""
    from dataclasses import replace

    if quant.bits != 4:
        return quant
    widths = {model.get_submodule(n).in_features for n in _quant_targets(model, quant)}
    g = quant.group_size
    while g > 32 and any(w % g for w in widths):
        g //= 2
    if any(w % g for w in widths):
        raise CheckpointError(f"INT4 needs layer widths divisible by 32; this model has {sorted(widths)}")
    return replace(quant, group_size=g) if g != quant.group_size else quant


def _build_quantized(model, mod_name, parts, quant, stored, dtype, device):
    """The quantized module for `mod_name` once all its tensors arrived, else None."""
    import torch

    from glm_runtime.quant import (
        LEGACY_INT4_PACKING, Int4Linear, Int4Packed, Int8Linear, int4_from_legacy, int4_packed_shapes, quantize_int4,
        quantize_int8,
    )

    shell = model.get_submodule(mod_name)
    legacy = stored and quant.bits == 4 and quant.packing == LEGACY_INT4_PACKING
    need = {"qweight", "scales_and_zeros" if legacy else "scales"} if stored else {"weight"}
    if shell.bias is not None:
        need.add("bias")
    if not need <= parts.keys():
        return None
    unexpected = parts.keys() - need
    if unexpected:
        raise CheckpointError(f"{mod_name}: unexpected tensors {sorted(unexpected)}")
    bias = parts.get("bias")
    if not stored:
        w = parts["weight"]
        if tuple(w.shape) != (shell.out_features, shell.in_features):
            raise CheckpointError(f"{mod_name}.weight: shape {tuple(w.shape)}, model expects "
                                  f"{(shell.out_features, shell.in_features)}")
    if quant.bits == 8:
        q, s = (parts["qweight"], parts["scales"]) if stored else quantize_int8(w)
        if tuple(q.shape) != (shell.out_features, shell.in_features):
            raise CheckpointError(f"{mod_name}.qweight: shape {tuple(q.shape)}, model expects "
                                  f"{(shell.out_features, shell.in_features)}")
        return Int8Linear(q.to(device), s.to(device), None if bias is None else bias.to(device), dtype=dtype)
    if not stored:
        packed = quantize_int4(w, quant.group_size)
        page_out([w])  # quantized on load: the mapped float weight is dead
    elif legacy:
        q, sz = parts["qweight"], parts["scales_and_zeros"]
        if tuple(q.shape) != (shell.out_features, shell.in_features // 2):
            raise CheckpointError(f"{mod_name}.qweight: shape {tuple(q.shape)}, model expects "
                                  f"{(shell.out_features, shell.in_features // 2)}")
        try:
            packed = int4_from_legacy(q, sz, quant.group_size)
        except ValueError as e:
            raise CheckpointError(f"{mod_name}: {e}") from e
    else:
        packed = Int4Packed(parts["qweight"], parts["scales"], quant.group_size, shell.in_features, shell.out_features)
        shapes = int4_packed_shapes(shell.out_features, shell.in_features, quant.group_size)
        for leaf, (want_dtype, want_shape) in shapes.items():
            got = getattr(packed, leaf)
            if tuple(got.shape) != want_shape or got.dtype != want_dtype:
                raise CheckpointError(f"{mod_name}.{leaf}: {got.dtype} {tuple(got.shape)}, model expects "
                                      f"{want_dtype} {want_shape} ({quant.packing})")
    packed = packed._replace(qweight=packed.qweight.contiguous(), scales=packed.scales.contiguous())
    return Int4Linear.from_packed(packed, bias).to(device)


def _set_tensor(model: nn.Module, name: str, t: torch.Tensor, dtype, device) -> None:
    from torch import nn

    mod_name, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(mod_name)
    except AttributeError:
        raise CheckpointError(f"unexpected tensor {name!r}: the {type(model).__name__} has no {mod_name!r}") from None
    old = module._parameters.get(leaf)
    if old is None:
        raise CheckpointError(f"unexpected tensor {name!r} for {type(model).__name__}")
    if old.shape != t.shape:
        raise CheckpointError(f"{name}: shape {tuple(t.shape)} in the checkpoint, model expects {tuple(old.shape)}")
    value = t.to(device=device, dtype=dtype)
    if value.data_ptr() != t.data_ptr():
        page_out([t])  # converted: the mapped original is dead
    module._parameters[leaf] = nn.Parameter(value, requires_grad=False)


def _check_complete(model: nn.Module, ckpt: Checkpoint) -> None:
    # Quantized layers still waiting for a part keep their meta shell, so they show up here too.
    missing = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise CheckpointError(f"{ckpt.path}: incomplete checkpoint, missing {shown}")


def page_out(tensors: Iterable[torch.Tensor]) -> None:
    """Hand the resident pages of tensors no longer used back to the kernel (Linux; elsewhere nothing).

    Loaded weights are views of the checkpoint's memory-mapped safetensors files, and a page read
    once stays resident while its file is mapped, which is as long as any tensor of that file lives.
    A tensor read only to be converted or copied (a dtype cast, quantization on load, the decoder's
    q/k/v fusion) would stay counted beside its copy (GLM-4-9B: 0.36 GiB of q/k/v, 1.16 GiB of
    embedding cast to float32). MADV_PAGEOUT never loses data (a page comes back from the file, or
    stays), so it is safe on any memory.

        >>> page_out([f.get_tensor("lm_head.weight")])   # doctest: +SKIP
    """
    import ctypes
    import mmap
    import sys

    if not sys.platform.startswith("linux"):
        return
    advice = getattr(mmap, "MADV_PAGEOUT", 21)  # Linux 5.4+; Python's mmap may not define it
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for t in tensors:
        start = -(-t.data_ptr() // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the tensor only
        end = (t.data_ptr() + t.numel() * t.element_size()) // mmap.PAGESIZE * mmap.PAGESIZE
        if t.device.type == "cpu" and t.is_contiguous() and end > start:
            madvise(start, end - start, advice)  # a failure (old kernel) only leaves the pages resident


# ---- saving a quantized copy ----

def save_quantized(ckpt: Checkpoint, dest: str | os.PathLike, quant: QuantConfig,
                   progress: Callable[[int, int], None] | None = None, *,
                   tensors: Iterable[tuple[str, torch.Tensor]] | None = None) -> Path:
    """Write `ckpt` quantized to `dest` (transformers layout, scheme in config.json and safetensors metadata).

    Reads one tensor at a time; memory peaks at one float32 tensor plus one output shard.
    `tensors` stands in for reading `ckpt`'s files: (name, tensor) pairs in transformers' names, made
    on the fly (`glm_runtime.testing.build_random_quantized_checkpoint` writes a 9B-shaped checkpoint
    this way without ever holding, or storing, its float weights).

        >>> save_quantized(open_checkpoint("glm-4-9b-chat"), "glm-4-9b-chat-int4", QuantConfig(bits=4))  # doctest: +SKIP
    """
    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import save_file

    if ckpt.quant is not None:
        raise CheckpointError(f"{ckpt.path} is already quantized ({ckpt.quant.scheme}); quantize the float checkpoint")
    dest = Path(dest)
    if dest.resolve() == ckpt.path.resolve():
        raise CheckpointError("destination must differ from the source checkpoint")
    dest.mkdir(parents=True, exist_ok=True)
    with init_empty_weights(include_buffers=False):
        shell = ckpt.model_class(ckpt.config)
    quant = _fit_group_size(QuantConfig(bits=quant.bits, group_size=quant.group_size, lm_head=quant.lm_head,
                                        source=quant.source or str(ckpt.path)), shell)
    targets = {f"{n}.weight" for n in _quant_targets(shell, quant)}
    meta = {"format": "pt", "glm_agent.quantization": json.dumps(quant.to_dict())}
    shard: dict[str, torch.Tensor] = {}
    shard_bytes, shard_files, weight_map = 0, [], {}
    total = len(ckpt.weight_map)

    def flush() -> None:
        nonlocal shard, shard_bytes
        fname = f"model-{len(shard_files) + 1:05d}.safetensors"
        save_file(shard, str(dest / fname), metadata=meta)
        shard_files.append(fname)
        weight_map.update({k: fname for k in shard})
        shard, shard_bytes = {}, 0

    expected = {n: tuple(p.shape) for n, p in shell.named_parameters()}
    seen: set[str] = set()
    try:
        for done, (name, t) in enumerate(iter_tensors(ckpt) if tensors is None else tensors, start=1):
            _check_expected(name, t, expected)
            seen.add(name)
            shard_bytes += _quantize_into(shard, name, t, targets, quant)
            if shard_bytes >= _SHARD_BYTES:
                flush()
            if progress:
                progress(min(done, total), total)
        missing = sorted(expected.keys() - seen)
        if missing:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            raise CheckpointError(f"{ckpt.path}: incomplete checkpoint, missing {shown}")
        if shard:
            flush()
    except BaseException:
        for fname in shard_files:  # never leave a half-written quantized checkpoint behind
            (dest / fname).unlink(missing_ok=True)
        raise
    (dest / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"glm_agent.quantization": quant.to_dict()}, "weight_map": weight_map}, indent=1))
    _write_config(ckpt, dest, quant)
    _copy_side_files(ckpt.path, dest)
    return dest


def _check_expected(name: str, t, expected: dict[str, tuple[int, ...]]) -> None:
    if name not in expected:
        raise CheckpointError(f"unexpected tensor {name!r} for this model")
    if tuple(t.shape) != expected[name]:
        raise CheckpointError(f"{name}: shape {tuple(t.shape)} in the checkpoint, model expects {expected[name]}")


def _quantize_into(shard: dict, name: str, t, targets: set[str], quant: QuantConfig) -> int:
    """Add `name`'s tensors (quantized if it is a target weight) to `shard`; return the bytes added."""
    import torch

    from glm_runtime.quant import quantize_int4, quantize_int8

    if name in targets:
        base = name[: -len(".weight")]
        if quant.bits == 4:
            packed = quantize_int4(t, quant.group_size)  # the kernel's layout (quant.packing)
            out = {f"{base}.qweight": packed.qweight, f"{base}.scales": packed.scales}
        else:
            q, s = quantize_int8(t)
            out = {f"{base}.qweight": q, f"{base}.scales": s}
    else:
        out = {name: t}
    added = 0
    for k, v in out.items():
        shard[k] = v.contiguous()
        added += v.numel() * v.element_size()
    return added


def _write_config(ckpt: Checkpoint, dest: Path, quant: QuantConfig) -> None:
    d = ckpt.config.to_dict()
    d["model_type"] = "glm4" if ckpt.format == "glm4" else "glm"
    d["architectures"] = [ckpt.model_class.__name__]
    d["quantization_config"] = quant.to_dict()
    d["glm_agent_source_format"] = ckpt.format
    (dest / "config.json").write_text(json.dumps(d, indent=2, default=str))


def _copy_side_files(src: Path, dest: Path) -> None:
    """Tokenizer and generation files; never weights, index or config (rewritten above)."""
    skip = {"config.json", "model.safetensors.index.json"}
    for f in src.iterdir():
        if f.is_file() and f.name not in skip and f.suffix in (".json", ".model", ".txt", ".jinja"):
            shutil.copyfile(f, dest / f.name)
