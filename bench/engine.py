"""Benchmark of the local engine on a GLM-4-shaped checkpoint with random weights.

In one run, on one checkpoint (built once, bf16 safetensors, the real GLM-4 tokenizer):

1. fp32, bf16, int8, int4: decode tok/s (a 128-token prompt, then 64 greedy tokens), prefill tok/s
   (a 512-token prompt), load seconds and peak RSS. Each variant runs in its own subprocess, so
   peak RSS is that variant's alone. Decode is timed twice per repetition, interleaved: with the
   engine's hand-written step (`glm_runtime.decoder`, `decode_tok_s`) and with every step through
   the transformers model's forward as before it (`decode_tok_s_model_forward`); their ratio is
   `decoder_over_model_forward`.
2. Quality against bf16 (int8, int4): relative RMS logit error, KL, top-1 agreement on fixed prompts.
3. The agent-loop case: 10 steps, the conversation growing ~200 tokens per step, with the engine's
   KV reuse vs. with the cache dropped before each step (prefill tokens and seconds per step).
4. Cold start (`cold_start`): the All Tools prompt (chat_format with the three built-ins' specs) in
   fresh processes: time to first token without the saved prompt cache, in the process that
   writes it, and in a later process that loads it (`glm_runtime.prompt_cache`).

    python3 bench/engine.py                  # the ~0.93B shape of the issue's table
    python3 bench/engine.py --size tiny      # a smoke run (seconds)
    python3 bench/engine.py --json           # every figure as one JSON object
    python3 bench/engine.py --size 9b        # GLM-4-9B's real shape, built layer by layer (~19 GB disk)
    python3 bench/engine.py --variants '' --cold-variant '' --no-llamacpp --interleave 8
                                             # only INT4 vs llama.cpp decode, in turn (a busy machine)

Figures on a shared machine are noisy: compare the variants as ratios within one run.

Extension hook (llama.cpp comparison, a saved prompt cache, ...): a module `engine_extra.py` next to
this file, if present, is imported and its `extend(report: dict, checkpoint: Path, args) -> None`
called after our own figures are in `report`; it adds its own keys (e.g. `report["llama_cpp"]`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GLM4_DIR = ROOT.parent / "shared" / "glm4"
SIZES = {
    # name: hidden, layers, heads, kv heads, ffn (GLM-4's ffn/hidden ratio), vocab
    "tiny": dict(hidden=64, layers=2, heads=4, kv=2, ffn=128, vocab=151552),
    "1b": dict(hidden=2048, layers=6, heads=16, kv=2, ffn=6848, vocab=151552),
    "9b": dict(hidden=4096, layers=40, heads=32, kv=2, ffn=13696, vocab=151552),
}
VARIANTS = {"fp32": ("none", "float32"), "bf16": ("none", "bfloat16"),
            "int8": ("int8", "bfloat16"), "int4": ("int4", "bfloat16")}
QUALITY_PROMPTS = [
    "[gMASK]<sop><|user|>\n你好，请介绍一下你自己。<|assistant|>",
    "[gMASK]<sop><|system|>\nYou are a helpful assistant.<|user|>\nWhat is 17 * 23?<|assistant|>\n",
    '[gMASK]<sop><|user|>\nweather in Beijing<|assistant|>simple_browser\nsearch("weather")<|observation|>\n[1] sunny',
]


# ---- the checkpoint ----

def build_checkpoint(size: str, dest: Path, *, seed: int = 0) -> Path:
    """A GLM-4 (`glm` layout) checkpoint of `size`, bf16, written one layer per shard (bounded memory)."""
    import torch
    from safetensors.torch import save_file

    from glm_runtime.testing import build_random_checkpoint

    s = SIZES[size]
    if size == "tiny":
        return build_random_checkpoint(dest, hidden_size=s["hidden"], num_layers=s["layers"], num_heads=s["heads"],
                                       num_kv_heads=s["kv"], intermediate_size=s["ffn"], seed=seed, dtype="bfloat16")
    # Same layout as glm_runtime.testing, streamed: the 9B shape does not fit in memory in fp32.
    build_random_checkpoint(dest, hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=2, intermediate_size=128,
                            dtype="bfloat16")  # config, tokenizer, generation config; weights replaced below
    (dest / "model.safetensors").unlink()
    cfg = json.loads((dest / "config.json").read_text())
    h, nh, kv, ffn, vocab = s["hidden"], s["heads"], s["kv"], s["ffn"], s["vocab"]
    hd = h // nh
    cfg.update(hidden_size=h, num_hidden_layers=s["layers"], num_attention_heads=nh, num_key_value_heads=kv,
               head_dim=hd, intermediate_size=ffn, vocab_size=vocab)
    (dest / "config.json").write_text(json.dumps(cfg, indent=2))
    g = torch.Generator().manual_seed(seed)

    def lin(o: int, i: int) -> torch.Tensor:
        return (torch.randn(o, i, generator=g) / i**0.5).to(torch.bfloat16)

    def vec(n: int, scale: float = 0.1, base: float = 0.0) -> torch.Tensor:
        return (base + scale * torch.randn(n, generator=g)).to(torch.bfloat16)

    weight_map: dict[str, str] = {}

    def shard(name: str, tensors: dict[str, torch.Tensor]) -> None:
        save_file(tensors, str(dest / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})

    shard("embed.safetensors", {"model.embed_tokens.weight": torch.randn(vocab, h, generator=g).to(torch.bfloat16)})
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        shard(f"layer-{i:03d}.safetensors", {
            p + "input_layernorm.weight": vec(h, base=1.0), p + "post_attention_layernorm.weight": vec(h, base=1.0),
            p + "self_attn.q_proj.weight": lin(nh * hd, h), p + "self_attn.q_proj.bias": vec(nh * hd),
            p + "self_attn.k_proj.weight": lin(kv * hd, h), p + "self_attn.k_proj.bias": vec(kv * hd),
            p + "self_attn.v_proj.weight": lin(kv * hd, h), p + "self_attn.v_proj.bias": vec(kv * hd),
            p + "self_attn.o_proj.weight": lin(h, nh * hd),
            p + "mlp.gate_up_proj.weight": lin(2 * ffn, h), p + "mlp.down_proj.weight": lin(h, ffn),
        })
    shard("head.safetensors", {"model.norm.weight": vec(h, base=1.0), "lm_head.weight": lin(vocab, h)})
    (dest / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return dest


# ---- one variant, in its own process ----

def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def _random_ids(n: int, seed: int) -> list[int]:
    import torch

    # Ordinary text ids (below the special tokens), so nothing in the prompt acts as a role marker.
    return [151331, 151333] + torch.randint(0, 151000, (n - 2,), generator=torch.Generator().manual_seed(seed)).tolist()


def worker(args) -> dict:
    """Load one variant and measure it; returns the figures (printed as JSON by --worker)."""
    import torch

    from glm_runtime.engine import load_engine

    quantize, dtype = VARIANTS[args.worker]
    t0 = time.perf_counter()
    engine = load_engine(args.checkpoint, quantize=quantize, dtype=dtype, device="cpu")
    out: dict = {"variant": args.worker, "load_seconds": round(time.perf_counter() - t0, 2),
                 "threads": torch.get_num_threads()}
    list(engine.generate(_random_ids(16, 0), max_new_tokens=2, stop_ids=[]))  # warm-up
    decoder = engine.decoder
    prefill, decode, forward = [], [], []
    for rep in range(args.reps):
        engine.reset_cache()
        t = time.perf_counter()
        engine.next_token_logits(_random_ids(args.prefill_tokens, 100 + rep))
        prefill.append(args.prefill_tokens / (time.perf_counter() - t))
        decode.append(_decode_tok_s(engine, args, rep))
        if decoder is not None:  # the same steps through the model's forward, interleaved: a before/after ratio
            engine.decoder = None
            forward.append(_decode_tok_s(engine, args, rep))
            engine.decoder = decoder
    out.update(prefill_tok_s=round(_median(prefill), 2), decode_tok_s=round(_median(decode), 2),
               prefill_runs=[round(x, 2) for x in prefill], decode_runs=[round(x, 2) for x in decode],
               decoder=decoder is not None)
    if forward:
        out.update(decode_tok_s_model_forward=round(_median(forward), 2),
                   decode_model_forward_runs=[round(x, 2) for x in forward],
                   decoder_over_model_forward=round(_median(decode) / _median(forward), 2))
    out["quality"] = _quality(engine, args)
    if args.loop:
        out["agent_loop"] = agent_loop(engine, steps=args.loop_steps, growth=args.loop_growth)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def _decode_tok_s(engine, args, rep: int) -> float:
    engine.reset_cache()
    list(engine.generate(_random_ids(args.prompt_tokens, 200 + rep), max_new_tokens=args.new_tokens, stop_ids=[]))
    return engine.last_stats.decode_tok_s


def _quality(engine, args) -> dict | None:
    """Logits on fixed prompts; bf16 saves its own as the reference, int8/int4 compare against it."""
    import torch

    ref_file = Path(args.workdir) / "bf16_logits.pt"
    with torch.inference_mode():
        logits = []
        for text in QUALITY_PROMPTS:
            ids = engine.encode(text)
            engine.reset_cache()
            out = engine.model(input_ids=torch.tensor([ids]))
            logits.append(out.logits[0].float())
        got = torch.cat(logits)
    if args.worker == "bf16":
        torch.save(got, ref_file)
        return None
    if args.worker not in ("int8", "int4") or not ref_file.is_file():
        return None
    ref = torch.load(ref_file)
    kl = torch.nn.functional.kl_div(got.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="batchmean")
    return {
        "positions": ref.shape[0],
        "rel_rms_logit_error": round(((got - ref).pow(2).mean().sqrt() / ref.std()).item(), 4),
        "max_abs_logit_error": round((got - ref).abs().max().item(), 4),
        "kl_vs_bf16": round(kl.item(), 5),
        "top1_agreement": round((got.argmax(-1) == ref.argmax(-1)).float().mean().item(), 4),
        "top1_in_bf16_top5": round((ref.topk(5, -1).indices == got.argmax(-1, keepdim=True)).any(-1)
                                   .float().mean().item(), 4),
    }


def agent_loop(engine, *, steps: int, growth: int, answer_tokens: int = 24) -> dict:
    """A conversation growing ~`growth` tokens per step; per-step prefill with and without reuse."""
    result = {}
    for mode in ("reuse", "no_reuse"):
        engine.reset_cache()
        convo = _random_ids(400, 7)  # a system prompt with tools, roughly
        rows = []
        for step in range(steps):
            if mode == "no_reuse":
                engine.reset_cache()
            out = list(engine.generate(convo, max_new_tokens=answer_tokens, stop_ids=[]))
            s = engine.last_stats
            rows.append({"prompt_tokens": s.prompt_tokens, "prefill_tokens": s.prefill_tokens,
                         "prefill_seconds": round(s.prefill_seconds, 3)})
            observation = _random_ids(growth - answer_tokens + 2, 1000 + step)[2:]
            convo = convo + out + [151338] + observation + [151337]
        result[mode] = rows
    total = {m: sum(r["prefill_seconds"] for r in rows) for m, rows in result.items()}
    result["prefill_seconds_total"] = {m: round(v, 3) for m, v in total.items()}
    result["no_reuse_over_reuse"] = round(total["no_reuse"] / total["reuse"], 2) if total["reuse"] else None
    return result


def all_tools_prompt(tokenizer) -> list[int]:
    """The All Tools prompt of a first turn: system prompt with python, simple_browser, cogview."""
    from glm_runtime.chat_format import render_ids
    from glm_runtime.messages import Message
    from tools.registry import ToolRegistry

    with tempfile.TemporaryDirectory() as d:
        reg = ToolRegistry(workdir=d, artifacts_dir=d)
        for name in ("python", "simple_browser", "cogview"):
            reg.add_builtin(name)  # specs only: nothing heavy starts before a call
        try:
            specs = reg.specs()
        finally:
            reg.close()
    return render_ids([Message("user", "What is the weather in Beijing today?")], specs, tokenizer)


def cold_worker(args) -> dict:
    """A fresh process: load, then time the first token of the All Tools prompt (no warm-up: cold)."""
    from glm_runtime.engine import load_engine

    quantize, dtype = VARIANTS[args.worker]
    t0 = time.perf_counter()
    engine = load_engine(args.checkpoint, quantize=quantize, dtype=dtype, device="cpu",
                         prompt_cache_dir=None if args.cold == "none" else args.cold)
    load = time.perf_counter() - t0
    ids = all_tools_prompt(engine.tokenizer)
    t = time.perf_counter()
    next(iter(engine.generate(ids, max_new_tokens=1, stop_ids=[])))
    s = engine.last_stats
    return {"load_seconds": round(load, 2), "ttft_seconds": round(time.perf_counter() - t, 3),
            "prompt_tokens": s.prompt_tokens, "prefill_tokens": s.prefill_tokens,
            "disk_reused_tokens": s.disk_reused_tokens, "disk_saved_tokens": s.disk_saved_tokens}


def cold_start(args, workdir: Path) -> dict:
    """Time to first token in fresh processes: no prompt cache, writing it, then loading it."""
    cache = workdir / "prompt-cache"
    out = {"variant": args.cold_variant}
    for name, where in (("no_cache", "none"), ("writes_cache", str(cache)), ("loads_cache", str(cache))):
        cmd = [sys.executable, __file__, "--worker", args.cold_variant, "--checkpoint", str(args.checkpoint),
               "--cold", where]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return {**out, "error": proc.stderr.strip()[-2000:]}
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["loads_cache"]["ttft_seconds"] > 0:
        out["ttft_no_cache_over_loads_cache"] = round(
            out["no_cache"]["ttft_seconds"] / out["loads_cache"]["ttft_seconds"], 2)
    return out


# ---- decode, interleaved with llama.cpp (a loaded machine) ----

DUEL_KINDS = ("int4", "int4_model_forward", "Q4_K_M", "Q4_0")


def duel_worker(args) -> None:
    """A long-lived process timing one kind's decode each time a line arrives on stdin (printed as JSON)."""
    import torch

    kind = args.duel_worker
    if kind.startswith("int4"):
        from glm_runtime.engine import load_engine

        engine = load_engine(args.checkpoint, quantize="int4", dtype="bfloat16", device="cpu")
        if kind == "int4_model_forward":
            engine.decoder = None

        def once() -> float:
            engine.reset_cache()
            list(engine.generate(_random_ids(args.prompt_tokens, 200), max_new_tokens=args.new_tokens, stop_ids=[]))
            return engine.last_stats.decode_tok_s
    else:
        import random

        import llama_cpp
        from llamacpp import _greedy_next, _rope_theta

        threads = torch.get_num_threads()
        llm = llama_cpp.Llama(model_path=str(Path(args.workdir) / f"{kind}.gguf"),
                              n_ctx=args.prompt_tokens + args.new_tokens + 16, n_batch=args.prompt_tokens,
                              n_ubatch=args.prompt_tokens, n_threads=threads, n_threads_batch=threads,
                              rope_freq_base=_rope_theta(Path(args.checkpoint)) or 0.0, verbose=False)

        def once() -> float:
            rng = random.Random(0)
            llm.reset()
            llm.eval([rng.randrange(151000) for _ in range(args.prompt_tokens)])
            t = time.perf_counter()
            for _ in range(args.new_tokens):
                llm.eval([_greedy_next(llm)])
            return args.new_tokens / (time.perf_counter() - t)
    once()  # warm-up
    print("ready", flush=True)
    for _ in sys.stdin:
        print(json.dumps(once()), flush=True)


def interleaved(args, workdir: Path) -> dict:
    """Decode tok/s of our INT4 (hand-written step, and the model's forward per step) and llama.cpp
    Q4_K_M / Q4_0, each in its own long-lived process, timed in turn round by round: on a busy
    machine every round's ratio compares runs seconds apart. Medians and per-round ratios."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from llamacpp import Unavailable, convert, quantize

    try:
        bf16 = convert(args.checkpoint, workdir / "model.bf16.gguf")
        for q in ("Q4_K_M", "Q4_0"):
            quantize(bf16, workdir / f"{q}.gguf", q)
    except Unavailable as exc:
        return {"skipped": str(exc)}
    bf16.unlink()
    procs = {}
    try:
        for kind in DUEL_KINDS:
            cmd = [sys.executable, __file__, "--duel-worker", kind, "--checkpoint", str(args.checkpoint),
                   "--workdir", str(workdir), "--prompt-tokens", str(args.prompt_tokens),
                   "--new-tokens", str(args.new_tokens)]
            procs[kind] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=subprocess.DEVNULL, text=True)
            if procs[kind].stdout.readline().strip() != "ready":
                return {"error": f"the {kind} worker did not start"}
        runs: dict[str, list[float]] = {k: [] for k in DUEL_KINDS}
        for _ in range(args.interleave):
            for kind, proc in procs.items():
                proc.stdin.write("go\n")
                proc.stdin.flush()
                runs[kind].append(round(json.loads(proc.stdout.readline()), 2))
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
    out: dict = {"rounds": args.interleave, "decode_runs": runs,
                 "decode_tok_s": {k: round(_median(v), 2) for k, v in runs.items()}}
    for other in ("Q4_K_M", "Q4_0", "int4_model_forward"):
        per_round = [round(a / b, 2) for a, b in zip(runs["int4"], runs[other]) if b]
        out[f"int4_over_{other.lower()}"] = {"median": round(_median(per_round), 2), "per_round": per_round}
    return out


# ---- the driver ----

def run_variant(variant: str, args, workdir: Path, *, loop: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--checkpoint", str(args.checkpoint),
           "--workdir", str(workdir), "--reps", str(args.reps), "--prompt-tokens", str(args.prompt_tokens),
           "--new-tokens", str(args.new_tokens), "--prefill-tokens", str(args.prefill_tokens),
           "--loop-steps", str(args.loop_steps), "--loop-growth", str(args.loop_growth)]
    if loop:
        cmd.append("--loop")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"variant": variant, "error": proc.stderr.strip()[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="1b")
    p.add_argument("--checkpoint", type=Path, help="use this checkpoint instead of building one")
    p.add_argument("--variants", default="fp32,bf16,int8,int4")
    p.add_argument("--loop-variant", default="int4", help="the variant that runs the agent-loop case")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--loop-steps", type=int, default=10)
    p.add_argument("--loop-growth", type=int, default=200)
    p.add_argument("--no-llamacpp", action="store_true", help="skip the llama.cpp baseline (bench/llamacpp.py)")
    p.add_argument("--keep", action="store_true", help="keep the built checkpoint (printed)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--loop", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cold-variant", default="int4", help="the variant of the cold-start case ('' skips it)")
    p.add_argument("--cold", help=argparse.SUPPRESS)  # worker: 'none' or the prompt-cache directory
    p.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                   help="also time INT4 decode against llama.cpp Q4_K_M/Q4_0 in turn, ROUNDS rounds (busy machines)")
    p.add_argument("--duel-worker", choices=DUEL_KINDS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.cold:
        print(json.dumps(cold_worker(args)))
        return {}
    if args.worker:
        print(json.dumps(worker(args)))
        return {}
    if args.duel_worker:
        duel_worker(args)
        return {}

    workdir = Path(tempfile.mkdtemp(prefix="glm-bench-"))
    try:
        report: dict = {"size": args.size, "shape": SIZES[args.size], "machine": _machine()}
        if args.checkpoint is None:
            t = time.perf_counter()
            args.checkpoint = build_checkpoint(args.size, workdir / f"glm4-{args.size}")
            report["build_seconds"] = round(time.perf_counter() - t, 1)
        from glm_runtime.checkpoint import open_checkpoint, param_count

        report["parameters"] = param_count(open_checkpoint(args.checkpoint).config)
        variants = [v for v in args.variants.split(",") if v]
        if "bf16" in variants:  # the quality reference must exist before int8/int4 run
            variants = ["bf16"] + [v for v in variants if v != "bf16"]
        report["variants"] = {v: run_variant(v, args, workdir, loop=(v == args.loop_variant)) for v in variants}
        report["ratios"] = _ratios(report["variants"])
        if args.cold_variant:
            report["cold_start"] = cold_start(args, workdir)
        if not args.no_llamacpp:
            _llama_cpp(report, args)
        if args.interleave > 0:
            report["interleaved"] = interleaved(args, workdir)
            r = report["interleaved"].get("int4_over_q4_k_m")
            if r:
                report["int4_over_llamacpp_q4_k_m_decode_interleaved"] = r["median"]
        _run_extensions(report, args)
        if args.keep:
            kept = Path(tempfile.gettempdir()) / f"glm4-bench-{args.size}"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.move(str(args.checkpoint), kept)
            report["checkpoint"] = str(kept)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=2) if args.json else _table(report))
    return report


def _ratios(variants: dict) -> dict:
    base = variants.get("bf16", {})
    out = {}
    for name, v in variants.items():
        if name == "bf16" or "error" in v or "error" in base or not base:
            continue
        out[f"{name}_over_bf16"] = {k: round(v[k] / base[k], 2) for k in ("decode_tok_s", "prefill_tok_s") if base.get(k)}
    return out


def _run_extensions(report: dict, args) -> None:
    try:
        extra = importlib.import_module("engine_extra")
    except ModuleNotFoundError:
        return
    extra.extend(report, Path(args.checkpoint), args)


def _llama_cpp(report: dict, args) -> None:
    """llama.cpp on the same checkpoint (bench/llamacpp.py) and our/llama.cpp ratios; a skip note without it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from llamacpp import QUANTS, run

    lc = run(args.checkpoint, reps=args.reps, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
             prefill_tokens=args.prefill_tokens)
    report["llama_cpp"] = lc
    for ours in ("int4", "int8"):
        v = report["variants"].get(ours, {})
        for q in QUANTS:
            if q in lc and v.get("decode_tok_s"):
                report["ratios"][f"{ours}_over_llamacpp_{q.lower()}"] = {
                    k: round(v[k] / lc[q][k], 2) for k in ("decode_tok_s", "prefill_tok_s") if lc[q].get(k)}
    r = report["ratios"].get("int4_over_llamacpp_q4_k_m", {})
    if "decode_tok_s" in r:
        report["int4_over_llamacpp_q4_k_m_decode"] = r["decode_tok_s"]


def _machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "loadavg": os.getloadavg()}


def _table(report: dict) -> str:
    lines = [f"GLM-4 shape '{report['size']}' ({report['parameters'] / 1e9:.2f}B parameters), "
             f"machine {report['machine']}", "",
             "| variant | decode tok/s | prefill tok/s | peak RSS MiB | load s | rel. RMS logit err vs bf16 | top-1 agree |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, v in report["variants"].items():
        if "error" in v:
            lines.append(f"| {name} | error: {v['error'][-200:]} |")
            continue
        q = v.get("quality") or {}
        lines.append(f"| {name} | {v['decode_tok_s']} | {v['prefill_tok_s']} | {v['peak_rss_mib']} | {v['load_seconds']} "
                     f"| {q.get('rel_rms_logit_error', '-')} | {q.get('top1_agreement', '-')} |")
    for name, r in report["ratios"].items():
        lines.append(f"{name}: {r}")
    for name, v in report["variants"].items():
        if v.get("decoder_over_model_forward"):
            lines.append(f"{name} decode, hand-written step / model forward per step: {v['decoder_over_model_forward']} "
                         f"({v['decode_tok_s']} / {v['decode_tok_s_model_forward']} tok/s)")
    for name, v in report["variants"].items():
        loop = v.get("agent_loop")
        if loop:
            lines += ["", f"agent loop ({name}, {len(loop['reuse'])} steps): prefill tokens / seconds per step"]
            for mode in ("reuse", "no_reuse"):
                rows = loop[mode]
                lines.append(f"  {mode:>8}: " + "  ".join(f"{r['prefill_tokens']}/{r['prefill_seconds']}" for r in rows))
            lines.append(f"  total prefill seconds {loop['prefill_seconds_total']}, no_reuse/reuse = {loop['no_reuse_over_reuse']}")
    for key in report:
        if key not in ("size", "shape", "machine", "parameters", "variants", "ratios", "build_seconds", "checkpoint"):
            lines.append(f"{key}: {json.dumps(report[key])}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
