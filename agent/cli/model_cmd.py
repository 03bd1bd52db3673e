"""`glm-agent model ...`: Inspect, quantize and run local GLM-4 checkpoints.

    glm-agent model info ./glm-4-9b-chat
    glm-agent model quantize ./glm-4-9b-chat ./glm-4-9b-chat-int4 --bits 4
    glm-agent model generate ./glm-4-9b-chat-int4 "[gMASK]<sop><|user|>\\nHi<|assistant|>" --greedy --json
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(help="Inspect, quantize and run local GLM-4 checkpoints.", no_args_is_help=True)


class QuantizeOpt(str, Enum):
    auto = "auto"
    int4 = "int4"
    int8 = "int8"
    none = "none"


class DtypeOpt(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)


def _user_errors() -> tuple[type[BaseException], ...]:
    from glm_runtime.checkpoint import CheckpointError
    from glm_runtime.tokenizer import TokenizerError

    return (CheckpointError, TokenizerError, ValueError)


@app.command()
def info(
    model: str = typer.Argument(..., help="Checkpoint directory or Hugging Face repo id."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    offline: bool = typer.Option(False, "--offline", help="Never download; use the local cache only."),
) -> None:
    """Describe a checkpoint (format, shape, quantization, files) without loading its weights."""
    try:
        from glm_runtime.checkpoint import open_checkpoint, param_count

        ckpt = open_checkpoint(model, offline=offline)
    except _user_errors() as e:
        raise _fail(str(e)) from None
    c = ckpt.config
    files = {f.name: f.stat().st_size for f in ckpt.weight_files}
    tokenizer = next((n for n in ("tokenizer.json", "tokenizer.model") if (ckpt.path / n).is_file()), None)
    facts: dict[str, Any] = {
        "path": str(ckpt.path), "format": ckpt.format, "model_class": ckpt.model_class.__name__,
        "parameters": param_count(c), "layers": c.num_hidden_layers, "hidden_size": c.hidden_size,
        "attention_heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads, "head_dim": c.head_dim,
        "intermediate_size": c.intermediate_size, "vocab_size": c.vocab_size,
        "context": c.max_position_embeddings, "rope_theta": c.rope_parameters.get("rope_theta"),
        "eos_ids": list(ckpt.eos_ids), "stored_dtype": ckpt.raw_config.get("torch_dtype") or ckpt.raw_config.get("dtype"),
        "quantization": ckpt.quant.to_dict() if ckpt.quant else None,
        "weight_bytes": sum(files.values()), "weight_files": files, "tokenizer": tokenizer,
    }
    if as_json:
        typer.echo(json.dumps(facts, indent=2))
        return
    for key, value in facts.items():
        if key == "weight_files":
            value = ", ".join(files) if len(files) <= 4 else f"{len(files)} files"
        elif key == "parameters":
            value = f"{value:,} ({value / 1e9:.2f}B)"
        elif key == "weight_bytes":
            value = f"{value / 2**30:.2f} GiB"
        typer.echo(f"{key:>18}: {value}")


@app.command()
def quantize(
    src: str = typer.Argument(..., help="Float checkpoint: directory or Hugging Face repo id."),
    dest: Path = typer.Argument(..., help="Directory to write the quantized checkpoint into."),
    bits: int = typer.Option(4, "--bits", help="4 (W4A16, group-wise) or 8 (W8A16, per channel)."),
    group_size: int = typer.Option(128, "--group-size", help="INT4 group size (32, 64, 128 or 256)."),
    offline: bool = typer.Option(False, "--offline", help="Never download; use the local cache only."),
) -> None:
    """Quantize once; the result loads later without re-quantizing (scheme recorded in its metadata)."""
    try:
        from glm_runtime.checkpoint import open_checkpoint, save_quantized
        from glm_runtime.quant import QuantConfig

        qc = QuantConfig(bits=bits, group_size=group_size)
        ckpt = open_checkpoint(src, offline=offline)
        if dest.exists() and any(dest.iterdir()):
            raise _fail(f"{dest} exists and is not empty")
        out = save_quantized(ckpt, dest, qc, progress=_progress("quantizing"))
    except _user_errors() as e:
        raise _fail(str(e)) from None
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    typer.echo(f"wrote {out} ({size / 2**30:.2f} GiB, {qc.scheme}, bits={bits})")


@app.command()
def generate(
    model: str = typer.Argument(..., help="Checkpoint directory or Hugging Face repo id."),
    text: str = typer.Argument(..., help="Raw prompt text; special tokens like <|user|> are allowed."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n"),
    greedy: bool = typer.Option(False, "--greedy", help="Argmax decoding (else the checkpoint's sampling settings)."),
    quantize: QuantizeOpt = typer.Option(QuantizeOpt.auto, "--quantize"),
    dtype: DtypeOpt = typer.Option(DtypeOpt.auto, "--dtype"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps"),
    seed: int | None = typer.Option(None, "--seed", help="Seed for sampling."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: ids, text, prefill and decode speed."),
    offline: bool = typer.Option(False, "--offline", help="Never download; use the local cache only."),
    prompt_cache: Path | None = typer.Option(
        None, "--prompt-cache", help="Directory of saved prompt KV caches: reuse a saved prefix, save this prompt."),
) -> None:
    """Print the continuation of a raw text: how to check that a model loads and talks."""
    try:
        from glm_runtime.engine import SamplingParams, load_engine

        engine = load_engine(model, quantize=quantize.value, dtype=dtype.value, device=device, offline=offline,
                             prompt_cache_dir=prompt_cache)
        sampling = SamplingParams() if greedy else _checkpoint_sampling(engine.checkpoint_dir, seed)
        ids = engine.encode(text)
        stream = engine.generate(ids, max_new_tokens=max_new_tokens, sampling=sampling)
        out: list[int] = []
        printed = ""
        try:
            for tok in stream:
                out.append(tok)
                if not as_json:
                    printed = _print_delta(engine.decode(out), printed)
        except KeyboardInterrupt:
            typer.echo("", err=True)
    except _user_errors() as e:
        raise _fail(str(e)) from None
    stats = engine.last_stats
    if as_json:
        typer.echo(json.dumps({
            "ids": out, "text": engine.decode(out), "prompt_tokens": stats.prompt_tokens,
            "prefill_tokens": stats.prefill_tokens, "prefill_tok_s": round(stats.prefill_tok_s, 3),
            "reused_tokens": stats.reused_tokens, "disk_reused_tokens": stats.disk_reused_tokens,
            "disk_saved_tokens": stats.disk_saved_tokens,
            "decode_tok_s": round(stats.decode_tok_s, 3), "new_tokens": stats.new_tokens,
            "stop_reason": stats.stop_reason, "stop_id": stats.stop_id, "quantization": engine.quantization,
            "dtype": str(engine.dtype).removeprefix("torch."), "device": str(engine.device),
        }, ensure_ascii=False))
    else:
        _print_delta(engine.decode(out), printed, final=True)
        typer.echo("")
        typer.echo(f"[{stats.prefill_tokens} prompt tokens at {stats.prefill_tok_s:.1f} tok/s, "
                   f"{stats.new_tokens} new at {stats.decode_tok_s:.1f} tok/s, {stats.stop_reason}]", err=True)


def _print_delta(text: str, printed: str, *, final: bool = False) -> str:
    from glm_runtime.tokenizer import CASE_MARK, unfinished

    # Hold back half a character: the next token may complete a multi-byte character or a case mark.
    if not final and unfinished(text):
        return printed
    if final:  # a case mark whose letter never came
        text = text.removesuffix(CASE_MARK)
    if text.startswith(printed):
        sys.stdout.write(text[len(printed):])
        sys.stdout.flush()
    return text


def _checkpoint_sampling(path: Path, seed: int | None):
    from glm_runtime.engine import SamplingParams

    gen_file = path / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
    if not gen.get("do_sample", True):
        return SamplingParams(seed=seed)
    return SamplingParams(temperature=float(gen.get("temperature", 0.8)), top_p=float(gen.get("top_p", 0.8)),
                          top_k=int(gen.get("top_k", 0) or 0), seed=seed)


def _progress(label: str):
    """A `progress(done, total)` callback printing whole percents to stderr, only when it is a terminal."""
    if not sys.stderr.isatty():
        return None
    last = [-1]

    def report(done: int, total: int) -> None:
        pct = 100 * done // max(total, 1)
        if pct != last[0]:
            last[0] = pct
            sys.stderr.write(f"\r{label}: {pct}%")
            if done >= total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    return report
