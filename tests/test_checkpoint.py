"""Checkpoints in the three GLM-4 layouts load into transformers' model classes, and bad ones fail clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from glm_runtime.checkpoint import CheckpointError, load_model, open_checkpoint, param_count, resolve_model_dir  # noqa: E402
from glm_runtime.testing import build_random_checkpoint  # noqa: E402

pytestmark = pytest.mark.engine

PROMPT = [151331, 151333, 151336, 198, 109377, 3837, 9707, 151337]  # [gMASK]<sop><|user|>\n你好...<|assistant|>


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, glm4_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return {f: build_random_checkpoint(root / f, format=f, tokenizer_dir=glm4_dir, seed=7) for f in ("glm", "glm4", "chatglm")}


def logits(path: Path, ids=PROMPT) -> torch.Tensor:
    model = load_model(open_checkpoint(path), dtype=torch.float32)
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0]


def test_each_format_opens_with_its_model_class(ckpts):
    seen = {}
    for fmt, path in ckpts.items():
        ckpt = open_checkpoint(path)
        seen[fmt] = (ckpt.format, ckpt.model_class.__name__)
        assert ckpt.eos_ids == (151329, 151336, 151338)
        assert ckpt.config.rope_parameters["rope_theta"] == 5e6
        assert ckpt.config.rope_parameters["partial_rotary_factor"] == 0.5
    assert seen == {"glm": ("glm", "GlmForCausalLM"), "glm4": ("glm4", "Glm4ForCausalLM"),
                    "chatglm": ("chatglm", "GlmForCausalLM")}


def test_chatglm_rope_theta_is_10000_times_rope_ratio(ckpts):
    raw = json.loads((ckpts["chatglm"] / "config.json").read_text())
    assert raw["rope_ratio"] == 500 and "rope_theta" not in raw
    assert open_checkpoint(ckpts["chatglm"]).config.rope_parameters["rope_theta"] == 10000 * 500


def test_chatglm_and_glm_copies_of_the_same_weights_give_the_same_logits(ckpts):
    a, b = logits(ckpts["glm"]), logits(ckpts["chatglm"])
    assert torch.equal(a, b)


def test_glm_loader_matches_transformers_own_from_pretrained(ckpts):
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(ckpts["glm"], dtype=torch.float32)
    with torch.inference_mode():
        expected = ref(torch.tensor([PROMPT])).logits[0]
    torch.testing.assert_close(logits(ckpts["glm"]), expected, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def tied(ckpts, tmp_path_factory) -> Path:
    """A checkpoint with tied embeddings, saved by transformers itself: no `lm_head.weight` in the file."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(ckpts["glm"])
    cfg.tie_word_embeddings = True
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(cfg)
    out = tmp_path_factory.mktemp("tied")
    model.save_pretrained(out, safe_serialization=True)
    for f in ckpts["glm"].iterdir():
        if f.name.startswith("tokenizer"):
            shutil.copyfile(f, out / f.name)
    return out


def test_tied_checkpoint_loads_with_the_embedding_as_output_projection(tied):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with safe_open(str(tied / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()
    model = load_model(open_checkpoint(tied), dtype=torch.float32)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ref = AutoModelForCausalLM.from_pretrained(tied, dtype=torch.float32)
    with torch.inference_mode():
        expected = ref(torch.tensor([PROMPT])).logits[0]
        got = model(torch.tensor([PROMPT])).logits[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_tied_checkpoint_quantizes_its_layers_and_keeps_the_tied_projection(tied, quantize):
    from glm_runtime.engine import load_engine

    engine = load_engine(tied, quantize=quantize, dtype="float32", device="cpu")
    model = engine.model
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert type(model.model.layers[0].self_attn.q_proj).__name__ != "Linear"


def test_glm4_extra_norms_are_loaded_and_used(ckpts):
    model = load_model(open_checkpoint(ckpts["glm4"]), dtype=torch.float32)
    norm = model.model.layers[0].post_mlp_layernorm.weight
    assert norm.device.type == "cpu" and not torch.allclose(norm, torch.ones_like(norm))
    assert not torch.allclose(logits(ckpts["glm4"]), logits(ckpts["glm"]))


def _chatglm_reference_logits(path: Path, ids: list[int]) -> torch.Tensor:
    """The original ChatGLM forward pass (modeling_chatglm.py), written out from its weights and config.

    An independent check of the mapping: the test data's chatglm tensors are built by fusing the glm
    ones, so glm == chatglm alone would not catch a mapping that is wrong in both directions.
    """
    from safetensors.torch import load_file

    cfg = json.loads((path / "config.json").read_text())
    w = load_file(str(path / "model.safetensors"))
    nh, g, hn = cfg["num_attention_heads"], cfg["multi_query_group_num"], cfg["kv_channels"]
    eps, sq = cfg["layernorm_epsilon"], len(ids)

    def rms(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    # RotaryEmbedding(kv_channels // 2, base=10000 * rope_ratio), pairs interleaved, on the first half.
    dim = hn // 2
    theta = 1.0 / ((10000 * cfg["rope_ratio"]) ** (torch.arange(0, dim, 2).float() / dim))
    idx = torch.outer(torch.arange(sq).float(), theta)
    cache = torch.stack([torch.cos(idx), torch.sin(idx)], dim=-1)  # [sq, dim/2, 2]

    def rope(x):  # [heads, sq, hn]
        rot, rest = x[..., :dim], x[..., dim:]
        xs = rot.reshape(x.shape[0], sq, dim // 2, 2)
        c, s = cache[..., 0], cache[..., 1]
        out = torch.stack([xs[..., 0] * c - xs[..., 1] * s, xs[..., 1] * c + xs[..., 0] * s], -1).flatten(2)
        return torch.cat([out, rest], dim=-1)

    h = w["transformer.embedding.word_embeddings.weight"][ids]
    mask = torch.full((sq, sq), float("-inf")).triu(1)
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        x = rms(h, w[p + "input_layernorm.weight"])
        qkv = x @ w[p + "self_attention.query_key_value.weight"].T + w[p + "self_attention.query_key_value.bias"]
        q, k, v = qkv.split([nh * hn, g * hn, g * hn], dim=-1)
        q = rope(q.reshape(sq, nh, hn).transpose(0, 1))
        k = rope(k.reshape(sq, g, hn).transpose(0, 1)).repeat_interleave(nh // g, dim=0)
        v = v.reshape(sq, g, hn).transpose(0, 1).repeat_interleave(nh // g, dim=0)
        att = torch.softmax(q @ k.transpose(1, 2) / hn**0.5 + mask, dim=-1) @ v
        h = h + att.transpose(0, 1).reshape(sq, nh * hn) @ w[p + "self_attention.dense.weight"].T
        x = rms(h, w[p + "post_attention_layernorm.weight"])
        a, b = (x @ w[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, dim=-1)
        h = h + (torch.nn.functional.silu(a) * b) @ w[p + "mlp.dense_4h_to_h.weight"].T
    h = rms(h, w["transformer.encoder.final_layernorm.weight"])
    return h @ w["transformer.output_layer.weight"].T


def test_chatglm_mapping_matches_the_original_chatglm_forward(ckpts):
    # Positions far enough apart that a RoPE base or pairing mistake shows (rope_ratio 1 makes it fast).
    path = build_random_checkpoint(ckpts["glm"].parent / "chatglm-r1", format="chatglm", rope_theta=10000.0,
                                   seed=3, tokenizer_dir=ckpts["glm"])
    ids = PROMPT * 4
    torch.testing.assert_close(logits(path, ids), _chatglm_reference_logits(path, ids), rtol=1e-4, atol=1e-4)


def test_param_count_matches_the_loaded_model(ckpts):
    for path in ckpts.values():
        ckpt = open_checkpoint(path)
        model = load_model(ckpt, dtype=torch.float32)
        assert param_count(ckpt.config) == sum(p.numel() for p in model.parameters())


# ---- bad checkpoints ----

def copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def test_missing_directory_and_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        open_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        open_checkpoint(tmp_path / "empty")


def test_invalid_json_config(ckpts, tmp_path):
    bad = copy(ckpts["glm"], tmp_path / "bad")
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        open_checkpoint(bad)


def test_unknown_model_type(ckpts, tmp_path):
    bad = copy(ckpts["glm"], tmp_path / "llama")
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    with pytest.raises(CheckpointError, match="model_type 'llama'"):
        open_checkpoint(bad)


def test_no_weights(ckpts, tmp_path):
    bad = copy(ckpts["glm"], tmp_path / "noweights")
    (bad / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        open_checkpoint(bad)


def test_truncated_weights(ckpts, tmp_path):
    bad = copy(ckpts["glm"], tmp_path / "truncated")
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(open_checkpoint(bad), dtype=torch.float32)


def test_garbage_weights_file(ckpts, tmp_path):
    bad = copy(ckpts["glm"], tmp_path / "garbage")
    (bad / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        open_checkpoint(bad)


def test_partial_checkpoint_names_the_missing_tensors(ckpts, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = copy(ckpts["chatglm"], tmp_path / "partial")
    w = load_file(str(bad / "model.safetensors"))
    del w["transformer.encoder.layers.1.mlp.dense_4h_to_h.weight"]
    save_file(w, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"incomplete checkpoint, missing model\.layers\.1\.mlp\.down_proj"):
        load_model(open_checkpoint(bad), dtype=torch.float32)


def test_missing_shard_named_in_the_index(ckpts, tmp_path):
    bad = copy(ckpts["glm"], tmp_path / "sharded")
    (bad / "model.safetensors").rename(bad / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                            "lm_head.weight": "model-00002-of-00002.safetensors"}}
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="missing shard.*model-00002-of-00002"):
        open_checkpoint(bad)


def test_shape_mismatch_between_config_and_weights(ckpts, tmp_path):
    bad = copy(ckpts["glm"], tmp_path / "shape")
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 96}))
    with pytest.raises(CheckpointError, match=r"mlp\.\w+\.weight: shape \(.*\) in the checkpoint, model expects"):
        load_model(open_checkpoint(bad), dtype=torch.float32)


def test_unmappable_chatglm_variant(ckpts, tmp_path):
    bad = copy(ckpts["chatglm"], tmp_path / "layernorm")
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "rmsnorm": False}))
    with pytest.raises(CheckpointError, match="chatglm variant"):
        open_checkpoint(bad)


def test_repo_id_missing_offline_names_the_files_and_the_fetch_command(tmp_path):
    with pytest.raises(CheckpointError) as err:
        resolve_model_dir("THUDM/glm-4-9b-chat-hf", offline=True, cache_dir=str(tmp_path))
    msg = str(err.value)
    assert "config.json" in msg and "safetensors" in msg and "huggingface-cli download THUDM/glm-4-9b-chat-hf" in msg


def test_repo_id_resolves_from_the_hub_cache(ckpts, tmp_path):
    # The Hugging Face cache layout: models--owner--name/{refs/main, snapshots/<commit>/...}.
    repo_dir = tmp_path / "models--someone--tiny-glm"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo_dir / "snapshots" / commit
    shutil.copytree(ckpts["glm"], snap)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    assert resolve_model_dir("someone/tiny-glm", offline=True, cache_dir=str(tmp_path)) == snap


def test_not_a_repo_id():
    with pytest.raises(CheckpointError, match="not a Hugging Face repo id"):
        resolve_model_dir("./no/such/deep/path")
