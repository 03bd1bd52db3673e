"""The engine on tiny random GLM-4 checkpoints with the real tokenizer: streaming, stops, sampling,
KV reuse (identical greedy output, only new tokens prefilled, by the engine's own counters), cancellation."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from glm_runtime.engine import Engine, GenerationStats, SamplingParams, load_engine, sample  # noqa: E402
from glm_runtime.testing import ForcedTokens, build_random_checkpoint, forced_text  # noqa: E402

pytestmark = pytest.mark.engine

STOP_IDS = (151329, 151336, 151338)


@pytest.fixture(scope="module")
def engine(tiny_glm_checkpoint) -> Engine:
    return load_engine(tiny_glm_checkpoint, quantize="none", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def prompt(engine) -> list[int]:
    return engine.encode("[gMASK]<sop><|system|>\nYou are a helpful assistant.<|user|>\nWhat is 17 * 23?<|assistant|>")


def fresh(engine: Engine, ids, **kw) -> list[int]:
    engine.reset_cache()
    return list(engine.generate(ids, **kw))


def test_loads_with_the_checkpoint_facts(engine, tiny_glm_checkpoint):
    assert engine.stop_ids == STOP_IDS
    assert engine.checkpoint_dir == Path(tiny_glm_checkpoint)
    assert engine.config.vocab_size == 151552 and engine.max_context == 131072
    assert engine.encode("<|user|>\n你好") == [151336, 198, 109377]


def test_generate_streams_one_token_at_a_time(engine, prompt):
    before = engine.last_stats
    it = engine.generate(prompt, max_new_tokens=3)
    assert engine.last_stats is before  # nothing runs until the iterator is consumed
    first = next(it)
    assert isinstance(first, int) and engine.last_stats.new_tokens == 1
    rest = list(it)
    assert len(rest) == 2 and engine.last_stats.stop_reason == "length" and engine.last_stats.new_tokens == 3


def test_the_cache_goes_by_the_name_the_installed_transformers_takes(engine, prompt):
    # transformers 5 renamed forward's `past_key_values` to `cache`; the old name warns there and
    # goes in 5.40, so the engine passes whichever name the model's forward declares
    import inspect
    import warnings

    assert engine._cache_arg in inspect.signature(engine.model.forward).parameters
    engine.reset_cache()
    engine.decoder, decoder = None, engine.decoder  # every token through the model's forward
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            list(engine.generate(prompt, max_new_tokens=3))
    finally:
        engine.decoder = decoder
    assert not [w for w in caught if "past_key_values" in str(w.message)]
    assert engine.last_stats.new_tokens == 3


@pytest.mark.parametrize("stop_id", STOP_IDS)
def test_stops_on_every_stop_id_without_yielding_it(engine, prompt, stop_id):
    out = list(engine.generate(prompt, logits_processor=ForcedTokens([9707, 11, 1879], then=stop_id)))
    assert out == [9707, 11, 1879]
    s = engine.last_stats
    assert (s.stop_reason, s.stop_id, s.new_tokens) == ("stop", stop_id, 3)


def test_caller_stop_ids_replace_the_defaults(engine, prompt):
    out = list(engine.generate(prompt, stop_ids=[11], logits_processor=ForcedTokens([9707, 151336, 11, 5])))
    assert out == [9707, 151336] and engine.last_stats.stop_id == 11


def test_forced_text_with_special_tokens_decodes_back(engine, prompt):
    proc = forced_text(engine.tokenizer, 'python\nprint(17 * 23)<|observation|>', then=None)
    out = list(engine.generate(prompt, logits_processor=proc))
    assert engine.decode(out) == "python\nprint(17 * 23)" and engine.last_stats.stop_id == 151338
    # The same processor again, now with the prompt's KV reused: it restarts from its first id.
    assert list(engine.generate(prompt, logits_processor=proc)) == out
    assert engine.last_stats.reused_tokens > 0


def test_max_new_tokens_and_context_limit(engine, prompt, tiny_glm_checkpoint):
    assert list(engine.generate(prompt, max_new_tokens=0)) == []
    assert engine.last_stats.stop_reason == "length"
    small = load_engine(tiny_glm_checkpoint, quantize="none", dtype="float32", max_cache_tokens=len(prompt) + 2)
    assert small.max_context == len(prompt) + 2
    assert len(list(small.generate(prompt, max_new_tokens=50))) == 2 and small.last_stats.stop_reason == "length"
    with pytest.raises(ValueError, match="exceeds the engine's context"):
        small.generate(prompt + [1, 2, 3])


def test_bad_prompts_are_the_callers_error(engine):
    with pytest.raises(ValueError, match="empty"):
        engine.generate([])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([151331, 10**7])
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate([151331], max_new_tokens=-1)


def test_a_processor_that_rules_out_every_token_is_an_error(engine, prompt):
    with pytest.raises(ValueError, match="every token"):
        list(engine.generate(prompt, logits_processor=lambda ids, logits: torch.full_like(logits, float("-inf"))))
    with pytest.raises(TypeError, match="logits processor returned"):
        list(engine.generate(prompt, logits_processor=lambda ids, logits: logits[:10]))
    # The engine is still usable afterwards.
    assert len(list(engine.generate(prompt, max_new_tokens=2))) == 2


def test_processor_sees_prompt_plus_generated_ids(engine, prompt):
    seen: list[int] = []

    def spy(ids, logits):
        seen.append(len(ids))
        assert list(ids[: len(prompt)]) == prompt
        return logits

    list(engine.generate(prompt, max_new_tokens=3, logits_processor=spy))
    assert seen == [len(prompt), len(prompt) + 1, len(prompt) + 2]


# ---- sampling ----

def test_sample_is_greedy_at_temperature_zero_and_respects_top_k_and_top_p():
    logits = torch.tensor([0.0, 5.0, 4.9, -1.0])
    assert sample(logits, SamplingParams()) == 1
    g = torch.Generator().manual_seed(0)
    draws = {sample(logits, SamplingParams(temperature=1.0, top_k=2), g) for _ in range(200)}
    assert draws == {1, 2}
    draws = {sample(logits, SamplingParams(temperature=1.0, top_p=0.3), g) for _ in range(100)}
    assert draws == {1}  # the first token alone covers 30% of the mass
    assert {sample(logits, SamplingParams(temperature=100.0), g) for _ in range(300)} == {0, 1, 2, 3}


def test_sampling_params_are_validated():
    for bad in ({"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -1}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(engine, prompt):
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=1234)
    a = list(engine.generate(prompt, max_new_tokens=6, sampling=params))
    b = fresh(engine, prompt, max_new_tokens=6, sampling=params)
    assert a == b
    assert a != fresh(engine, prompt, max_new_tokens=6)
    assert list(engine.generate(prompt, max_new_tokens=6, sampling=SamplingParams(temperature=1.0, top_k=1))) == \
        fresh(engine, prompt, max_new_tokens=6)


# ---- KV reuse ----

def test_agent_loop_reuse_gives_identical_greedy_output_and_prefills_only_new_tokens(engine, prompt):
    engine.reset_cache()
    convo = list(prompt)
    previous_cached = 0
    for step in range(3):
        out = list(engine.generate(convo, max_new_tokens=4))
        s: GenerationStats = engine.last_stats
        if step == 0:
            assert (s.reused_tokens, s.prefill_tokens) == (0, len(convo))
        else:
            # Everything the engine had run before is reused; only the observation and its tail run.
            assert s.reused_tokens == previous_cached and s.prefill_tokens == len(convo) - previous_cached
        assert out == fresh(engine, convo, max_new_tokens=4)  # the same tokens without reuse
        list(engine.generate(convo, max_new_tokens=4))         # restore the cache of the reused run
        previous_cached = len(engine.cache)
        assert previous_cached == len(convo) + len(out) - 1  # the last token was never fed back
        convo = convo + out + engine.encode("<|observation|>\n" + f"result {step}" + "<|assistant|>")


def test_prompt_that_diverges_midway_crops_the_cache(engine, prompt):
    engine.reset_cache()
    a = prompt + engine.encode("\nThe answer is 391, because 17 * 23 = 391.")
    list(engine.generate(a, max_new_tokens=3))
    b = prompt + engine.encode("\nI will compute it with python.")
    out = list(engine.generate(b, max_new_tokens=5))
    s = engine.last_stats
    shared = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert s.reused_tokens == shared and s.prefill_tokens == len(b) - shared
    assert engine.cache.ids[: len(b)] == b
    assert out == fresh(engine, b, max_new_tokens=5)


def test_same_prompt_twice_runs_only_its_last_token(engine, prompt):
    list(engine.generate(prompt, max_new_tokens=2))
    list(engine.generate(prompt, max_new_tokens=2))
    assert engine.last_stats.prefill_tokens == 1 and engine.last_stats.reused_tokens == len(prompt) - 1


def test_logits_with_and_without_reuse_agree(engine, prompt):
    longer = prompt + engine.encode("\n17 * 23 = 391")
    engine.reset_cache()
    engine.next_token_logits(prompt)
    reused = engine.next_token_logits(longer)
    engine.reset_cache()
    torch.testing.assert_close(reused, engine.next_token_logits(longer), rtol=1e-4, atol=1e-4)


# ---- cancellation and misuse ----

def test_cancel_stops_within_one_token(engine, prompt):
    cancel = threading.Event()
    out = []
    for tok in engine.generate(prompt, max_new_tokens=50, cancel=cancel):
        out.append(tok)
        if len(out) == 2:
            cancel.set()
    assert len(out) == 2 and engine.last_stats.stop_reason == "cancelled"


def test_cancel_before_start_runs_nothing(engine, prompt):
    cancel = threading.Event()
    cancel.set()
    engine.reset_cache()
    assert list(engine.generate(prompt, cancel=cancel)) == []
    assert engine.last_stats.stop_reason == "cancelled" and len(engine.cache) == 0


def test_abandoning_the_stream_counts_as_cancelled_and_keeps_the_cache_consistent(engine, prompt):
    it = engine.generate(prompt, max_new_tokens=10)
    first = next(it)
    it.close()
    assert engine.last_stats.stop_reason == "cancelled" and engine.last_stats.new_tokens == 1
    assert engine.cache.ids == prompt  # the unfed first token is not in the cache
    assert list(engine.generate(prompt + [first], max_new_tokens=1)) == fresh(engine, prompt + [first], max_new_tokens=1)


def test_cancel_from_another_thread(engine, prompt):
    cancel = threading.Event()
    out: list[int] = []
    seen_three = threading.Event()

    def consume():
        for tok in engine.generate(prompt, max_new_tokens=200, cancel=cancel):
            out.append(tok)
            if len(out) == 3:
                seen_three.set()

    t = threading.Thread(target=consume)
    t.start()
    assert seen_three.wait(60)
    cancel.set()
    n_at_cancel = len(out)
    t.join(60)
    assert not t.is_alive()
    assert engine.last_stats.stop_reason == "cancelled" and len(out) <= n_at_cancel + 1


def test_a_superseded_generator_refuses_to_continue(engine, prompt):
    old = engine.generate(prompt, max_new_tokens=5)
    next(old)
    assert len(list(engine.generate(prompt, max_new_tokens=2))) == 2
    with pytest.raises(RuntimeError, match="superseded"):
        next(old)
    assert len(list(engine.generate(prompt, max_new_tokens=2))) == 2


# ---- formats ----

def test_all_three_formats_generate_and_chatglm_equals_glm(tmp_path, glm4_dir):
    outs = {}
    for fmt in ("glm", "glm4", "chatglm"):
        path = build_random_checkpoint(tmp_path / fmt, format=fmt, tokenizer_dir=glm4_dir, seed=11)
        e = load_engine(path, quantize="none", dtype="float32")
        ids = e.encode("[gMASK]<sop><|user|>\n你好<|assistant|>")
        outs[fmt] = list(e.generate(ids, max_new_tokens=5))
        assert len(outs[fmt]) == 5
    assert outs["glm"] == outs["chatglm"]


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_quantized_engine_generates_and_reuses(tiny_glm_checkpoint, quantize):
    e = load_engine(tiny_glm_checkpoint, quantize=quantize, dtype="bfloat16")
    assert e.quantization["bits"] == int(quantize[3])
    ids = e.encode("[gMASK]<sop><|user|>\nhello<|assistant|>")
    a = list(e.generate(ids, max_new_tokens=4))
    b = list(e.generate(ids + a + e.encode("<|user|>\nmore<|assistant|>"), max_new_tokens=3))
    assert len(a) == 4 and len(b) == 3 and e.last_stats.reused_tokens == len(ids) + 3


def test_tiny_vocab_model_with_its_own_tokenizer_json(tmp_path, glm4_tokenizer):
    # The demo-model path: a small vocabulary and a tokenizer.json, loaded like any checkpoint.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "[gMASK]", "<sop>", "<|user|>", "<|assistant|>", "<|observation|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["hello world, what is 17 * 23? it is 391."] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    tok.save(str(tok_dir / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    eos = [tok.token_to_id(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")]
    path = build_random_checkpoint(tmp_path / "demo", tokenizer_dir=tok_dir, vocab_size=vocab, eos_ids=eos)
    e = load_engine(path, quantize="none", dtype="float32")
    assert e.stop_ids == tuple(eos) and e.config.vocab_size == vocab
    ids = e.encode("[gMASK]<sop><|user|>hello<|assistant|>")
    assert ids[:3] == [tok.token_to_id("[gMASK]"), tok.token_to_id("<sop>"), tok.token_to_id("<|user|>")]
    out = list(e.generate(ids, max_new_tokens=4, logits_processor=forced_text(e.tokenizer, " world", then=eos[2])))
    assert e.decode(out) == " world" and e.last_stats.stop_id == eos[2]


def test_load_engine_rejects_bad_options(tiny_glm_checkpoint):
    with pytest.raises(ValueError, match="quantize"):
        load_engine(tiny_glm_checkpoint, quantize="int3")
    with pytest.raises(ValueError, match="dtype"):
        load_engine(tiny_glm_checkpoint, quantize="none", dtype="float8")
