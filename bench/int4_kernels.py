"""INT4 kernel benchmark: our kernel vs torch's packed int4 / int8 kernels vs a bf16 matmul.

For each linear layer of GLM-4 at the ~1B shape of the engine benchmark and at the real 9B shape,
times `y = x @ W.T` for n activation rows (1 = decode, 128 / 512 = prefill) with:

- `ours`: glm_runtime.kernels (INT4, group-wise float16 scale+min; the compiled kernel for small n,
  dequantize + bf16 matmul from DENSE_MIN_ROWS rows);
- `ours_kernel`: the compiled kernel forced at every n (shows where the dense path takes over);
- `torch_int4`: `torch.ops.aten._weight_int4pack_mm_for_cpu` (same group size, bf16 scales);
- `torch_int8`: `torch.ops.aten._weight_int8pack_mm` (per-row scales);
- `bf16`: `torch.nn.functional.linear` on a bf16 weight.

Prints the time, GB/s of weight bytes read (decode) or GFLOP/s (prefill), and ratios against
`ours`; then, per model shape, the decode tok/s the linear layers alone would allow (their
per-token times summed over all layers and the output projection).

    python3 bench/int4_kernels.py                  # 1b and 9b shapes, n = 1, 128, 512
    python3 bench/int4_kernels.py --models 1b --rows 1 --json
    python3 bench/int4_kernels.py --threads 1        # per-core figures, steadier when the machine is busy

Timings on a shared machine are noisy: variants are interleaved round by round and the best of
each is kept; compare them as ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# GLM-4 linear layers: name -> (out_features, in_features), and how many of each per model.
MODELS = {
    "1b": dict(hidden=2048, kv_dim=256, ffn=6848, layers=6, vocab=151552),
    "9b": dict(hidden=4096, kv_dim=256, ffn=13696, layers=40, vocab=151552),
}


def layer_shapes(m: dict) -> dict[str, tuple[int, int, int]]:
    """name -> (out_features, in_features, count per token)."""
    h, ffn = m["hidden"], m["ffn"]
    return {
        "qkv": (h + 2 * m["kv_dim"], h, m["layers"]),
        "o": (h, h, m["layers"]),
        "gate_up": (2 * ffn, h, m["layers"]),
        "down": (h, ffn, m["layers"]),
        "lm_head": (m["vocab"], h, 1),
    }


def _time(fns: dict, rounds: int) -> dict[str, dict]:
    """Interleave the variants round by round; keep the best and the median of each."""
    import torch

    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for f in fns.values():
            f()  # warm-up: first-touch pages, caches, lazy conversions
        for _ in range(rounds):
            for k, f in fns.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    return {k: {"best_ms": min(v) * 1e3, "median_ms": statistics.median(v) * 1e3} for k, v in times.items()}


def bench_shape(n_out: int, k: int, rows: list[int], *, group_size: int, rounds: int, seed: int = 0) -> dict:
    import torch

    from glm_runtime.kernels import extension
    from glm_runtime.kernels.int4 import _torch_int4pack, int4_linear, quantize_int4

    ops = extension.load()
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, k, generator=g, dtype=torch.float32) / k**0.5
    packed = quantize_int4(w, group_size)
    codes, sz = _torch_int4pack(packed)
    w_bf16 = w.to(torch.bfloat16)
    scale8 = w.abs().amax(1) / 127
    w_int8 = (w / scale8[:, None]).round().clamp(-127, 127).to(torch.int8)
    scale8 = scale8.to(torch.bfloat16)
    del w
    bytes_ = {
        "ours": packed.qweight.numel() + packed.scales.numel() * 2,
        "ours_kernel": packed.qweight.numel() + packed.scales.numel() * 2,
        "torch_int4": codes.numel() * codes.element_size() + sz.numel() * 2,
        "torch_int8": w_int8.numel() + scale8.numel() * 2,
        "bf16": w_bf16.numel() * 2,
    }
    kp = packed.qweight.shape[1] // 2
    out: dict = {"shape": [n_out, k], "weight_mib": {v: round(b / 2**20, 1) for v, b in bytes_.items()}, "rows": {}}
    for n in rows:
        x = torch.randn(n, k, generator=g).to(torch.bfloat16)
        xp = torch.nn.functional.pad(x, (0, kp - k))
        fns = {
            "ours": lambda: int4_linear(x, packed),
            "torch_int4": lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(xp, codes, group_size, sz),
            "torch_int8": lambda: torch.ops.aten._weight_int8pack_mm(x, w_int8, scale8),
            "bf16": lambda: torch.nn.functional.linear(x, w_bf16),
        }
        if ops is not None and n > 1:
            fns["ours_kernel"] = lambda: ops.int4_mm(x, packed.qweight, packed.scales, group_size, n_out, None)
        res = _time(fns, rounds)
        for v, r in res.items():
            s = r["best_ms"] / 1e3
            r["gb_s"] = round(bytes_[v] / s / 1e9, 1)
            r["gflop_s"] = round(2 * n * n_out * k / s / 1e9, 1)
            r["best_ms"], r["median_ms"] = round(r["best_ms"], 3), round(r["median_ms"], 3)
        base = res["ours"]["best_ms"]
        out["rows"][str(n)] = {"times": res, "ours_speedup": {v: round(r["best_ms"] / base, 2)
                                                              for v, r in res.items() if v != "ours"}}
    return out


def _model_decode(shapes: dict, results: dict) -> dict:
    """tok/s that the linear layers alone allow at decode, per variant (sum of per-token best times)."""
    total: dict[str, float] = {}
    for name, (_, _, count) in shapes.items():
        r = results.get(name, {}).get("rows", {}).get("1")
        if r is None:
            return {}
        for v, t in r["times"].items():
            total[v] = total.get(v, 0.0) + count * t["best_ms"]
    return {v: round(1e3 / ms, 1) for v, ms in total.items()}


def decode_sweep(shapes: dict, *, group_size: int, rounds: int, seed: int = 0) -> dict:
    """One decode token's linear layers over distinct weights (the whole model, far beyond L3):
    tok/s for ours and torch_int4, the figure the per-layer tables flatter when a weight stays cached."""
    import torch

    from glm_runtime.kernels.int4 import _torch_int4pack, int4_linear, quantize_int4

    g = torch.Generator().manual_seed(seed)
    ours, theirs, xs = [], [], []
    for n_out, k, count in shapes.values():
        for _ in range(count):
            p = quantize_int4(torch.randn(n_out, k, generator=g) / k**0.5, group_size)
            ours.append(p)
            theirs.append(_torch_int4pack(p))
            xs.append((torch.randn(1, k, generator=g).to(torch.bfloat16), p.qweight.shape[1] // 2 - k))
    pads = [torch.nn.functional.pad(x, (0, pad)) for x, pad in xs]

    def run_ours():
        for p, (x, _) in zip(ours, xs):
            int4_linear(x, p)

    def run_torch():
        for (codes, sz), x in zip(theirs, pads):
            torch.ops.aten._weight_int4pack_mm_for_cpu(x, codes, group_size, sz)

    res = _time({"ours": run_ours, "torch_int4": run_torch}, rounds)
    weight_gb = sum(p.qweight.numel() + p.scales.numel() * 2 for p in ours) / 1e9
    out = {v: {"tok_s": round(1e3 / r["best_ms"], 1), "median_tok_s": round(1e3 / r["median_ms"], 1),
               "gb_s": round(weight_gb / (r["best_ms"] / 1e3), 1)} for v, r in res.items()}
    out["ours_over_torch_int4"] = round(out["ours"]["tok_s"] / out["torch_int4"]["tok_s"], 2)
    out["weight_gb"] = round(weight_gb, 3)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="1b,9b")
    p.add_argument("--layers", default="qkv,o,gate_up,down,lm_head")
    p.add_argument("--rows", default="1,128,512", help="activation rows n; the output projection runs at n=1 only "
                   "(prefill needs logits for the last position alone)")
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's); 1 is steadier on a loaded machine")
    p.add_argument("--sweep", action="store_true", help="also time one decode token through all layers' own "
                   "weights (memory: the whole model at INT4, twice)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import torch

    from glm_runtime.kernels import extension

    if args.threads:
        torch.set_num_threads(args.threads)
    ops = extension.load()
    report: dict = {"machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                                "loadavg": os.getloadavg()},
                    "kernel": "avx512_bf16" if ops is not None and int(ops.simd()) == 512 else
                              ("generic" if ops is not None else f"unavailable: {extension.unavailable_reason()}"),
                    "group_size": args.group_size, "models": {}}
    rows = [int(r) for r in args.rows.split(",")]
    for model in args.models.split(","):
        shapes = layer_shapes(MODELS[model])
        results = {}
        for name in args.layers.split(","):
            n_out, k, _ = shapes[name]
            results[name] = bench_shape(n_out, k, [1] if name == "lm_head" else rows,
                                        group_size=args.group_size, rounds=args.rounds)
            if not args.json:
                _print_shape(model, name, results[name])
        report["models"][model] = {"layers": results, "decode_tok_s_linear_only": _model_decode(shapes, results)}
        if args.sweep and 1 in rows:
            report["models"][model]["decode_sweep"] = decode_sweep(shapes, group_size=args.group_size,
                                                                   rounds=args.rounds)
            if not args.json:
                print(f"{model}: one token through every layer's own weights: {report['models'][model]['decode_sweep']}")
        if not args.json:
            print(f"\n{model}: decode tok/s from the linear layers alone: "
                  f"{report['models'][model]['decode_tok_s_linear_only']}\n")
    report["machine"]["loadavg_end"] = os.getloadavg()
    if args.json:
        print(json.dumps(report, indent=2))
    return report


def _print_shape(model: str, name: str, res: dict) -> None:
    n_out, k = res["shape"]
    print(f"\n{model} {name} ({n_out} x {k}), weight MiB {res['weight_mib']}")
    print("| n | variant | best ms | median ms | GB/s | GFLOP/s | time / ours |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n, r in res["rows"].items():
        for v, t in r["times"].items():
            ratio = r["ours_speedup"].get(v, 1.0)
            print(f"| {n} | {v} | {t['best_ms']} | {t['median_ms']} | {t['gb_s']} | {t['gflop_s']} | {ratio} |")


if __name__ == "__main__":
    main()
