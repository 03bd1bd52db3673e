"""Resident memory of the engine on an INT4 checkpoint of GLM-4's shape, measured in a fresh process.

1. Build (or reuse) a quantized checkpoint of seeded random weights with
   `glm_runtime.testing.build_random_quantized_checkpoint`: the writer and quantizer of
   `glm-agent model quantize`, fed one float tensor at a time (the 9B shape never exists in float).
2. In a fresh subprocess, `load_engine(dir)` as a user would, prefill a short prompt and generate a
   few greedy tokens, then read every page of every weight (the loaded weights are memory-mapped
   from the safetensors files, resident once read: a long session ends up reading all of them),
   reading `/proc/self/status` at each stage: VmRSS (resident now, split into anonymous and
   file-backed pages) and VmHWM (the peak).
3. Report the checkpoint's bytes on disk, the model's own tensor bytes, resident memory after load,
   after generating and with every weight read (the largest is `resident_gib`), the peak, load
   seconds, rough prefill/decode tok/s, and whether resident memory stays within the target
   (GLM-4-9B at INT4: 6.5 GiB).

    python3 bench/memory.py --shape 9b            # GLM-4-9B: a 5.5 GiB checkpoint, ~25 min to build on 2 busy cores
    python3 bench/memory.py --shape 1b --json     # the 0.93B shape of bench/engine.py (2-3 min)
    python3 bench/memory.py --shape 9b --keep     # keep the checkpoint (its path is printed) for reuse
    python3 bench/memory.py --shape 9b --dtype float32   # what a CPU without fast bf16 runs

The checkpoint goes under `--dir` (default: ~/.cache/glm-agent/bench/memory/SHAPE-int4-gG-seedS),
is reused when complete, and is deleted afterwards unless `--keep` or it was there before this run.
Memory figures do not depend on machine load; the tok/s figures here do (few tokens, rough).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = 2**30
TARGET_GIB = {"9b": 6.5}  # issue 9: "GLM-4-9B at INT4: resident memory <= 6.5 GiB"
SHAPES = {
    # bench/engine.py's sizes: hidden, layers, heads, kv heads, ffn, vocab
    "tiny": dict(hidden=64, layers=2, heads=4, kv=2, ffn=128, vocab=151552),
    "1b": dict(hidden=2048, layers=6, heads=16, kv=2, ffn=6848, vocab=151552),
    "9b": dict(hidden=4096, layers=40, heads=32, kv=2, ffn=13696, vocab=151552),
}


# ---- reading our own memory ----

def proc_status() -> dict[str, int]:
    """Memory lines of /proc/self/status in bytes: VmRSS, VmHWM, RssAnon, RssFile, RssShmem."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0]) * 1024  # reported in kB
    return out


def _gib(n: int | float) -> float:
    return round(n / GIB, 3)


def _snapshot() -> dict[str, float]:
    s = proc_status()
    return {"rss_gib": _gib(s["VmRSS"]), "anon_gib": _gib(s.get("RssAnon", 0)),
            "file_gib": _gib(s.get("RssFile", 0)), "peak_gib": _gib(s["VmHWM"])}


# ---- the worker: a fresh process that loads and generates ----

def _text_ids(n: int, seed: int) -> list[int]:
    import torch

    # [gMASK]<sop> then ordinary text ids (below the special tokens): nothing acts as a role marker.
    g = torch.Generator().manual_seed(seed)
    return [151331, 151333] + torch.randint(0, 151000, (n - 2,), generator=g).tolist()


def worker(checkpoint: Path, *, dtype: str, prompt_tokens: int, new_tokens: int) -> dict:
    """Load `checkpoint` with `load_engine`, generate, and report memory at each stage."""
    import torch

    from glm_runtime.engine import load_engine

    stages = {"imported": _snapshot()}  # torch, transformers' import cost comes with any engine
    t0 = time.perf_counter()
    engine = load_engine(checkpoint, dtype=dtype)
    load_seconds = time.perf_counter() - t0
    stages["loaded"] = _snapshot()
    tensors = [*engine.model.parameters(), *engine.model.buffers()]
    model_bytes = sum(t.numel() * t.element_size() for t in tensors)
    out = list(engine.generate(_text_ids(prompt_tokens, 0), max_new_tokens=new_tokens, stop_ids=[]))
    stats = engine.last_stats
    stages["generated"] = _snapshot()
    # Weights are memory-mapped from the safetensors files: a page is resident once read. Decode reads
    # every linear weight, but the embedding only at the rows of tokens seen so far; a long session
    # reads more of it. Touching every page gives the resident size such a session converges to.
    _touch(tensors)
    stages["all_weights_read"] = _snapshot()
    return {
        "stages": stages, "model_tensor_gib": _gib(model_bytes), "load_seconds": round(load_seconds, 1),
        "dtype": str(engine.dtype).removeprefix("torch."), "quantization": engine.quantization,
        "prompt_tokens": stats.prompt_tokens, "new_tokens": len(out),
        "prefill_tok_s": round(stats.prefill_tok_s, 2), "decode_tok_s": round(stats.decode_tok_s, 2),
        "threads": torch.get_num_threads(),
    }


def _touch(tensors) -> None:
    import torch

    for t in tensors:
        if t.numel():
            t.detach().reshape(-1).view(torch.uint8)[::4096].sum()  # one byte per page


def measure(checkpoint: Path, args) -> dict:
    """Run `worker` in a fresh interpreter (nothing of the build process counts) and return its figures."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(checkpoint), "--dtype", args.dtype,
           "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"the measuring process failed (exit {proc.returncode}); its stderr is above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- the checkpoint ----

def default_dir(shape: str, group_size: int, seed: int) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "glm-agent" / "bench" / "memory" / f"{shape}-int4-g{group_size}-seed{seed}"


def _complete(path: Path) -> bool:
    return (path / "config.json").is_file()  # save_quantized writes it last


def build(dest: Path, shape: str, *, group_size: int, seed: int) -> float:
    """Write the checkpoint into `dest` via a temporary sibling renamed when complete; return seconds."""
    from glm_runtime.testing import build_random_quantized_checkpoint

    s = SHAPES[shape]
    dest.parent.mkdir(parents=True, exist_ok=True)
    need = _estimate_bytes(s, group_size)
    free = shutil.disk_usage(dest.parent).free
    if free < need * 1.1:
        raise SystemExit(f"{dest.parent}: {free / GIB:.1f} GiB free, the {shape} checkpoint needs ~{need / GIB:.1f} GiB")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    t0 = time.perf_counter()
    try:
        build_random_quantized_checkpoint(
            tmp, bits=4, group_size=group_size, hidden_size=s["hidden"], num_layers=s["layers"],
            num_heads=s["heads"], num_kv_heads=s["kv"], intermediate_size=s["ffn"], vocab_size=s["vocab"],
            seed=seed, progress=_progress(f"building the {shape} INT4 checkpoint", t0))
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return time.perf_counter() - t0


def _estimate_bytes(s: dict, group_size: int) -> int:
    h, ffn, v, n = s["hidden"], s["ffn"], s["vocab"], s["layers"]
    hd = h // s["heads"]
    linear = n * (h * (s["heads"] + 2 * s["kv"]) * hd + h * h + 3 * h * ffn) + v * h
    return int(linear * (4 + 32 / group_size) / 8 + v * h * 2)  # int4 + f16 scale/min per group; bf16 embedding


def _progress(label: str, t0: float):
    last = [-1]

    def report(done: int, total: int) -> None:
        pct = 100 * done // max(total, 1)
        if pct // 5 != last[0] // 5 or done >= total:
            last[0] = pct
            print(f"{label}: {pct}% ({done}/{total} tensors, {time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)

    return report


# ---- the report ----

def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="9b")
    p.add_argument("--dir", type=Path, help="where the checkpoint is built or reused (default: under ~/.cache)")
    p.add_argument("--keep", action="store_true", help="keep a checkpoint built by this run")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto", help="load_engine's dtype (auto: what a user gets)")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print every figure as one JSON object")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, dtype=args.dtype, prompt_tokens=args.prompt_tokens,
                                new_tokens=args.new_tokens)))
        return {}
    ckpt = args.dir or default_dir(args.shape, args.group_size, args.seed)
    existed = _complete(ckpt)
    if ckpt.exists() and not existed:
        raise SystemExit(f"{ckpt} exists but holds no complete checkpoint; remove it or pass another --dir")
    report: dict = {"shape": args.shape, **SHAPES[args.shape], "checkpoint": str(ckpt), "reused": existed}
    try:
        if not existed:
            report["build_seconds"] = round(build(ckpt, args.shape, group_size=args.group_size, seed=args.seed), 1)
            report["build_peak_gib"] = _gib(proc_status()["VmHWM"])  # this process: the writer's peak
        files = sorted(ckpt.glob("*.safetensors"))
        report["checkpoint_gib"] = _gib(sum(f.stat().st_size for f in files))
        report["checkpoint_files"] = len(files)
        print(f"measuring in a fresh process: load_engine({ckpt})", file=sys.stderr, flush=True)
        report.update(measure(ckpt, args))
    finally:
        if not existed and not args.keep:
            shutil.rmtree(ckpt, ignore_errors=True)
            report["deleted"] = True
    stages = report["stages"]
    report["resident_gib"] = max(s["rss_gib"] for s in stages.values())
    report["peak_gib"] = max(s["peak_gib"] for s in stages.values())
    if args.shape in TARGET_GIB:
        report["target_gib"] = TARGET_GIB[args.shape]
        report["resident_within_target"] = report["resident_gib"] <= TARGET_GIB[args.shape]
        report["peak_within_target"] = report["peak_gib"] <= TARGET_GIB[args.shape]
    report["load_avg"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2) if args.json else _table(report))
    return report


def _table(r: dict) -> str:
    lines = [f"shape {r['shape']}: hidden {r['hidden']}, {r['layers']} layers, ffn {r['ffn']}, vocab {r['vocab']}; "
             f"{r['quantization']['scheme']} g{r['quantization']['group_size']}, activations {r['dtype']}",
             f"checkpoint: {r['checkpoint_gib']} GiB in {r['checkpoint_files']} files"
             + (f" (built in {r['build_seconds']} s, peak {r['build_peak_gib']} GiB)" if "build_seconds" in r
                else " (reused)"),
             f"model tensors in memory: {r['model_tensor_gib']} GiB", "",
             f"{'stage':<16} {'rss GiB':>8} {'anon':>7} {'file':>7} {'peak':>7}"]
    for name, s in r["stages"].items():
        lines.append(f"{name:<16} {s['rss_gib']:>8.3f} {s['anon_gib']:>7.3f} {s['file_gib']:>7.3f} {s['peak_gib']:>7.3f}")
    lines += ["", f"load {r['load_seconds']} s; {r['prompt_tokens']}-token prompt at {r['prefill_tok_s']} tok/s, "
                  f"{r['new_tokens']} tokens at {r['decode_tok_s']} tok/s ({r['threads']} threads, load avg "
                  f"{r['load_avg']:.1f})"]
    if "target_gib" in r:
        verdict = "meets" if r["resident_within_target"] else "MISSES"
        lines.append(f"resident {r['resident_gib']} GiB, peak {r['peak_gib']} GiB: {verdict} the "
                     f"{r['target_gib']} GiB target (peak {'within' if r['peak_within_target'] else 'above'} it)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
