"""The demo model: reproducible training, the shipped checkpoint, and agent runs it drives itself.

The agent-loop tests here use no forced tokens: the shipped demo model decides which tool to call,
with what arguments, and what to answer, on held-out requests, through the real engine, loop and
tools (sandboxed kernel, Chromium on a loopback search engine and pages, a tiny diffusers
pipeline, a generated --tools file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "demo"))

import data  # noqa: E402  scripts/demo/data.py

from glm_runtime.demo import demo_model_dir  # noqa: E402

TINY = ["--samples", "60", "--steps", "3", "--vocab", "400", "--hidden", "128", "--layers", "2", "--heads", "4",
        "--kv-heads", "2", "--ffn", "64", "--tokens-per-batch", "1024", "--row", "512", "--save-every", "100",
        "--no-choice-circuit"]
# the smallest run that holds the choice circuit: 4 layers, 3 key/value heads, every function-name verb
# and parameter word a token of its own
SMALL_CHOICE = ["--samples", "1500", "--steps", "3", "--vocab", "2048", "--hidden", "192", "--layers", "4",
                "--heads", "6", "--kv-heads", "3", "--ffn", "64", "--tokens-per-batch", "2048", "--row", "1024",
                "--save-every", "100"]


# ---- data ------------------------------------------------------------------------------------------

def test_generator_is_deterministic_and_held_out_differs():
    a = data.generate("function", 20, seed=3)
    b = data.generate("function", 20, seed=3)
    assert [e.messages for e in a] == [e.messages for e in b]
    held = data.generate("function", 20, seed=3, split="eval")
    names = {e.expect["tool"] for e in a}
    assert not names & {e.expect["tool"] for e in held}
    assert {e.lang for e in a} == {"en", "zh"}


def test_encode_targets_only_the_assistant_and_its_stop_token():
    from glm_runtime.tokenizer import load_tokenizer

    tok = load_tokenizer(demo_model_dir())
    stop = {t: tok.convert_tokens_to_ids(t) for t in ("<|assistant|>", "<|observation|>", "<|user|>",
                                                      "<|system|>", "<|endoftext|>", "[gMASK]", "<sop>")}
    ex = data.generate("error", 2, seed=0)[1]
    ids, labels = data.encode(ex, tok, stop)
    trained = tok.decode([t for t in labels if t != -100])
    calls = [m for m in ex.messages if m.role == "assistant"]
    assert calls[0].content not in trained  # the broken call is context, not a target
    assert calls[1].content in trained and calls[2].content in trained
    assert labels[-1] == stop["<|user|>"] and trained.count("<|observation|>") == 1


def test_dropping_a_word_keeps_the_first_and_never_makes_a_held_out_phrasing():
    import random

    assert data._drop_a_word("Catch ya", random.Random(0)) is None  # fewer than two words would be left
    assert {data._drop_a_word("See you tomorrow!", random.Random(i)) for i in range(20)} == {"See tomorrow!", "See you!"}
    # "Thank you much" would hold the held-out "Thank you." (any length counts)
    assert {data._drop_a_word("Thank you so much", random.Random(i)) for i in range(20)} == {None, "Thank so much"}
    held = data._plain_held_out_en()
    assert "thank you" in held and "help" in held
    base = data.mixture(3000, seed=3, vary_ends=0.25, fillers=0.3)
    assert [e.messages for e in data.mixture(3000, seed=3, vary_ends=0.25, fillers=0.3, drop_word=0.0)] == \
        [e.messages for e in base]
    dropped = data.mixture(3000, seed=3, vary_ends=0.25, fillers=0.3, drop_word=1.0)
    changed = [(a, b) for a, b in zip(base, dropped) if a.messages != b.messages]
    assert len(changed) > 20 and all(a.category == "plain" and a.lang == "en" for a, _ in changed)
    for _, b in changed:
        near = data._near(b.messages[1].content, "en")
        assert not any(data._contains(near, h, "en", any_length=True) for h in held), near


def test_fillers_go_before_the_values_and_keep_them():
    import random

    exs = [e for e in data.mixture(600, seed=5) if e.messages[1].role == "user"]
    rng = random.Random(0)
    changed = right_before_a_number = 0
    for ex in exs:
        text = ex.messages[1].content
        start = 0 if ex.category == "plain" else data._first_value(text, ex)  # a greeting: only before it
        new = data._add_fillers(text, ex, rng)
        assert new.endswith(text[start:]) and len(new) > len(text)  # the values and what follows are untouched
        if ex.lang == "en" and text[:start].count(" ") >= 1:  # a word before the value
            before = new[: len(new) - len(text) + start].split(" ")
            number = ex.expect.get("tool") == "python" and text[start:start + 1].isdigit()
            if before[-2] != text[:start].split(" ")[-2]:  # right before it only if it is a number
                assert number, (text, new)
                right_before_a_number += 1
        changed += new != text
    assert changed == len(exs) > 100 and right_before_a_number > 5


def test_made_up_chinese_uses_the_whole_block_and_no_held_out_topic():
    import random

    rng = random.Random(0)
    topics = [data._zh_made_up(rng, 2, 5) for _ in range(5000)]
    chars = set("".join(topics))
    assert len(chars) > 9000 and all(0x4E00 <= ord(c) <= 0x9FA5 for c in chars)
    assert chars & set("".join(data._ZH_HELD))  # the held-out topics' characters, as held-out words' letters
    assert not any(h in t for t in topics for h in data._ZH_HELD)


def test_a_quote_inside_a_word_is_not_where_a_value_starts():
    ex = data.generate("python", 1, seed=0)[0]
    assert data._first_value("Let's compute 12 + 5.", ex) == len("Let's compute ")
    assert data._first_value("How long is 'banana'?", ex) == len("How long is ")


def test_no_training_phrasing_is_a_held_out_one_but_for_punctuation():
    assert "Goodbye" in data._PLAIN_MORE["en"][4] and "Goodbye!" in data._PLAIN["en"][4][0][1::2]
    trained = {data._bare(x) for lang in ("en", "zh") for g, (asks, _) in enumerate(data._PLAIN[lang])
               for x in data._half(asks, "train", data._PLAIN_MORE[lang][g])}
    held = {data._bare(x) for lang in ("en", "zh") for asks, _ in data._PLAIN[lang] for x in data._half(asks, "eval")}
    assert not trained & held and "goodbye" in held
    for ex in data.mixture(3000, seed=0, vary_ends=0.25, fillers=0.3):
        if ex.category == "plain":
            assert data._bare(ex.messages[-2].content) not in held


def test_encoding_in_forked_workers_gives_the_ids_one_process_gives(tmp_path):
    import train
    from glm_runtime.chat_format import render
    from glm_runtime.tokenizer import load_tokenizer

    examples = data.mixture(300, seed=4)
    bare = train._bare_tokenizer(train.official_template())
    texts = [render(ex.messages, ex.tools, tokenizer=bare, add_generation_prompt=False) for ex in examples]
    train.build_tokenizer(texts, vocab_size=600, template=train.official_template(), out=tmp_path,
                          split="letters", min_word_count=3)
    tok = load_tokenizer(tmp_path)
    stop = {t: tok.convert_tokens_to_ids(t) for t in train.GLM4_SPECIAL_TOKENS}
    one = [data.encode(ex, tok, stop) for ex in examples]
    assert train.encode_all(examples, tok, stop, 3, min_parallel=0) == one  # 3 parts, in order
    assert train.encode_all(examples, tok, stop, 2) == one  # few examples: no forks


# ---- tokenizer -------------------------------------------------------------------------------------

def _letters_tokenizer(tmp_path, words):
    import train

    texts = ["Look up solar bees. search(\"x\") Find " + " ".join(words) + " 12 北极"] * 3
    tok = train.build_tokenizer(texts, vocab_size=300, template=train.official_template(), out=tmp_path,
                                split="letters", min_word_count=2)
    return lambda s: [tok.decode([i]) for i in tok.encode(s, add_special_tokens=False)]


def test_blind_phrasings_hold_no_held_out_phrasing_and_fill_like_the_pools():
    kept, dropped = data.blind_phrasings()
    for lang, keys in kept.items():
        pools = data._held_out_pools(lang)
        held = {data._near(x, lang) for pool in pools.values() for x in pool[1::2]}
        assert set(keys) == set(pools)
        for key, phrasings in keys.items():
            assert len(phrasings) >= 10, (lang, key)
            for text in phrasings:
                assert data._near(text, lang) not in held, (lang, key, text)
                text.format(a=1, op="+", b=2, items="1, 2", w="x", t="y", thing="z", args="v 1")  # only slots the generator fills
    assert len(dropped) > 0  # a blind writer comes up with held-out phrasings too: they are what is dropped
    # case, punctuation, a contraction or a filler word at either end do not make a phrasing new, nor
    # do words around a held-out phrasing of two words or more; a plain phrasing that another kind
    # trains on is not taken either
    kept, dropped = data.blind_phrasings({
        "en": {"identity": ["So, what's your name?!", "What is your name, assistant?", "Tell me your name."],
               "thanks": ["who are you"],
               "sum": ["OK add up {items} please", "Total up {items}.", "Add {items}, {items}."]},
        "zh": {"farewell": ["嗯，拜拜～", "我先下线了"]}})
    assert kept["en"] == {"identity": ["Tell me your name."], "thanks": [], "sum": ["Total up {items}."]}
    assert kept["zh"] == {"farewell": ["我先下线了"]}
    assert [why for _, _, why in dropped] == ["a held-out phrasing", "contains a held-out phrasing",
                                              "another kind's phrasing", "a held-out phrasing", "wrong slots",
                                              "a held-out phrasing"]


def test_blind_pools_add_training_phrasings_only_and_only_inside_the_block():
    def requests(split):
        return [e.messages[1].content for c in ("plain", "python", "browser", "function")
                for e in data.generate(c, 300, seed=3, split=split)]

    train, held = requests("train"), requests("eval")
    with data.blind_pools():
        train_blind, held_blind = requests("train"), requests("eval")
    assert requests("train") == train and held_blind == held
    kept, _ = data.blind_phrasings()
    blind = {p for keys in kept.values() for ps in keys.values() for p in ps}
    fills = dict(a="", op="", b="", items="", w="", t="", thing="", args="")
    blind_bare = {data._bare(p.format(**fills)) for p in blind}
    assert train_blind != train
    assert sum(any(data._bare(r).startswith(b) for b in blind_bare if b) for r in train_blind) > 0
    with data.blind_pools(False):
        assert requests("train") == train


def test_held_out_words_names_the_greeting_words_training_never_shows():
    import held_out_words

    rows = {r["phrasing"]: r for r in held_out_words.plain_gaps("en")}
    assert rows["Goodbye!"]["nowhere"] == ["goodbye"] and rows["What is your name?"]["nowhere"] == ["name"]
    assert rows["Hello"] == {"kind": 0, "phrasing": "Hello", "other": [], "nowhere": [], "inside": []}
    # the hand-written capabilities phrasings hold the held-out identity question whole
    assert rows["What are you?"]["inside"] == ["What are you able to do?", "What are you good at?"]
    with data.blind_pools():
        rows = {r["phrasing"]: r for r in held_out_words.plain_gaps("en")}
        zh = {r["phrasing"]: r for r in held_out_words.plain_gaps("zh")}
    assert rows["What is your name?"]["nowhere"] == []  # "Tell me your name" and the like, written blind
    assert "喂，在吗" in zh["在吗"]["inside"] and zh["下次见"]["inside"] == []  # a blind how-are-you phrasing
    # leaving out the phrasings that hold another reply's held-out one (train.py --drop-crossing) empties "inside"
    with data.crossing_filter(), data.blind_pools():
        rows = {r["phrasing"]: r for r in held_out_words.plain_gaps("en")}
        zh = {r["phrasing"]: r for r in held_out_words.plain_gaps("zh")}
    assert zh["在吗"]["inside"] == [] and all(r["inside"] == [] for r in rows.values())


def test_bag_baseline_reads_help_as_a_word_only_where_its_case_does_not_split_it(tmp_path):
    import held_out_words
    import train

    from glm_runtime.chat_format import render

    with data.blind_pools():
        texts = [render(ex.messages, ex.tools, tokenizer=train._bare_tokenizer(train.official_template()))
                 for ex in data.mixture(3000, seed=0, weights=data.WEIGHTS | {"plain": 2.0})]
    for name, case_mark in (("cased", False), ("marked", True)):
        train.build_tokenizer(texts, vocab_size=2048, template=train.official_template(), out=tmp_path / name,
                              split="letters", min_word_count=2, skip_prose=True, case_mark=case_mark)
    bag = {name: held_out_words.bag_baseline(held_out_words.bag_features(str(tmp_path / name)), samples=8000)
           for name in ("cased", "marked")}
    words = held_out_words.bag_baseline(held_out_words.bag_features("words"), samples=8000)
    assert words["wrong"]["在吗"] == ["how_are_you", 5]  # blind how-are-you phrasings hold it
    # "Help" is `H e l p` without the mark (8 of 8 wrong), the mark and "help" with it
    assert bag["cased"]["wrong"]["Help"][1] == 8
    assert "Help" not in bag["marked"]["wrong"] and "Help" not in words["wrong"]
    assert bag["marked"]["right"] > bag["cased"]["right"]


def test_no_training_phrasing_holds_a_held_out_phrasing_of_another_reply():
    # hand-written: two capabilities phrasings hold the held-out identity question "What are you?"
    assert data._crossings() == {"What are you able to do?", "What are you good at?"}
    assert "What are you able to do?" in data._PLAIN_MORE["en"][5]
    # written blind: across languages too, at any length; a held-out phrasing that its own reply
    # trains on ("Hi" is a training greeting; "你好呀" is "你好" up to a filler) does not count
    blind = {"en": {"thanks": ["Thanks for the help!", "Thanks, you rock"]},
             "zh": {"greeting": ["hello", "hi", "hey"], "how_are_you": ["你在吗", "你好吗", "还好吧"]}}
    with data.crossing_filter():
        kept, dropped = data.blind_phrasings(blind)
    assert kept == {"en": {"thanks": ["Thanks, you rock"]}, "zh": {"greeting": ["hi"], "how_are_you": ["你好吗", "还好吧"]}}
    assert [(t, why) for _, t, why in dropped] == [(t, "holds another reply's held-out phrasing")
                                                    for t in ("Thanks for the help!", "hello", "hey", "你在吗")]
    assert data.blind_phrasings(blind)[1] == []  # outside the filter (the shipped weights' data) all are kept

    # and with the filter no training conversation asks with one; without it, some do
    def crossing(on):
        with data.crossing_filter(on), data.blind_pools():
            plain = data.generate("plain", 6000, seed=2)
        return [e.messages[-2].content for e in plain
                if data._crosses(e.messages[-2].content, e.lang, data.PLAIN_KINDS[_plain_kind(e)])]

    assert crossing(True) == [] and "What are you able to do?" in crossing(False)


def _plain_kind(example) -> int:
    return next(g for g, (_, answer) in enumerate(data._PLAIN[example.lang]) if answer == example.messages[-1].content)


def test_made_up_words_use_every_letter_and_no_held_out_word():
    import random
    import re

    rng = random.Random(0)
    words = [data._pseudo_word(rng) for _ in range(3000)]
    held, sylls = data._held_out_words()
    assert set("".join(words)) == set("abcdefghijklmnopqrstuvwxyz")
    assert min(map(len, words)) == 3 and max(map(len, words)) == 14
    assert not any(w in held or any(s in w for s in sylls) for w in words)
    # and the training error traces count the kernel's executions, as a session's kernel does
    cells = {re.search(r"Cell In\[(\d+)\]", e.messages[3].content).group(1)
             for e in data.generate("error", 200, seed=0) if e.messages[2].metadata == "python"}
    assert len(cells) > 20


def test_evaluation_declares_the_functions_in_the_examples_order(tmp_path):
    # the evaluation's prompt must be the one the example renders, so its --tools file keeps the order
    import evaluate as demo_eval  # scripts/demo/evaluate.py
    from tools.registry import ToolRegistry

    exs = [e for e in data.generate("function", 60, seed=3, split="eval")
           if sum(s.kind == "function" for s in e.tools) == 2]
    assert {e.tools[-1].name == e.expect["tool"] for e in exs} == {True, False}  # the target first or last
    for k, ex in enumerate(exs[:6]):
        f = tmp_path / f"tools_{k}.py"
        f.write_text(demo_eval.user_tools_file(ex), encoding="utf-8")
        reg = ToolRegistry(workdir=tmp_path)
        reg.load(str(f))
        assert [s.name for s in reg.specs()] == [s.name for s in ex.tools if s.kind == "function"]
        assert [s.parameters for s in reg.specs()] == [s.parameters for s in ex.tools if s.kind == "function"]


def test_letters_split_keeps_known_words_and_spells_every_other_word(tmp_path):
    import train

    known = train.known_words(["Look up the castle", "Look up the arctic castle bees", "zubo"], 2)
    assert known == ["Look", "castle", "the", "up"]  # bees is a topic word: spelled even where frequent
    pieces = _letters_tokenizer(tmp_path, ["castle"])
    assert pieces("Look up castles") == ["Look", " ", "up", " ", "c", "a", "s", "t", "l", "e", "s"]
    assert pieces('search("nocturnal castle")')[:3] == ["search", '("', "n"]
    # the same letters in the request and in the call, whatever comes before the word
    word = ["n", "o", "c", "t", "u", "r", "n", "a", "l"]
    assert pieces("Find nocturnal castle")[2:11] == word == pieces('("nocturnal castle")')[1:10]
    assert pieces("Lookup") == list("Lookup")  # a known word inside a longer one is not cut out of it


def test_whole_words_makes_every_known_word_one_token_and_counts_other_cases(tmp_path):
    import train

    texts = ["Who are you? help me, thanks. Look up the castle"] * 8 + ["Help with the castle"] * 2
    assert "Help" not in train.known_words(texts, 8)
    known = train.known_words(texts, 8, case_fold=True)  # with "help": 10 of 10, itself 2 >= 8 // 4
    assert "Help" in known and "castle" in known and "Who" in known
    plain = train.build_tokenizer(texts, vocab_size=300, template=train.official_template(), out=tmp_path / "a",
                                  split="letters", min_word_count=8)
    assert any(len(plain.tokenize(w)) > 1 for w in known)  # a small BPE leaves known words in pieces
    tok = train.build_tokenizer(texts, vocab_size=300, template=train.official_template(), out=tmp_path / "b",
                                split="letters", min_word_count=8, whole_words=True)
    for w in known:
        assert len(tok.encode(w, add_special_tokens=False)) == 1, w
    pieces = lambda s: [tok.decode([i]) for i in tok.encode(s, add_special_tokens=False)]  # noqa: E731
    assert pieces("Who helps? Whoever, Help!") == ["Who", " ", "h", "e", "l", "p", "s", "?", " ", "W", "h", "o", "e",
                                                   "v", "e", "r", ",", " ", "Help", "!"]
    assert tok.decode(tok.encode("Who are you? Help, thanks.", add_special_tokens=False)) == "Who are you? Help, thanks."


def test_case_mark_gives_a_word_its_tokens_in_any_case_and_the_runtime_writes_capitals_back(tmp_path, capsys):
    import train

    from agent.cli.model_cmd import _print_delta
    from glm_runtime.call_constraint import CallHeaderConstraint, TokenTable
    from glm_runtime.chat_format import render
    from glm_runtime.tokenizer import CASE_MARK, load_tokenizer, unfinished

    texts = ["Who are you? help me, thanks. Look up the castle"] * 8 + ["Help with the castle, who"] * 2
    train.build_tokenizer(texts, vocab_size=300, template=train.official_template(), out=tmp_path,
                          split="letters", min_word_count=8, case_mark=True)
    tok = load_tokenizer(tmp_path)  # as the runtime loads it
    mark = tok.convert_tokens_to_ids(tok.tokenize("H")[0])
    ids = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    assert tok.decode([mark]) == CASE_MARK and len(tok.tokenize("help")) == 1  # "help": 10 texts of 10
    assert ids("Help") == [mark] + ids("help") and ids("Who") == [mark] + ids("who")
    assert ids("HELP")[::2] == [mark] * 4  # every capital its own mark
    assert not any(c.isupper() for i in ids(" ".join(texts)) for c in tok.decode([i]))  # no token holds a capital
    # a whole conversation, template prose and special tokens included, decodes to what was encoded
    ex = data.generate("function", 1, seed=3)[0]
    text = render(ex.messages, ex.tools, tokenizer=tok)
    assert tok.decode(ids(text)) == text and "Current date" in text
    # streaming holds a trailing mark back until its letter comes
    assert unfinished(tok.decode(ids("Look up")[:1] + [mark])) and not unfinished(tok.decode(ids("Look up")))
    printed = _print_delta(tok.decode(ids("hi ") + [mark]), "")
    printed = _print_delta(tok.decode(ids("hi ") + [mark] + ids("who")), printed)
    assert capsys.readouterr().out == "hi Who" == printed
    # the call header constraint spells a declared name with capitals through the mark
    table = TokenTable(tok)
    assert mark in table.continuing("get", ["\n", "getWho\n"])
    proc = CallHeaderConstraint(table, ["getWho", "python"], tok.convert_tokens_to_ids("<|assistant|>"))
    seq = [tok.convert_tokens_to_ids("<|assistant|>")]
    while (written := proc.header(seq)) is not None:
        allowed = table.continuing(written, proc.targets)
        on_name = [i for i in allowed
                   if table.normalize("getWho\n").startswith(table.normalize(table.decode(seq[1:] + [i])))]
        seq.append(max(on_name, key=lambda i: len(table.decode(seq[1:] + [i]))))
    assert table.decode(seq[1:]) == "getWho\n"


def _token_bytes(token: str) -> bytes:
    """The bytes of a byte-level BPE token (GPT-2's byte-to-character table, which tokenizers uses)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = printable + [256 + k for k in range(256 - len(printable))]
    table = dict(zip(map(chr, chars), [*printable, *(b for b in range(256) if b not in printable)]))
    return bytes(table[c] for c in token)


def test_skip_prose_learns_no_token_from_the_template_prose_alone(tmp_path):
    import train
    from glm_runtime.chat_format import render

    examples = data.mixture(400, seed=4)
    template = train.official_template()
    bare = train._bare_tokenizer(template)
    texts = [render(ex.messages, ex.tools, tokenizer=bare, add_generation_prompt=False) for ex in examples]
    prose = train.added_pieces(template)
    outside = "\n".join(train._without(t, prose) for t in texts).encode()
    assert all(p not in train._without(texts[0], prose) for p in prose)

    def prose_only(skip: bool) -> list[str]:
        tok = train.build_tokenizer(texts, vocab_size=900, template=template, out=tmp_path / str(skip),
                                    split="letters", min_word_count=3, skip_prose=skip)
        added = set(tok.get_added_vocab())
        merged = [t for t in tok.get_vocab() if t not in added and len(_token_bytes(t)) > 1]  # not the 256 bytes
        return [t for t in merged if _token_bytes(t) not in outside]

    learned_from_prose = prose_only(False)
    assert len(learned_from_prose) > 20  # pieces of the prose that no encoded text holds
    assert prose_only(True) == []


def test_trie_pattern_matches_exactly_its_words():
    import regex
    import train

    words = ["a", "an", "and", "ant", "bee", "beetle", "be"]
    pat = regex.compile("(?:" + train._trie_pattern(words) + ")")
    for w in words:
        assert pat.fullmatch(w)
    for w in ["", "am", "andy", "bet", "beet", "b", "tle"]:
        assert not pat.fullmatch(w)


def test_slot_words_are_the_copied_pools():
    assert data.is_slot_word("arctic") and data.is_slot_word("Bridges") and data.is_slot_word("zorqua")
    assert data.is_slot_word("xylophone") and data.is_slot_word("fa")
    assert not data.is_slot_word("castle") and not data.is_slot_word("search") and not data.is_slot_word("zorq")


# ---- training --------------------------------------------------------------------------------------

def _train(out: Path, *extra: str) -> str:
    # A subprocess: training fixes torch's thread count and deterministic mode process-wide.
    cmd = [sys.executable, str(ROOT / "scripts" / "demo" / "train.py"), "--out", str(out), *(extra or TINY)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1].split("weights sha256 ")[1]


@pytest.mark.engine
def test_segment_attention_is_the_packed_mask_without_building_it():
    """Training packs conversations into rows; each attends only to itself. `segment_attention`
    must give exactly transformers' own block-diagonal mask's loss and gradients."""
    import random

    import torch
    import train
    from transformers import GlmConfig, GlmForCausalLM

    rng = random.Random(0)
    encoded = []
    for n in (37, 120, 64, 9, 200, 75):
        ids = [rng.randrange(14, 300) for _ in range(n)]
        encoded.append((ids, [t if rng.random() < 0.3 else -100 for t in ids]))
    rows = train.batches(encoded, 2 * 256, 256, random.Random(1))
    ids, labels, pos, segments = train.collate(encoded, max(rows, key=len), 0)
    assert len(ids) == 2 and any(len(s) >= 3 for s in segments)  # two conversations and padding in a row
    torch.manual_seed(0)
    cfg = GlmConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, partial_rotary_factor=0.5, attention_bias=True,
                    pad_token_id=0, eos_token_id=[0])
    model = GlmForCausalLM(cfg)

    def loss_and_grad(**kw):
        model.zero_grad()
        loss = model(input_ids=ids, labels=labels, position_ids=pos, use_cache=False, **kw).loss
        loss.backward()
        return loss.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()

    ref_loss, ref_grad = loss_and_grad()  # transformers builds the block-diagonal mask from position_ids
    train.use_segment_attention(model)
    loss, grad = loss_and_grad(segments=segments)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7)
    # `--fast-loss` runs the output projection on the trained positions only: same value, same gradients
    model.zero_grad()
    trained = train.trained_loss(model, ids, labels, pos, segments)
    trained.backward()
    torch.testing.assert_close(trained.detach(), ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.model.layers[0].self_attn.q_proj.weight.grad, ref_grad, rtol=1e-4, atol=1e-7)
    # and attending across conversations (no segments, the whole row causal) is not the same
    model.set_attn_implementation("sdpa")
    leaky = model(input_ids=ids, labels=labels, position_ids=pos, use_cache=True).loss
    assert not torch.allclose(leaky, ref_loss)


def test_choice_weights_weigh_each_assistant_turns_first_token():
    """`--choice-weight`: the token that picks the tool (or, a newline, an answer) weighs more in the
    loss; each weighted position is the first trained token after an `<|assistant|>`, and the loss
    becomes the weighted mean of the per-token losses."""
    import random

    import torch
    import train
    from transformers import GlmConfig, GlmForCausalLM

    from glm_runtime.tokenizer import GLM4_SPECIAL_TOKENS, load_tokenizer

    tok = load_tokenizer(demo_model_dir())
    stop = {t: tok.convert_tokens_to_ids(t) for t in GLM4_SPECIAL_TOKENS}
    exs = data.generate("function", 4, seed=3) + data.generate("error", 2, seed=3)
    encoded = [data.encode(e, tok, stop) for e in exs]
    for ex, (ids, labels) in zip(exs, encoded):
        at = train.choice_positions(ids, labels, stop["<|assistant|>"])
        trained_turns = [m for m, t in zip(ex.messages, ex.train) if m.role == "assistant" and t]
        assert len(at) == len(trained_turns)  # the error category's broken call is not trained: not weighted
        for k, m in zip(at, trained_turns):
            assert ids[k - 1] == stop["<|assistant|>"] and labels[k] == ids[k]
            assert tok.decode(ids[k:k + 8]).lstrip("\n").startswith((m.metadata or m.content.strip())[:3])
    rows = train.batches(encoded, 2048, 2048, random.Random(0))[0]
    ids, labels, pos, segments = train.collate(encoded, rows, 0)
    positions = [train.choice_positions(i, l, stop["<|assistant|>"]) for i, l in encoded]
    w = train.choice_weights(encoded, rows, positions, 20.0, labels.shape)
    assert int((w == 20).sum()) == sum(len(positions[i]) for i in rows[0])
    torch.manual_seed(0)
    cfg = GlmConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=0, eos_token_id=[0])
    model = GlmForCausalLM(cfg)
    train.use_segment_attention(model)
    plain = train.trained_loss(model, ids, labels, pos, segments)
    torch.testing.assert_close(train.trained_loss(model, ids, labels, pos, segments, torch.ones(labels.shape)), plain)
    hidden = model.model(input_ids=ids, position_ids=pos, segments=segments, use_cache=False).last_hidden_state
    per_token = torch.nn.functional.cross_entropy(model.lm_head(hidden[:, :-1]).transpose(1, 2), labels[:, 1:],
                                                  reduction="none", ignore_index=-100)
    scored = labels[:, 1:] != -100
    expect = (per_token * w[:, 1:])[scored].sum() / w[:, 1:][scored].sum()
    torch.testing.assert_close(train.trained_loss(model, ids, labels, pos, segments, w), expect)


def test_segment_attention_splits_with_the_same_values_and_gradients_bit_for_bit():
    # training's attention splits each row into its conversations instead of slicing them (a
    # slice's backward fills a zero tensor of the whole input per conversation); the shipped
    # weights were trained with slices, so the split must not change a single bit
    import torch
    import torch.nn.functional as F
    import train

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, h, 40, 8, requires_grad=True) for h in (4, 2, 2))
    segments = [[(0, 13), (13, 31), (31, 40)], [(0, 40)]]

    def sliced():
        k2, v2 = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
        rows = [torch.cat([F.scaled_dot_product_attention(q[r: r + 1, :, a:b], k2[r: r + 1, :, a:b],
                                                          v2[r: r + 1, :, a:b], is_causal=True) for a, b in spans], 2)
                for r, spans in enumerate(segments)]
        return torch.cat(rows, 0).transpose(1, 2)

    outs, grads = [], []
    for fn in (sliced, lambda: train.segment_attention(None, q, k, v, None, segments=segments)[0]):
        out = fn()
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append([t.grad.clone() for t in (q, k, v)])
        for t in (q, k, v):
            t.grad = None
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def _copy_rate(ngram: int, *, spaced: bool, alphabet: int = 0) -> float:
    """How often the untrained model with the built-in copy circuit predicts the next token of a
    span it has seen before: random "words" (ids), alone or each followed by one separator token
    (as a space is its own token with `--split words`), or `alphabet` "letters" whose pairs recur
    (as with `--split letters`). Only words are scored, never separators."""
    import random

    import torch
    import train
    from transformers import GlmConfig, GlmForCausalLM

    class Args:
        hidden, layers, heads, kv_heads, ffn, context, tie, rotary = 256, 4, 8, 4, 704, 2048, True, 0.25

    cfg = GlmConfig(**{k: v for k, v in train.model_config(2064, [0], Args).items()
                       if k not in ("architectures", "model_type")})
    torch.manual_seed(0)
    model = GlmForCausalLM(cfg).eval()
    train.copy_circuit(model, seed=0, ngram=ngram, gain=0.2)
    rng, sep = random.Random(0), 15
    ok = total = 0
    for _ in range(8):
        draw = (lambda: rng.randrange(100, 100 + alphabet)) if alphabet else (lambda: rng.randrange(20, 2000))
        seq = [t for _ in range(120) for t in ([draw(), sep] if spaced else [draw()])]
        start = rng.randrange(0, len(seq) - 30)
        span = seq[start: start + 20]
        ids = seq + [rng.randrange(20, 2000)] + span
        with torch.no_grad():
            pred = model(input_ids=torch.tensor([ids])).logits[0].argmax(-1)
        for k in range(1, len(span)):
            if span[k] != sep:
                ok += int(pred[len(seq) + k]) == span[k]
                total += 1
    return ok / total


@pytest.mark.engine
def test_copy_circuit_copies_before_any_training():
    """The circuit alone (random weights elsewhere) continues a span seen earlier; matching two
    tokens of context it also finds the word after a separator, which one token cannot: after the
    separator every earlier word is a candidate. Measured: 93% / 1% with one token, 98% / 55% with two.
    Over 12 "letters", where pairs recur, three tokens (in half of the heads) beat two: 78% / 72%."""
    assert _copy_rate(1, spaced=False) > 0.8
    assert _copy_rate(2, spaced=False) > 0.9
    assert _copy_rate(1, spaced=True) < 0.1
    assert _copy_rate(2, spaced=True) > 0.4
    assert _copy_rate(3, spaced=True) > 0.3
    two, three = _copy_rate(2, spaced=False, alphabet=12), _copy_rate(3, spaced=False, alphabet=12)
    assert three > two + 0.04, (two, three)


@pytest.mark.engine
def test_choice_circuit_chooses_the_function_the_request_names_before_any_training():
    """On held-out two-function prompts, a model with random weights but for the copy circuit names
    neither function; with the choice circuit built in too it names the one whose parameter the
    request names (measured: 88%, the other 3%). Without its three hops the trained weights chose at
    chance (MODEL_CARD.md)."""
    import probe_selection
    import torch
    import train
    from transformers import GlmConfig, GlmForCausalLM

    from glm_runtime.tokenizer import load_tokenizer

    tok = load_tokenizer(demo_model_dir())
    cases = probe_selection.two_function_cases(tok, "eval", 60, seed=5)
    verbs, params = data.function_words()

    def model(choice: bool):
        torch.manual_seed(0)
        m = GlmForCausalLM(GlmConfig.from_pretrained(demo_model_dir())).eval()
        train.copy_circuit(m, seed=0, ngram=3, gain=0.2)
        if choice:
            assert train.choice_circuit(m, tok, verbs=verbs, params=params)
        return m

    before, after = probe_selection.rates(model(False), cases), probe_selection.rates(model(True), cases)
    assert before["right"] < 0.2 and before["other"] < 0.2, before
    assert after["right"] >= 0.75 and after["other"] <= 0.15, after
    with pytest.raises(ValueError, match="one token"):
        train.choice_circuit(model(False), tok, verbs=verbs, params=["order_id"])


def _bag_model(bag: bool):
    """The demo's shape with random weights and the built-in circuits, the bag circuit too if `bag`."""
    import torch
    import train
    from transformers import GlmConfig, GlmForCausalLM

    from glm_runtime.tokenizer import load_tokenizer

    tok = load_tokenizer(demo_model_dir())
    cfg = GlmConfig.from_pretrained(demo_model_dir())
    cfg._attn_implementation = "eager"  # to read the attention weights
    torch.manual_seed(0)
    model = GlmForCausalLM(cfg).eval()
    train.copy_circuit(model, seed=0, ngram=3, gain=0.2)
    verbs, params = data.function_words()
    train.choice_circuit(model, tok, verbs=verbs, params=params)
    if bag:
        assert train.bag_circuit(model, tok, verbs=verbs, params=params)
    return model, tok


def _bag_reads(model, tok, messages, tools) -> tuple[list[float], float, float]:
    """At the generation prompt's `<|assistant|>`: the layer-2 bag head's attention on each user
    turn's tokens (oldest first), and the script shares (L, C) it writes, as layer 3 reads them."""
    import torch
    import train

    from glm_runtime.chat_format import render

    ids = tok(render(messages, tools, tokenizer=tok, add_generation_prompt=True))["input_ids"]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_attentions=True, output_hidden_states=True)
        normed = model.model.layers[3].input_layernorm(out.hidden_states[3][0])[-1]
    weights = out.attentions[2][0, 6][-1]
    roles = {tok.convert_tokens_to_ids(t) for t in ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")}
    starts = [i for i, t in enumerate(ids) if t == tok.convert_tokens_to_ids("<|user|>")]
    turns = [float(weights[s + 1: next(j for j in range(s + 1, len(ids)) if ids[j] in roles)].sum()) for s in starts]
    at = train.bag_dims(model, *data.function_words())
    return turns, float(normed[at["L"]]), float(normed[at["C"]])


@pytest.mark.engine
def test_bag_circuit_reads_the_latest_request_and_its_script_before_any_training():
    """Untrained, the bag head at `<|assistant|>` puts its attention on the request's tokens in
    every category (measured: 93% at the least, 99% on average; without the circuit the head
    spreads over the prompt) and on the latest request of a conversation whose earlier reply is
    long (after a reply of three tokens it splits about evenly between the two requests: the
    nearest-role head cannot tell a role two tokens back from one five back; the demo trains on
    single-turn conversations only), and it writes which script the request is in: "Help" and
    "Hello!" are not Chinese, "在吗" is."""
    from glm_runtime.chat_format import Message

    model, tok = _bag_model(True)
    shares = []
    for cat in ("plain", "python", "function", "browser", "cogview"):
        for ex in data.generate(cat, 5, seed=3, split="eval"):
            shares += _bag_reads(model, tok, ex.messages[:2], ex.tools)[0]
    assert min(shares) > 0.85 and sum(shares) / len(shares) > 0.95, shares
    plain = data.generate("plain", 1, seed=3, split="eval")[0]
    system = plain.messages[0]
    identity = data._PLAIN["en"][1][1]  # a reply of 30 tokens
    turns, _, _ = _bag_reads(model, tok, [system, Message("user", "Who are you?"), Message("assistant", identity),
                                          Message("user", "What is 3 + 4?")], [])
    assert turns[1] > 0.9 and turns[0] < 0.05, turns
    for request, latin in (("Help", True), ("Hello!", True), ("What is 3 + 4?", True), ("在吗", False), ("谢谢你！", False)):
        _, L, C = _bag_reads(model, tok, [system, Message("user", request)], [])
        assert (L > 0.2 and C < 0.05) if latin else (C > 0.5 and L < 0.05), (request, L, C)
    model, tok = _bag_model(False)
    without = _bag_reads(model, tok, plain.messages[:2], plain.tools)[0]
    assert without[0] < 0.5, without


@pytest.mark.slow
@pytest.mark.engine
def test_training_twice_gives_the_same_weights(tmp_path):
    import torch

    first, second = _train(tmp_path / "a"), _train(tmp_path / "b")
    assert first == second
    cpu = json.loads((tmp_path / "a" / "training.json").read_text())["cpu"]  # what a rerun must match
    assert cpu["torch_capability"] == torch.backends.cpu.get_cpu_capability() and "bf16_isa" in cpu
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert _train(tmp_path / "c", *TINY, "--seed", "1") != first


def test_weight_average_is_the_running_average_and_gives_the_live_weights_back():
    import torch

    import train

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    start = [p.detach().clone() for p in model.parameters()]
    avg = train.WeightAverage(model, 0.9)
    steps = []
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        steps.append([p.detach().clone() for p in model.parameters()])
        avg.update(model)
    live = [p.detach().clone() for p in model.parameters()]
    with avg.applied(model):
        for p, s0, (a, b, c) in zip(model.parameters(), start, zip(*steps)):
            want = ((s0 * 0.9 + a * 0.1) * 0.9 + b * 0.1) * 0.9 + c * 0.1
            assert torch.allclose(p, want) and not torch.equal(p, c)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), live))
    with pytest.raises(ValueError, match="between 0 and 1"):
        train.WeightAverage(model, 1.0)
    model = torch.nn.Linear(64, 64)
    weight = model.weight.detach().clone()
    avg = train.WeightAverage(model, 0.995)
    for _ in range(2000):
        avg.update(model)  # weights kept as built: their average is them up to float32 rounding
    with avg.applied(model):
        assert torch.allclose(model.weight, weight, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
@pytest.mark.engine
def test_training_with_a_weight_average_saves_it_and_trains_as_without(tmp_path):
    """`--ema` saves the average (other weights than the run without it), records it, reproduces,
    and leaves the training itself alone: the same loss at every logged step."""
    def losses(log: Path) -> list[str]:  # "step 10/12 loss 5.1234 avg 5.4321"
        return [line.split(" lr ")[0].split(" ", 1)[1] for line in log.read_text().splitlines() if " loss " in line]

    steps = ["--steps", "12"]
    plain = _train(tmp_path / "a", *TINY, *steps, "--log", str(tmp_path / "a.log"))
    first = _train(tmp_path / "b", *TINY, *steps, "--ema", "0.5", "--log", str(tmp_path / "b.log"))
    assert first != plain and _train(tmp_path / "c", *TINY, *steps, "--ema", "0.5") == first
    assert losses(tmp_path / "a.log") == losses(tmp_path / "b.log") and len(losses(tmp_path / "a.log")) == 2
    assert json.loads((tmp_path / "b" / "training.json").read_text())["ema"] == 0.5
    assert "ema" not in json.loads((tmp_path / "a" / "training.json").read_text())


def test_training_refuses_a_decay_that_is_no_average(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "demo" / "train.py"), "--out", str(tmp_path), *TINY, "--ema", "1.5"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode != 0 and "--ema is a decay between 0 and 1" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "model.safetensors").exists()


@pytest.mark.engine
def test_training_says_when_the_model_cannot_hold_the_choice_circuit(tmp_path):
    tiny = [a for a in TINY if a != "--no-choice-circuit"]
    cmd = [sys.executable, str(ROOT / "scripts" / "demo" / "train.py"), "--out", str(tmp_path), *tiny]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode != 0
    assert "needs 4+ layers" in done.stderr and "pass --no-choice-circuit" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.engine
def test_training_keeps_the_choice_circuit_as_built_and_reproduces(tmp_path):
    """What the choice circuit reads and writes stays as built through training (train.py restores
    it after every step); everything else trains; and such a run reproduces too. (With `--ema`
    the saved average holds the kept weights up to float32 rounding: the weight-average test.)"""
    import torch
    from safetensors.torch import load_file
    from transformers import GlmConfig, GlmForCausalLM

    import train
    from glm_runtime.tokenizer import load_tokenizer

    digest = _train(tmp_path / "a", *SMALL_CHOICE, "--ema", "0")
    assert _train(tmp_path / "b", *SMALL_CHOICE, "--ema", "0") == digest
    trained = load_file(str(tmp_path / "a" / "model.safetensors"))
    tok = load_tokenizer(tmp_path / "a")
    torch.manual_seed(0)  # as train.py builds it
    model = GlmForCausalLM(GlmConfig.from_pretrained(tmp_path / "a"))
    train.copy_circuit(model, seed=0, ngram=3, gain=0.2)
    verbs, params = data.function_words()
    kept = dict(train.choice_circuit(model, tok, verbs=verbs, params=params))
    built = dict(model.named_parameters())
    assert "model.embed_tokens.weight" in kept and "model.layers.3.mlp.down_proj.weight" in kept
    for name, mask in kept.items():
        after = trained[name] if name in trained else trained["lm_head.weight"]
        assert torch.equal(after[mask], built[name].detach()[mask]), name
        if not mask.all():
            assert not torch.equal(after[~mask], built[name].detach()[~mask]), name


# the smallest run that holds the bag circuit too (4 key/value heads); ten steps: one calibration
SMALL_BAG = ["--samples", "1500", "--steps", "10", "--vocab", "2048", "--hidden", "256", "--layers", "4",
             "--heads", "8", "--kv-heads", "4", "--ffn", "64", "--tokens-per-batch", "2048", "--row", "1024",
             "--save-every", "100", "--bag-circuit"]


@pytest.mark.slow
@pytest.mark.engine
def test_training_keeps_the_bag_circuit_calibrates_its_query_and_reproduces(tmp_path):
    """With `--bag-circuit` what both circuits keep stays as built, the bag head's turn query is
    reset from the flag's level (not kept, not left as built), and the run reproduces."""
    import torch
    from safetensors.torch import load_file
    from transformers import GlmConfig, GlmForCausalLM

    import train
    from glm_runtime.tokenizer import load_tokenizer

    digest = _train(tmp_path / "a", *SMALL_BAG)
    assert _train(tmp_path / "b", *SMALL_BAG) == digest
    assert json.loads((tmp_path / "a" / "training.json").read_text())["bag_circuit"] is True
    trained = load_file(str(tmp_path / "a" / "model.safetensors"))
    tok = load_tokenizer(tmp_path / "a")
    torch.manual_seed(0)
    model = GlmForCausalLM(GlmConfig.from_pretrained(tmp_path / "a"))
    train.copy_circuit(model, seed=0, ngram=3, gain=0.2)
    verbs, params = data.function_words()
    kept = train.choice_circuit(model, tok, verbs=verbs, params=params)
    kept += train.bag_circuit(model, tok, verbs=verbs, params=params)
    built = dict(model.named_parameters())
    for name, mask in kept:
        after = trained[name] if name in trained else trained["lm_head.weight"]
        assert torch.equal(after[mask], built[name].detach()[mask]), name
    query = train.bag_dims(model, verbs, params)["query"]
    before, after = float(built["model.layers.2.self_attn.q_proj.bias"][query].detach()), float(
        trained["model.layers.2.self_attn.q_proj.bias"][query])
    assert before == 20.0 and after != before, (before, after)


# ---- the shipped checkpoint ------------------------------------------------------------------------

@pytest.mark.engine
def test_the_shipped_model_loads_with_the_real_engine():
    from glm_runtime.chat_format import detect_format
    from glm_runtime.checkpoint import param_count
    from glm_runtime.engine import load_engine
    from glm_runtime.tokenizer import CASE_MARK, GLM4_SPECIAL_TOKENS

    d = demo_model_dir()
    assert (d / "MODEL_CARD.md").is_file() and (d / "model.safetensors").stat().st_size < 30_000_000
    e = load_engine(d, quantize="auto", dtype="float32", device="cpu")
    assert 1_000_000 < param_count(e.config) < 20_000_000
    tok = e.tokenizer
    assert [tok.convert_tokens_to_ids(t) for t in GLM4_SPECIAL_TOKENS] == list(range(len(GLM4_SPECIAL_TOKENS)))
    official = json.loads((ROOT.parent / "shared" / "glm4" / "tokenizer_config.json").read_text())["chat_template"]
    assert tok.chat_template == official and detect_format(tok) == "glm4"
    assert set(e.stop_ids) == {tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")}
    # its tokenizer writes a capital as a mark and the small letter; a mark the model writes before
    # no letter (seen before a space in a failed function answer) is dropped, one at the end kept
    mark = tok.convert_tokens_to_ids(tok.tokenize("H")[0])
    assert e.decode(e.encode("is ") + [mark] + e.encode("help")) == "is Help" == e.decode(e.encode("is Help"))
    assert e.decode(e.encode('is "') + [mark] + e.encode(" 8349")) == 'is " 8349'
    assert e.decode(e.encode("is ") + [mark]) == "is " + CASE_MARK


@pytest.mark.engine
def test_selection_probe_asks_for_a_choice_between_the_two_declared_functions():
    # scripts/demo/probe_selection.py: the evidence of whether the weights choose between two
    # functions (earlier weights did not, these do; see MODEL_CARD.md) must come from prompts that
    # offer that choice
    import probe_selection
    from transformers import AutoModelForCausalLM

    from glm_runtime.tokenizer import load_tokenizer

    tok = load_tokenizer(demo_model_dir())
    cases = probe_selection.two_function_cases(tok, "eval", 12, seed=5)
    assert len(cases) == 12
    exs = [e for e in data.generate("function", 480, seed=5, split="eval")
           if sum(t.kind == "function" for t in e.tools) == 2]
    by_prompt = {tuple(c["ids"]): c for c in cases}
    from glm_runtime.chat_format import render_ids
    for ex in exs:
        c = by_prompt.pop(tuple(render_ids(ex.messages[:2], ex.tools, tok, add_generation_prompt=True)), None)
        if c is None:
            continue
        names = [t.name for t in ex.tools if t.kind == "function"]
        other = next(n for n in names if n != ex.expect["tool"])
        assert tok.decode([c["target"]]) == tok.tokenize(ex.expect["tool"])[0]  # the name's first token
        assert tok.decode([c["other"]]) == tok.tokenize(other)[0] != tok.decode([c["target"]])
        assert c["ids"][-1] == tok.convert_tokens_to_ids("<|assistant|>")
    assert not by_prompt  # every case is one of the held-out two-function conversations
    model = AutoModelForCausalLM.from_pretrained(str(demo_model_dir()))
    r = probe_selection.rates(model, cases)
    # the model names one of the two, so the probe reads a choice; and, with the choice circuit, the
    # right one (measured on 120 held-out cases: 98%, on these 12: 10; the weights before it: 44%)
    assert r["right"] + r["other"] >= 0.75
    assert r["right"] >= 0.75, r
    # the logit lens's last layer is the model's own output: where that names one of the two, the lens agrees
    lens = probe_selection.lens(model, cases)
    assert len(lens) == model.config.num_hidden_layers + 1
    assert lens[-1] >= r["right"] - 1e-9 and 1 - lens[-1] >= r["other"] - 1e-9  # shares of 12: float rounding


# ---- the agent loop, driven by the demo model --------------------------------------------------------

@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    import evaluate as demo_eval  # scripts/demo/evaluate.py
    from agent.decision import Budgets
    from glm_runtime.backends.local import LocalBackend
    from tools.builtin.cogview_testing import build_tiny_sd_pipeline

    work = tmp_path_factory.mktemp("demo-harness")
    backend = LocalBackend.from_model(str(demo_model_dir()), quantize="none", dtype="float32", device="cpu")
    web = demo_eval.LocalWeb()
    tools = demo_eval.Tools(work, web, build_tiny_sd_pipeline(work / "tiny-sd"))
    yield lambda ex: demo_eval.run_one(ex, backend, tools, Budgets(max_steps=6, max_new_tokens=160))
    tools.close()
    web.close()


def _held_out(category: str, n: int = 2) -> list[data.Example]:
    return data.generate(category, n, seed=7, split="eval")  # one English, one Chinese


# The shipped weights meet the 90% task-success bar in all six categories (see MODEL_CARD.md:
# python 90.0%, browser 91.0%, cogview 100%, function 97.5%, plain 90.5%, error 95.5% of 200
# held-out conversations each, tool names constrained as glm-agent does by default). The tests below
# run two held-out conversations per category (one English, one Chinese; for function and plain one
# test each, for browser and error too). All pass but the Chinese search ("搜一搜数字卫星"): these
# weights miscopy the topic 数字 in 9 of its 11 held-out conversations (half of browser's 18 failures),
# as the weights two before did, so it is marked xfail (strict): it fails until a model copies 数字.
# The plain ones are "Great, thank you!" (right in 6 of its 9 held-out conversations) and "拜拜"
# (always right); those these weights never get right ("Help", "在吗") are in the model card.


@pytest.mark.slow
@pytest.mark.engine
@pytest.mark.sandbox
def test_demo_model_chooses_python_and_the_loop_runs_its_code(harness):
    # with the built-ins only: the model's own choice of tool, from a held-out request
    exs = [e for e in data.generate("python", 12, seed=7, split="eval") if all(t.kind != "function" for t in e.tools)]
    for ex in exs[:2]:
        r = harness(ex)
        assert r["error"] is None, r
        assert r["calls"] and r["calls"][0][0] == "python", r  # its own decision: no forced tokens
        assert r["answer"].strip(), r


@pytest.mark.slow
@pytest.mark.engine
@pytest.mark.sandbox
def test_demo_model_computes_with_the_sandboxed_python_tool(harness):
    for ex in _held_out("python"):
        assert harness(ex)["ok"]


@pytest.mark.slow
@pytest.mark.engine
@pytest.mark.browser
@pytest.mark.parametrize("lang", ["en", pytest.param("zh", marks=pytest.mark.xfail(
    strict=True, reason="these weights miscopy the held-out topic 数字 (搜一搜数字卫星); see MODEL_CARD.md"))])
def test_demo_model_searches_opens_and_cites(harness, lang):
    ex = next(e for e in _held_out("browser") if e.lang == lang)
    assert harness(ex)["ok"]


@pytest.mark.slow
@pytest.mark.engine
@pytest.mark.image
def test_demo_model_draws_with_cogview_in_english(harness):
    for ex in _held_out("cogview"):
        assert harness(ex)["ok"]


@pytest.mark.slow
@pytest.mark.engine
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_demo_model_calls_a_user_function_from_a_tools_file(harness, lang):
    ex = next(e for e in _held_out("function") if e.lang == lang)
    assert harness(ex)["ok"]


@pytest.mark.slow
@pytest.mark.engine
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_demo_model_answers_a_greeting_without_tools(harness, lang):
    ex = next(e for e in _held_out("plain") if e.lang == lang)
    assert harness(ex)["ok"]


@pytest.mark.slow
@pytest.mark.engine
@pytest.mark.sandbox
@pytest.mark.parametrize("kind", ["python", "function"])
def test_demo_model_corrects_a_call_after_an_error_observation(harness, kind):
    exs = data.generate("error", 8, seed=7, split="eval")
    ex = next(e for e in exs if (e.expect["tool"] == "python") == (kind == "python"))
    assert harness(ex)["ok"]


@pytest.mark.slow
@pytest.mark.engine
@pytest.mark.sandbox
def test_glm_agent_run_model_demo(tmp_path):
    cmd = [sys.executable, "-m", "agent.cli", "run", "What is 17 * 23?", "--model", "demo", "--json",
           "--sessions-dir", str(tmp_path / "s")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env=os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    events = [json.loads(line) for line in out.stdout.splitlines()]
    calls = [e for e in events if e["type"] == "tool_call"]
    assert calls and calls[0]["name"] == "python"  # the model's choice, run in the sandboxed kernel
    assert [e for e in events if e["type"] == "tool_result"][0]["content"].strip() == "391"
    assert events[-1]["type"] == "final_answer" and "391" in events[-1]["text"]
