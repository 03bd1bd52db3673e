"""The hand-written decode step (`glm_runtime.decoder`) against the transformers model it stands in for.

Tiny random checkpoints of both GLM-4 layouts (`glm`, and `glm4` with its two extra norms), float and
quantized: the step's logits equal the model's own one-token forward on the same cache, at several
positions, after the cache was cropped and after it was restored from the saved prompt cache; greedy
output is the same with the step and without it. A model the step does not know gets no decoder.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from glm_runtime.decoder import Decoder  # noqa: E402
from glm_runtime.engine import Engine, load_engine  # noqa: E402
from glm_runtime.testing import build_random_checkpoint  # noqa: E402

pytestmark = pytest.mark.engine

# (quantize, dtype) -> largest |decoder - model| allowed, relative to the largest |logit|. The step
# runs the model's own ops in its dtype, so bf16 results are bit-identical today; float32 differs
# in the last bits (SDPA grouping), and INT4 at float32 rounds activations to bf16 in the kernel,
# where such last-bit differences can flip a rounding.
VARIANTS = {
    ("none", "float32"): 1e-5,
    ("none", "bfloat16"): 1e-3,
    ("int8", "bfloat16"): 1e-3,
    ("int4", "bfloat16"): 1e-3,
    ("int4", "float32"): 1e-2,
}


@pytest.fixture(scope="module", params=["glm", "glm4"])
def checkpoint(request, glm4_dir, tmp_path_factory):
    # Wide enough for whole INT4 groups and several heads per key/value head (GQA as in GLM-4).
    return build_random_checkpoint(tmp_path_factory.mktemp(request.param) / "ckpt", format=request.param,
                                   tokenizer_dir=glm4_dir, hidden_size=256, num_layers=2, num_heads=8,
                                   num_kv_heads=2, intermediate_size=512, seed=3)


def _ids(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [151331, 151333] + torch.randint(0, 150000, (n - 2,), generator=g).tolist()


def _model_step(engine: Engine, token: int) -> torch.Tensor:
    """The model's own forward on one token at the cache's next position (the path the step replaces)."""
    decoder, engine.decoder = engine.decoder, None
    try:
        return engine._run([token], None)
    finally:
        engine.decoder = decoder


def _drop_last(engine: Engine) -> None:
    engine.cache.reuse(engine.cache.ids[:-1] + [-1])


def _assert_steps_match(engine: Engine, tokens: list[int], tol: float) -> None:
    for tok in tokens:
        ours = engine._run([tok], None)
        _drop_last(engine)
        theirs = _model_step(engine, tok)
        err = (ours - theirs).abs().max().item() / theirs.abs().max().item()
        assert err <= tol, f"decoder logits differ by {err:.2e} (relative) at position {len(engine.cache) - 1}"


@pytest.mark.parametrize("quantize,dtype", list(VARIANTS))
def test_step_logits_equal_the_models_forward_at_several_positions(checkpoint, quantize, dtype):
    engine = load_engine(checkpoint, quantize=quantize, dtype=dtype, device="cpu")
    assert isinstance(engine.decoder, Decoder)
    engine.next_token_logits(_ids(40, 1))
    _assert_steps_match(engine, _ids(8, 2)[2:], VARIANTS[quantize, dtype])
    # After a crop (a prompt that diverges midway), the step continues from the shorter cache.
    engine.cache.reuse(engine.cache.ids[:25] + [-1])
    assert len(engine.cache) == 25
    _assert_steps_match(engine, _ids(5, 3)[2:], VARIANTS[quantize, dtype])


@pytest.mark.parametrize("quantize,dtype", [("none", "float32"), ("int4", "bfloat16")])
def test_greedy_output_is_the_same_with_and_without_the_step(checkpoint, quantize, dtype):
    engine = load_engine(checkpoint, quantize=quantize, dtype=dtype, device="cpu")
    prompt = _ids(30, 4)
    engine.reset_cache()
    fast = list(engine.generate(prompt, max_new_tokens=12, stop_ids=[]))
    assert engine.last_stats.decode_steps == 11
    engine.decoder = None
    engine.reset_cache()
    assert list(engine.generate(prompt, max_new_tokens=12, stop_ids=[])) == fast


def test_step_after_a_prompt_cache_restore(checkpoint, tmp_path):
    # A later process finds the prompt's prefix on disk; its keys and values go into the same
    # buffers the step reads, and what follows matches the model's forward and a cold run.
    saved = tmp_path / "prompt-cache"
    first = load_engine(checkpoint, quantize="int4", dtype="bfloat16", prompt_cache_dir=saved)
    prompt = _ids(300, 5) + [151336]  # long enough to be saved, ending at a role token
    cold = list(first.generate(prompt + _ids(6, 6)[2:], max_new_tokens=6, stop_ids=[]))
    assert first.last_stats.disk_saved_tokens > 0

    later = load_engine(checkpoint, quantize="int4", dtype="bfloat16", prompt_cache_dir=saved)
    warm = list(later.generate(prompt + _ids(6, 6)[2:], max_new_tokens=6, stop_ids=[]))
    assert later.last_stats.disk_reused_tokens > 0
    assert warm == cold
    _assert_steps_match(later, _ids(5, 7)[2:], VARIANTS["int4", "bfloat16"])


def test_int4_qkv_fusion_keeps_one_copy_and_the_layers_outputs(checkpoint):
    engine = load_engine(checkpoint, quantize="int4", dtype="bfloat16", device="cpu")
    attn = engine.model.model.layers[0].self_attn
    x = torch.randn(1, attn.q_proj.in_features, dtype=torch.bfloat16)
    fused = engine.decoder.layers[0].qkv(x)
    separate = torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], dim=-1)
    assert torch.equal(fused, separate)
    # The separate layers now read views of the fused weight: one copy in memory.
    base = attn.q_proj.qweight.untyped_storage().data_ptr()
    assert attn.k_proj.qweight.untyped_storage().data_ptr() == base == attn.v_proj.qweight.untyped_storage().data_ptr()


def test_models_the_step_does_not_know_get_no_decoder(checkpoint):
    engine = load_engine(checkpoint, quantize="none", dtype="float32", device="cpu")
    assert Decoder.from_model(torch.nn.Linear(4, 4)) is None
    other = type("Config", (), {"model_type": "llama"})()
    assert Decoder.from_model(type("M", (), {"config": other})()) is None
    scaled = engine.model.config
    old = dict(scaled.rope_parameters)
    try:
        scaled.rope_parameters = {**old, "rope_type": "linear", "factor": 2.0}
        assert Decoder.from_model(engine.model) is None  # a RoPE it does not reproduce: the model's forward
    finally:
        scaled.rope_parameters = old


def test_an_engine_without_a_decoder_generates_through_the_model(checkpoint):
    engine = load_engine(checkpoint, quantize="none", dtype="float32", device="cpu")
    plain = Engine(engine.model, engine.tokenizer, config=engine.config, checkpoint_dir=engine.checkpoint_dir,
                   stop_ids=engine.stop_ids, max_context=engine.max_context, device=engine.device,
                   dtype=engine.dtype)
    assert plain.decoder is None
    prompt = _ids(20, 8)
    assert list(plain.generate(prompt, max_new_tokens=5, stop_ids=[])) == \
        list(engine.generate(prompt, max_new_tokens=5, stop_ids=[]))
