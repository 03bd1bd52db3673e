"""The streamed random quantized checkpoint (what bench/memory.py measures GLM-4-9B with) and the bench itself.

`build_random_quantized_checkpoint` feeds seeded float tensors straight into `save_quantized`; it
must write exactly what `glm-agent model quantize` writes for the same weights saved as a float
checkpoint, or the 9B memory figure would be measured on something a user never loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from glm_runtime.checkpoint import open_checkpoint, save_quantized  # noqa: E402
from glm_runtime.engine import load_engine  # noqa: E402
from glm_runtime.quant import QuantConfig  # noqa: E402
from glm_runtime.testing import build_random_checkpoint, build_random_quantized_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.engine
SHAPE = dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=384)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _metadata(path: Path) -> list[dict]:
    from safetensors import safe_open

    metas = []
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            m = dict(h.metadata())
        q = json.loads(m.pop("glm_agent.quantization"))
        metas.append({**m, "quant": {k: v for k, v in q.items() if k != "source"}})
    return metas


def _config(path: Path) -> dict:
    d = json.loads((path / "config.json").read_text())
    d["quantization_config"].pop("source")
    return d


@pytest.mark.parametrize(("bits", "fmt", "group_size"), [(4, "glm", 128), (4, "glm4", 64), (8, "glm", 128)])
def test_streamed_checkpoint_equals_quantizing_the_float_one(tmp_path, glm4_dir, bits, fmt, group_size):
    kw = dict(format=fmt, tokenizer_dir=glm4_dir, seed=5, **SHAPE)
    float_dir = build_random_checkpoint(tmp_path / "float", dtype="bfloat16", **kw)
    ordinary = save_quantized(open_checkpoint(float_dir), tmp_path / "ordinary",
                              QuantConfig(bits=bits, group_size=group_size))
    seen = []
    streamed = build_random_quantized_checkpoint(tmp_path / "streamed", bits=bits, group_size=group_size,
                                                 progress=lambda done, total: seen.append((done, total)), **kw)

    a, b = _tensors(ordinary), _tensors(streamed)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    assert _metadata(ordinary) == _metadata(streamed)
    assert _config(ordinary) == _config(streamed)
    assert json.loads((streamed / "config.json").read_text())["quantization_config"]["source"].endswith("seed 5")
    assert {f.name for f in ordinary.iterdir()} == {f.name for f in streamed.iterdir()}
    assert seen[-1][0] == seen[-1][1] == len(open_checkpoint(float_dir).weight_map)

    # The same network, loaded as a user's quantized checkpoint: the same greedy continuation.
    prompt = [151331, 151333, 151336, 9707, 11, 1879, 151337]
    outs = [list(load_engine(p, device="cpu").generate(prompt, max_new_tokens=8, stop_ids=[]))
            for p in (ordinary, streamed)]
    assert outs[0] == outs[1] and len(outs[0]) == 8


def test_streamed_checkpoint_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(ValueError, match="glm or glm4"):
        build_random_quantized_checkpoint(tmp_path / "c", format="chatglm")
    with pytest.raises(ValueError, match="group_size"):
        build_random_quantized_checkpoint(tmp_path / "g", group_size=48)
    assert not list((tmp_path).glob("*/*.safetensors"))


@pytest.mark.parametrize("offset", [8, 24])
def test_int8_linear_runs_on_a_weight_aligned_as_a_mapped_file_may_be(offset):
    # Found by the streamed-checkpoint test: loaded INT8 weights are memory-mapped views of the
    # safetensors file, 8-byte aligned at some header lengths, and torch's int8 kernel then crashed.
    from glm_runtime.quant import Int8Linear, quantize_int8

    q, s = quantize_int8(torch.randn(384, 128, generator=torch.Generator().manual_seed(0)))
    buf = torch.empty(q.numel() + 64, dtype=torch.int8)
    start = (-buf.data_ptr() + offset) % 64
    view = buf[start:start + q.numel()].view(384, 128)
    view.copy_(q)
    assert view.data_ptr() % 64 == offset
    lin = Int8Linear(view, s, None, dtype=torch.bfloat16)
    x = torch.randn(7, 128, dtype=torch.bfloat16)
    ref = x.float() @ (q.float() * s[:, None]).T
    assert torch.allclose(lin(x).float(), ref, atol=0.3, rtol=0.02)


def test_quantized_float32_model_keeps_its_16bit_embedding_with_the_same_outputs(tmp_path, glm4_dir):
    # GLM-4-9B at float32 activations: a float32 table would hold 2.3 GiB instead of 1.16.
    from glm_runtime.decoder import Decoder

    path = build_random_quantized_checkpoint(tmp_path / "q", tokenizer_dir=glm4_dir, seed=2, **SHAPE)
    engine = load_engine(path, dtype="float32", device="cpu")
    emb = engine.model.model.embed_tokens
    assert emb.weight.dtype == torch.bfloat16 and engine.model.model.norm.weight.dtype == torch.float32
    ids = [151331, 151333, 151336, 9707, 11, 1879, 151337]
    logits = engine.next_token_logits(ids)
    step = engine.next_token_logits(ids + [9707])  # one token after the cached prompt: the decoder's step
    engine.reset_cache()
    greedy = list(engine.generate(ids, max_new_tokens=6, stop_ids=[]))
    assert engine.decoder is not None and engine.last_stats.decode_steps == 5

    # The reference: the whole table upcast at load, as before.
    emb._forward_hooks.clear()
    emb.weight = torch.nn.Parameter(emb.weight.float(), requires_grad=False)
    engine.decoder = Decoder.from_model(engine.model)
    engine.reset_cache()
    assert torch.equal(engine.next_token_logits(ids), logits)
    assert torch.equal(engine.next_token_logits(ids + [9707]), step)
    engine.reset_cache()
    assert list(engine.generate(ids, max_new_tokens=6, stop_ids=[])) == greedy


def _rss_file() -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("RssFile:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux paging, read from /proc/self/status")
def test_pages_of_replaced_mapped_weights_are_handed_back_and_still_read_right(tmp_path):
    # The decoder fuses q/k/v into a copy; the originals, views of the memory-mapped checkpoint,
    # would otherwise stay resident beside it (GLM-4-9B: 0.36 GiB counted twice).
    from safetensors import safe_open
    from safetensors.torch import save_file

    from glm_runtime.checkpoint import page_out

    w = torch.randint(0, 255, (64 * 2**20,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    save_file({"w": w}, str(tmp_path / "w.safetensors"))
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        mapped = f.get_tensor("w")
    mapped[::4096].sum()  # read one byte per page: all of it resident
    before = _rss_file()
    page_out([mapped])
    assert before - _rss_file() > 48 * 2**20
    assert torch.equal(mapped, w)  # nothing lost: the pages come back from the file


@pytest.mark.slow
def test_bench_memory_tiny_shape(tmp_path):
    """bench/memory.py end to end at the tiny shape: builds, measures in a fresh process, deletes."""
    ckpt = tmp_path / "ckpt"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "memory.py"), "--shape", "tiny", "--dir", str(ckpt),
                           "--new-tokens", "3", "--prompt-tokens", "16", "--json"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert r["quantization"]["bits"] == 4 and r["new_tokens"] == 3 and r["prompt_tokens"] == 16
    assert set(r["stages"]) == {"imported", "loaded", "generated", "all_weights_read"}
    for s in r["stages"].values():
        assert 0 < s["rss_gib"] <= s["peak_gib"] and s["anon_gib"] + s["file_gib"] <= s["rss_gib"] + 0.01
    # Loading adds at least the model's tensors once all of them have been read (mapped or copied).
    grown = r["stages"]["all_weights_read"]["rss_gib"] - r["stages"]["imported"]["rss_gib"]
    assert grown >= r["model_tensor_gib"] * 0.9
    assert r["checkpoint_gib"] > 0 and r["resident_gib"] >= r["stages"]["generated"]["rss_gib"]
    assert r["deleted"] and not ckpt.exists()
