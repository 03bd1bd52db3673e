"""Train the demo model: a tokenizer of its own, then a small GlmForCausalLM, on synthetic conversations.

One command, deterministic given `--seed` (fixed thread count, deterministic algorithms, seeded
data order) on one kind of CPU: another instruction set (AMX, AVX-512, AVX2; see `cpu_kind`,
recorded in `training.json`) sums the products in another order and gives other weights. The
result is a checkpoint directory that `load_engine` reads like any GLM-4:

    python3 scripts/demo/train.py --out glm_runtime/demo            # the shipped model
    python3 scripts/demo/train.py --out /tmp/d --steps 20 --samples 400   # a quick check

Progress goes to stdout (and `--log`); the checkpoint is written every `--save-every` steps, so an
interrupted run leaves a usable model behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import data  # noqa: E402  (scripts/demo/data.py)
from glm_runtime.tokenizer import CASE_MARK, GLM4_SPECIAL_TOKENS  # noqa: E402

CHAT_TEMPLATE_SOURCE = ROOT.parent / "shared" / "glm4" / "tokenizer_config.json"
EOS = ("<|endoftext|>", "<|user|>", "<|observation|>")


def official_template() -> str:
    """GLM-4-9B-Chat's chat template, copied into the demo tokenizer (shipped there afterwards)."""
    shipped = ROOT / "glm_runtime" / "demo" / "tokenizer_config.json"
    for f in (CHAT_TEMPLATE_SOURCE, shipped):
        if f.is_file():
            return json.loads(f.read_text(encoding="utf-8"))["chat_template"]
    raise FileNotFoundError("no GLM-4 chat template: need ../shared/glm4/tokenizer_config.json")


# ---- tokenizer ----------------------------------------------------------------------------------

def _byte_tokenizer():
    """GLM-4's special tokens (ids 0-13), then the 256 byte symbols; no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(list(GLM4_SPECIAL_TOKENS) + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _bare_tokenizer(template: str):
    """Byte-level, no merges: enough to render conversations with the template."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=_byte_tokenizer(), additional_special_tokens=list(GLM4_SPECIAL_TOKENS))
    fast.chat_template = template
    return fast


def fixed_prose(template: str) -> list[str]:
    """The template's constant paragraphs (system preamble, each built-in's description, the
    function hint). They become single tokens, so the prompt of a tiny context stays short."""
    from glm_runtime.chat_format import render
    from glm_runtime.messages import Message, ToolSpec

    fn = ToolSpec("f", "d", {"type": "object", "properties": {}}, kind="function")
    text = render([Message("user", "x")], data.builtin_specs(data.BUILTINS) + [fn], tokenizer=_bare_tokenizer(template))
    system = text.split("<|system|>\n", 1)[1].split("<|user|>", 1)[0]
    # transformers renders templates with trim_blocks: one newline before each "## name"
    head, *sections = system.split("\n## ")
    pieces = [head.split("\n\n# ")[0]]
    for s in sections:
        name, _, body = s.partition("\n\n")
        if name in data.BUILTINS:
            pieces.append(body)
        else:
            pieces.append(body.rsplit("\n", 1)[1])  # the hint after the function's JSON
    return pieces


def added_pieces(template: str) -> list[str]:
    """The constant texts that become single added tokens: the template's prose and a function
    schema's constant parts."""
    return fixed_prose(template) + list(SCHEMA_PIECES)


def _save_tokenizer_files(tok, template: str, out: Path):
    from transformers import PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "model_max_length": 2048,
        "additional_special_tokens": list(GLM4_SPECIAL_TOKENS), "chat_template": template,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"),
                                   additional_special_tokens=list(GLM4_SPECIAL_TOKENS))


# The constant parts of a user function's JSON in the system prompt, each one token: the prompt of a
# function call is then mostly its names, not indentation. None of them occurs in what the model writes.
SCHEMA_PIECES = (
    '\n\n{\n    "name": "', '",\n    "description": "Return the ', " for the given ",
    '.",\n    "parameters": {\n        "type": "object",\n        "properties": {\n            "',
    '": {\n                "type": "integer"\n            }', '": {\n                "type": "string"\n            }',
    ',\n            "', '\n        },\n        "required": [\n            "', '"\n        ]\n    }\n}\n',
    "\n# 可用工具\n## ", "Current date: ",
)


# How text is split before BPE. "glm4": GLM-4's own pattern (a word takes the space before it, so
# "urban" is one token in "Look up urban castles" and another in search("urban castles")). "words":
# every space is a token of its own and a word takes no character before it, so a word has the same
# tokens wherever it stands, and each Chinese character stands alone (GLM-4's BPE merges across
# characters: the last character of 北极蜜蜂 becomes another token in 北极蜜蜂的 than in "北极蜜蜂").
# Numbers go in groups of up to three digits in both, so a value up to 999 is one token.
LETTER = r"(?:(?!\p{Han})\p{L})"  # a letter of a Latin-script (or any non-Han) word
SPLITS = {
    "glm4": None,  # glm_runtime.tokenizer.GLM4_PATTERN
    "words": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|\p{Han}|" + LETTER + r"+|\p{N}{1,3}|[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s",
    "letters": None,  # "words", with rare words spelled: letters_split, built from the corpus
}


def _trie_pattern(words: list[str]) -> str:
    """One regex alternation matching exactly `words`, as a trie: the regex engine tries a letter
    once per position instead of once per word."""
    import regex

    trie: dict = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def pattern(node: dict) -> str:
        alts = [regex.escape(ch) + pattern(sub) for ch, sub in sorted(node.items()) if ch]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{body})?" if "" in node else body

    return pattern(trie)


def known_words(texts: list[str], min_count: int, exclude=data.is_slot_word, case_fold: bool = False) -> list[str]:
    """The Latin-script words in at least `min_count` of `texts` (document frequency), less those
    `exclude` names: the words of the templates and tools. A made-up word (seen in a handful of
    conversations) or a held-out one is not among them, nor are the copied values of the pools
    `data.is_slot_word` names, which are spelled in training as they will be in evaluation.

    With `case_fold`, a word counts with its other cases ("Help" with "help"), and is kept when
    they reach `min_count` together and it alone a quarter of that, enough to train its token."""
    import regex

    counts: dict[str, int] = {}
    for t in texts:
        for w in set(regex.findall(LETTER + "+", t)):
            counts[w] = counts.get(w, 0) + 1
    if case_fold:  # each word that reaches a quarter alone counts with its other cases
        folded: dict[str, int] = {}
        for w, c in counts.items():
            folded[w.lower()] = folded.get(w.lower(), 0) + c
        counts = {w: folded[w.lower()] for w, c in counts.items() if c >= max(1, min_count // 4)}
    return sorted(w for w, c in counts.items() if c >= min_count and len(w) > 1 and not exclude(w))


def _case_normalizer_and_decoder():
    """The normalizer that writes each capital A-Z as `CASE_MARK` and its small letter, and the
    decoder that writes it back. Added tokens (the template's prose, the special tokens) are
    matched before the normalizer runs, so they keep their capitals."""
    import string

    from tokenizers import decoders, normalizers

    normalizer = normalizers.Sequence([normalizers.Replace(c, CASE_MARK + c.lower()) for c in string.ascii_uppercase])
    decoder = decoders.Sequence([decoders.ByteLevel()] + [decoders.Replace(CASE_MARK + c.lower(), c)
                                                          for c in string.ascii_uppercase])
    return normalizer, decoder


def letters_split(words: list[str]) -> str:
    """The `words` split, except that a Latin-script word not in `words` is spelled one letter per
    token, so every word the tokenizer was not built for (a made-up training word, a held-out
    topic, a user's name) is written from the same 52 symbols the model copies all through training."""
    known = r"(?<!\p{L})" + _trie_pattern(words) + r"(?!\p{L})"
    return SPLITS["words"].replace("|" + LETTER + "+|", f"|{known}|{LETTER}|", 1)


def build_tokenizer(texts: list[str], *, vocab_size: int, template: str, out: Path, kind: str = "bpe",
                    split: str = "glm4", min_word_count: int = 40, whole_words: bool = False,
                    skip_prose: bool = False, case_mark: bool = False):
    """The demo tokenizer: GLM-4's special tokens (ids 0-13), its chat template, the template's
    constant paragraphs as single tokens, and then either

    - `bytes`: the 256 byte symbols and nothing else. Every text is spelled from symbols the model
      saw in training, so a held-out name, number or Chinese word is copied from pieces it has
      written many times; or
    - `bpe`: a byte-level BPE of `vocab_size` trained on `texts`, split first by `SPLITS[split]`,
      or for `letters` by `letters_split` of the words in at least `min_word_count` texts.

    `whole_words` (with `letters`): the known words count their other cases too (`known_words`), and
    every one the BPE left in pieces becomes a token of its own. A 2,048-entry BPE spends its merges
    on the frequent text (the templates, Chinese bytes, numbers), so without it "Who", "Hi", "Thanks"
    and 205 other known words of the shipped run are written in letters or pieces, as a made-up word is.

    `skip_prose`: the BPE (and `known_words`) learn from the texts without the template's constant
    paragraphs, which become single tokens (on by default since the weights sha256 e4cf6ea9...).
    Learned with them, 108 of the previous weights' 2,064 tokens were pieces of the prose that no
    encoded text holds, so their embeddings never trained as inputs: 物 (from the cogview prose's
    人物) is one, and the held-out topic 植物 is spelled with it; 展 and 择, which those weights
    wrote in its place, are two more.

    `case_mark` (with `bpe`): every capital A-Z is written as `CASE_MARK`, a token of its own, and
    its small letter, so "Help" and "help" share their word tokens, as a Chinese word has no case
    to split it. Without it "Help" is spelled `H e l p` while "help" is a token.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from glm_runtime.tokenizer import GLM4_PATTERN

    added = added_pieces(template)
    if skip_prose:
        texts = [_without(t, added) for t in texts]
    if case_mark and kind != "bpe":
        raise ValueError("case_mark needs the bpe tokenizer")
    if kind == "bytes":
        tok = _byte_tokenizer()
    elif kind == "bpe":
        tok = Tokenizer(models.BPE())
        if case_mark:
            tok.normalizer, case_decoder = _case_normalizer_and_decoder()
        words: list[str] = []
        if split == "letters":  # the known words as the BPE will see them, marks and all
            seen = [tok.normalizer.normalize_str(t) for t in texts] if case_mark else texts
            words = known_words(seen, min_word_count, case_fold=whole_words)
            pattern = letters_split(words)
        else:
            pattern = SPLITS[split] or GLM4_PATTERN
        if case_mark:  # the mark stands alone, never merged into a word
            pattern = f"{CASE_MARK}|{pattern}"
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(GLM4_SPECIAL_TOKENS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer)
        tok.decoder = case_decoder if case_mark else decoders.ByteLevel()
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected bytes or bpe")
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in GLM4_SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(p, normalized=False) for p in added])
    if whole_words and kind == "bpe":
        # Matched only as a whole word (never inside "Whoever" or "get_id"), as the split isolates it.
        pieces = [w for w in words if len(tok.encode(w, add_special_tokens=False).ids) > 1]
        # With case_mark, matched after the normalizer: "Help" is the mark and the token "help".
        tok.add_tokens([AddedToken(w, single_word=True, normalized=case_mark) for w in pieces])
    return _save_tokenizer_files(tok, template, out)


def _without(text: str, pieces: list[str]) -> str:
    """`text` with each of `pieces` cut out (longest first), a newline in its place."""
    for p in sorted(pieces, key=len, reverse=True):
        text = text.replace(p, "\n")
    return text


_ENCODING: tuple = ()  # (examples, tokenizer, stop ids), shared with forked workers by `encode_all`


def _encode_range(bounds: tuple[int, int]) -> list[tuple[list[int], list[int]]]:
    examples, tok, stop = _ENCODING
    return [data.encode(ex, tok, stop) for ex in examples[bounds[0]:bounds[1]]]


def encode_all(examples: list, tok, stop: dict[str, int], workers: int,
               min_parallel: int = 2000) -> list[tuple[list[int], list[int]]]:
    """`data.encode` of every example, in order, split over `workers` forked processes (the same
    lists as one process makes: each conversation is encoded on its own). Fewer than
    `min_parallel` examples are encoded here: a small run is not worth the forks."""
    global _ENCODING
    import multiprocessing

    if workers < 2 or len(examples) < min_parallel or "fork" not in multiprocessing.get_all_start_methods():
        return [data.encode(ex, tok, stop) for ex in examples]
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the tokenizer is built; forked workers need no threads
    _ENCODING = (examples, tok, stop)
    step = -(-len(examples) // workers)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_encode_range, [(i, i + step) for i in range(0, len(examples), step)])
    finally:
        _ENCODING = ()
    return [e for part in parts for e in part]


# ---- model ----------------------------------------------------------------------------------------

def model_config(vocab: int, eos: list[int], args) -> dict:
    head = args.hidden // args.heads
    return {
        "architectures": ["GlmForCausalLM"], "model_type": "glm", "attention_bias": True,
        "attention_dropout": 0.0, "eos_token_id": eos, "pad_token_id": eos[0], "head_dim": head,
        "hidden_act": "silu", "hidden_size": args.hidden, "intermediate_size": args.ffn,
        "initializer_range": 0.02, "max_position_embeddings": args.context, "num_attention_heads": args.heads,
        "num_hidden_layers": args.layers, "num_key_value_heads": args.kv_heads, "partial_rotary_factor": args.rotary,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": args.tie, "torch_dtype": "float32",
        "vocab_size": vocab,
    }


def copy_circuit(model, *, seed: int = 0, match: float = 10.0, gain: float = 0.05,
                 ngram: int = 1) -> list[str]:
    """Start the model with a working copy circuit; returns the names of the parameters it set.

    Nearly everything the demo model must do is copying: numbers from the request into the code, a
    function's name from the system prompt into the call, the printed value into the answer. A
    transformer copies with an induction circuit: a previous-token head (layer 0) writes "the token
    before me" at every position, and an induction head (layer 1) at token X attends to the place
    whose previous token was X and writes out the token found there. From random weights a model
    this small sits on a long plateau before the two form together, longer than this CPU's hour
    allows (measured: 0% held-out exact match in every copying category after 7.4M tokens). So
    they are built in, as weights of the unchanged GLM architecture, and training refines them and
    learns the rest:

    - the embedding uses the first 3/4 of the hidden dimensions (the token's subspace); the last
      quarter is kept for the previous token's identity;
    - every attention output and MLP projection starts at zero (silent residual branches), but for
      the heads below;
    - layer 0, head 0: its query and key are constants (their biases, rotated by RoPE) whose dot
      product is largest one position back; its value reads the token subspace and its output
      writes into the previous-token subspace;
    - layer 1, the first query head of each key/value head: the query reads the current token, the
      key reads the previous-token subspace (both in RoPE's unrotated dimensions, so the match does
      not depend on distance), through projections that make them agree when the tokens are the
      same; the value reads the token subspace and the output writes it back there, so with tied
      embeddings the logits favour the token that followed the earlier occurrence.

    With `ngram=2` the induction heads match two tokens of context, not one: layer 0's head 1 (it
    shares head 0's key and value) looks two positions back and writes that token into the second
    half of the previous-token subspace, and each induction head's unrotated dimensions are split in
    two halves: one matches the current token against the key's previous token, the other the
    current position's previous token against the key's token two back. A position where both agree
    scores twice as high as one where only the last token does, so after a token that occurs often
    (a space of its own, a common word) the head still finds the one place that continues the text
    being copied; where nothing matches two tokens, the one-token match still decides.

    With `ngram=3` layer 0 also writes the token three back (head `groups`, the first of key/value
    head 1, set up as head 0), each token back in a third of the subspace, and half of the induction
    heads (those of the upper key/value heads) match three tokens in three groups of dimensions;
    the other half keep the two-token match. Spelled words are where this counts: letter pairs recur
    ("nocturnAL whALes"), so a two-token match jumps to the wrong word, a three-token one does
    not. Measured on the untrained model copying random spans: over a 26-token alphabet 79% with
    two tokens, 87% with three; over word tokens each followed by a separator, 58% with two, 43%
    with three (the thirds are narrower), 25% if every head matched three.

    Everything is seeded (`seed`), so a run stays reproducible.
    """
    import torch

    cfg = model.config
    d, hd = cfg.hidden_size, cfg.head_dim
    rot = int(hd * (cfg.rope_parameters or {}).get("partial_rotary_factor", 1.0))
    nkv = cfg.num_key_value_heads
    groups = cfg.num_attention_heads // nkv
    dp = d // 4
    dt, npass = d - dp, hd - rot
    if cfg.num_hidden_layers < 2 or npass < 4 or rot < 8 or not cfg.tie_word_embeddings:
        raise ValueError("the copy circuit needs 2+ layers, tied embeddings and 8+ rotary and 4+ unrotated dims per head")
    if ngram not in (1, 2, 3) or (ngram >= 2 and (groups < 2 or npass < 4 * ngram)) or (ngram == 3 and nkv < 2):
        raise ValueError("ngram is 1, 2 or 3; n > 1 needs 2+ query heads per key/value head and 4n+ unrotated "
                         "dims, 3 also 2+ key/value heads")
    gen = torch.Generator().manual_seed(seed)

    def matched(C, B, A):
        """The query rows that read a token as key rows `C` read it once layer 0 wrote it (B @ A),
        each scaled to its key row's norm."""
        M = C @ B @ A
        return M / M.norm(dim=1, keepdim=True) * C.norm(dim=1, keepdim=True)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    inv_freq = model.model.rotary_emb.inv_freq.float()
    a0, a1 = model.model.layers[0].self_attn, model.model.layers[1].self_attn
    with torch.no_grad():
        model.model.embed_tokens.weight[:, dt:] = 0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        # layer 0, head 0 (key/value head 0): the previous token
        for proj in (a0.q_proj, a0.k_proj):
            proj.weight[:hd] = 0.0
            proj.bias[:hd] = 0.0
        for i in range(4):  # the four fastest-turning RoPE pairs: a sharp peak one position back
            theta = float(inv_freq[i])
            a0.k_proj.bias[2 * i] = 1.0
            a0.q_proj.bias[2 * i] = 66.0 * math.cos(theta)
            a0.q_proj.bias[2 * i + 1] = -66.0 * math.sin(theta)
        A = randn(hd, dt) / dt ** 0.5
        a0.v_proj.weight[:hd] = 0.0
        a0.v_proj.weight[:hd, :dt] = A
        a0.v_proj.bias[:hd] = 0.0
        # the previous-token subspace holds one part per token back: part j (j = 0..ngram-1) the
        # token j + 1 positions back, written by layer 0's query head `back_head[j]`
        part = dp // ngram
        B = randn(part, hd) / hd ** 0.5 * 0.02
        back_head = [0, 1, groups][:ngram]  # head `groups` is the first of key/value head 1
        if ngram == 3:  # key/value head 1 as head 0: the constant key, the token subspace as value
            kv1 = slice(hd, 2 * hd)
            a0.k_proj.weight[kv1] = 0.0
            a0.k_proj.bias[kv1] = a0.k_proj.bias[:hd]
            a0.v_proj.weight[kv1] = a0.v_proj.weight[:hd]
            a0.v_proj.bias[kv1] = 0.0
        for j, h in enumerate(back_head):
            a0.o_proj.weight[dt + j * part: dt + (j + 1) * part, h * hd: (h + 1) * hd] = B
            if j:
                a0.q_proj.weight[h * hd: (h + 1) * hd] = 0.0
                a0.q_proj.bias[h * hd: (h + 1) * hd] = 0.0
                for i in range(4):
                    theta = (j + 1) * float(inv_freq[i])
                    a0.q_proj.bias[h * hd + 2 * i] = 66.0 * math.cos(theta)
                    a0.q_proj.bias[h * hd + 2 * i + 1] = -66.0 * math.sin(theta)
        # layer 1: one induction head per key/value head
        rms = float(model.model.embed_tokens.weight.pow(2).mean(1).mean().sqrt())
        for c in range(nkv):
            kv, h = slice(c * hd, (c + 1) * hd), c * groups
            q = slice(h * hd, (h + 1) * hd)
            for proj, rows in ((a1.k_proj, kv), (a1.q_proj, q), (a1.v_proj, kv)):
                proj.weight[rows] = 0.0
                proj.bias[rows] = 0.0
            # the unrotated dimensions in `ngram` groups: group j matches the token j positions
            # back from the query (j = 0: the current token) against the key's token j + 1 back
            k0, q0 = c * hd + rot, h * hd + rot
            n = ngram if ngram < 3 or c >= nkv // 2 else 2
            cuts = [k * npass // n for k in range(n + 1)]
            for j in range(n):
                rows, cols = slice(cuts[j], cuts[j + 1]), slice(dt + j * part, dt + (j + 1) * part)
                Cj = randn(cuts[j + 1] - cuts[j], part) / part ** 0.5
                a1.k_proj.weight[k0 + rows.start: k0 + rows.stop, cols] = Cj
                if j == 0:  # the current token, read from the token subspace
                    a1.q_proj.weight[q0 + rows.start: q0 + rows.stop, :dt] = match * matched(Cj, B, A)
                else:
                    # the token j back, read where layer 0 wrote it (part j - 1) with the key's
                    # matrix, scaled as group 0 is (layer 1's norm divides the residual by its RMS,
                    # the embeddings' RMS: the query reads B @ A @ x / rms where group 0 reads x)
                    scale = rms * Cj.norm(dim=1, keepdim=True) / (Cj @ B @ A).norm(dim=1, keepdim=True)
                    prev = slice(dt + (j - 1) * part, dt + j * part)
                    a1.q_proj.weight[q0 + rows.start: q0 + rows.stop, prev] = match * scale * Cj
            G = torch.linalg.qr(randn(dt, hd))[0].T  # hd orthonormal rows in the token subspace
            a1.v_proj.weight[kv, :dt] = G
            a1.o_proj.weight[:dt, q] = gain * G.T
    return [f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "k_proj", "v_proj", "o_proj")]


def _fixed_masks():
    """What a built-in circuit keeps: per parameter name, a mask of the entries that stay as built,
    and the function that marks them (`keep(name, param, index)`)."""
    import torch

    fixed: dict[str, Any] = {}

    def keep(name: str, param, index) -> None:
        mask = fixed.setdefault(name, torch.zeros_like(param, dtype=torch.bool))
        mask[index] = True

    return fixed, keep


def _reserve(model, dims: slice, keep) -> None:
    """Make the residual dimensions `dims` a circuit's own: zero and kept in the embeddings and in
    every attention output and MLP projection (so only the circuit writes them), and not read by
    layers 0-1, the copy circuit's (from the start; training may). Call under `torch.no_grad()`."""
    emb = model.model.embed_tokens.weight
    emb[:, dims] = 0.0
    keep("model.embed_tokens.weight", emb, (slice(None), dims))
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.o_proj.weight[dims] = 0.0
        layer.mlp.down_proj.weight[dims] = 0.0
        keep(f"model.layers.{i}.self_attn.o_proj.weight", layer.self_attn.o_proj.weight, dims)
        keep(f"model.layers.{i}.mlp.down_proj.weight", layer.mlp.down_proj.weight, dims)
        if i < 2:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.weight[:, dims] = 0.0


def _choice_base(cfg, verbs: list[str], params: list[str]) -> int:
    """The first residual dimension of the choice circuit's codes (they end where the token subspace does)."""
    return cfg.hidden_size - cfg.hidden_size // 4 - (2 * len(params) + 2 * len(verbs) + 2)


def choice_circuit(model, tok, *, verbs: list[str], params: list[str]) -> list[tuple[str, Any]]:
    """Start the model able to choose between declared user functions; returns what stays fixed.

    With two functions declared, the call's first token must be the name of the one whose parameter
    the request names ("the delay for batch no 7364"). Choosing takes three hops: the request's
    parameter into the position that writes the call, each declared parameter tagged with the
    function it belongs to (whose name is 10-40 tokens before it), and a match of the two. Trained
    from random weights the model never found them: after 2,000 steps it chose at chance on its own
    training conversations, and weighting that token's loss 20x, or fine-tuning on two-function
    conversations alone, left it there (MODEL_CARD.md). So, like the copy circuit (which must be
    built first), the hops are set in the weights of the unchanged architecture, in free heads and
    in 58 dimensions of the residual stream (taken from the token subspace) that only this circuit
    writes:

    - codes in the embeddings: each parameter name's token gets a one-hot code (Pc), each name
      verb's token (`get`, `fetch`, ...: the first token of every function name) another (Vc), the
      role tokens `<|user|>`, `<|assistant|>`, `<|observation|>` a flag (Zf), `<|assistant|>` one
      of its own (Af);
    - layer 0, query head 4 (key/value head 2): every position attends to the nearest verb or role
      token (its key: the verb codes and the role flag; RoPE's second-slowest pair favours the
      nearer) and writes that verb's code into R. A parameter of a declared function thus carries
      its function's verb; a parameter in the request, whose nearest such token is `<|user|>`, none;
    - layer 2, query head 2 (key/value head 1): at `<|assistant|>` (its query reads Af), attends to
      the nearest parameter tokens that carry no verb (the request's, or a call's being corrected)
      and writes their codes into S;
    - layer 3, query head 0 (key/value head 0): S against each position's parameter code, plus a
      bonus where a verb was written, so it finds the declared function's parameter the request
      names, and writes that position's verb (R) into the verb codes, which the tied output
      projection turns into the verb token's logit.

    Training first undid it: after 300 steps the layer-2 head, whose query then read the
    `<|assistant|>` embedding, had moved elsewhere and the choice was at chance again. So what the
    circuit reads and writes stays as built (the returned (parameter name, mask) pairs; `main`
    restores them after every step): the code dimensions of the embeddings and of the three heads'
    norms, the three heads' queries, keys and values, and every write into the code dimensions,
    which only the three heads make. The rest of the model reads the code dimensions freely, and
    the final norm (trained) decides how much the circuit's output counts.

    Untrained, on held-out two-function prompts whose names begin with different tokens, the
    expected verb is the most likely next token in most cases (`tests/test_demo.py`). Two functions
    that share every parameter, or whose names share their first token, it does not tell apart.
    Only the given verbs and parameter names get codes: the demo's generator draws every function's
    name and parameters from them (`data.function_words`).
    """
    import torch

    cfg = model.config
    d, hd = cfg.hidden_size, cfg.head_dim
    dt = d - d // 4
    if cfg.num_hidden_layers < 4 or cfg.num_key_value_heads < 3 or cfg.num_attention_heads // cfg.num_key_value_heads < 2:
        raise ValueError("the choice circuit needs 4+ layers, 3+ key/value heads and 2+ query heads per key/value head")

    def single(word: str) -> int:
        pieces = tok.tokenize(word)
        if len(pieces) != 1:
            raise ValueError(f"the choice circuit needs {word!r} to be one token, not {pieces}")
        return tok.convert_tokens_to_ids(pieces[0])

    verb_ids, param_ids = [single(v) for v in verbs], [single(p) for p in params]
    if len(set(verb_ids + param_ids)) != len(verbs) + len(params):
        raise ValueError("the choice circuit needs distinct verbs and parameter words")
    roles = [tok.convert_tokens_to_ids(t) for t in ("<|user|>", "<|assistant|>", "<|observation|>")]
    nv, npar = len(verb_ids), len(param_ids)
    base = _choice_base(cfg, verbs, params)
    Pc, Vc = slice(base, base + npar), slice(base + npar, base + npar + nv)
    Zf, Af = Vc.stop, Vc.stop + 1
    R, S = slice(Af + 1, Af + 1 + nv), slice(Af + 1 + nv, dt)
    codes = slice(base, dt)
    emb, layers = model.model.embed_tokens.weight, model.model.layers
    a0, a2, a3 = layers[0].self_attn, layers[2].self_attn, layers[3].self_attn
    fixed, keep = _fixed_masks()

    def head(layer: int, qh: int, kvh: int) -> tuple[int, int]:
        """Clear (and keep) query head `qh` and key/value head `kvh` of `layer`: their first rows (the
        query head's are also its columns of the output projection)."""
        att = layers[layer].self_attn
        q, kv = slice(qh * hd, (qh + 1) * hd), slice(kvh * hd, (kvh + 1) * hd)
        for proj, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            for kind in ("weight", "bias"):
                getattr(getattr(att, proj), kind)[rows] = 0.0
                keep(f"model.layers.{layer}.self_attn.{proj}.{kind}", getattr(getattr(att, proj), kind), rows)
        keep(f"model.layers.{layer}.input_layernorm.weight", layers[layer].input_layernorm.weight, codes)
        return q.start, kv.start

    # Magnitudes are set for the normalized residual each layer reads: an embedding code reads
    # about 11 at layer 0 and about 2 at layers 2-3, where the copy circuit's outputs have joined it.
    with torch.no_grad():
        _reserve(model, codes, keep)
        m = float(emb[:, :base].norm(dim=1).mean())
        for j, t in enumerate(param_ids):
            emb[t, Pc.start + j] = m
        for j, t in enumerate(verb_ids):
            emb[t, Vc.start + j] = m
        for t in roles:
            emb[t, Zf] = m
        emb[roles[1], Af] = m
        # layer 0: the nearest verb or role token's verb code -> R
        q0, k0 = head(0, 4, 2)
        a0.k_proj.weight[k0 + 8, Vc] = 2.5
        a0.k_proj.weight[k0 + 8, Zf] = 2.5
        a0.q_proj.bias[q0 + 8] = 1.0
        a0.k_proj.bias[k0 + 4] = 1.0  # RoPE pair 2 (0.01 rad per position): nearer scores higher
        a0.q_proj.bias[q0 + 4] = 200.0
        a0.v_proj.weight[k0: k0 + nv, Vc] = torch.eye(nv)
        a0.o_proj.weight[R, q0: q0 + nv] = torch.eye(nv) * m / 11.3
        # layer 2: at <|assistant|>, the nearest parameter codes without a verb -> S
        q0, k0 = head(2, 2, 1)
        a2.k_proj.weight[k0 + 8, Pc] = 1.0
        a2.k_proj.weight[k0 + 8, R] = -2.0
        a2.q_proj.weight[q0 + 8, Af] = 20.0
        a2.k_proj.bias[k0 + 4] = 1.0
        a2.q_proj.weight[q0 + 4, Af] = 50.0
        a2.v_proj.weight[k0: k0 + npar, Pc] = torch.eye(npar)
        a2.o_proj.weight[S, q0: q0 + npar] = torch.eye(npar) * m / 2
        # layer 3: S against the parameter codes, a bonus where a verb was written; R -> the verb codes
        q0, k0 = head(3, 0, 0)
        a3.q_proj.weight[q0 + 8: q0 + 8 + npar, S] = torch.eye(npar) * 20.0
        a3.k_proj.weight[k0 + 8: k0 + 8 + npar, Pc] = torch.eye(npar)
        a3.q_proj.weight[q0 + 24, Af] = 12.0
        a3.k_proj.weight[k0 + 24, R] = 1.0
        a3.v_proj.weight[k0: k0 + nv, R] = torch.eye(nv)
        a3.o_proj.weight[Vc, q0: q0 + nv] = torch.eye(nv)
    return sorted(fixed.items())


def bag_circuit(model, tok, *, verbs: list[str], params: list[str], turn: float = 20.0,
                recency: float = 100.0) -> list[tuple[str, Any]]:
    """Give the model a head that reads the user's request as a bag of its tokens, and its script;
    returns what stays fixed.

    A greeting's reply is chosen by the request's words, wherever they stand ("Thank you." is a
    thanks though "you." ends an introduction), but the trained weights answered held-out greetings
    by their last few tokens, the ones the copy circuit's heads look at (MODEL_CARD.md). This head
    looks at every token of the latest request alike. The circuit fixes where it looks; training
    decides what it carries. Built after the choice circuit (it reuses that circuit's layer-0 head
    and role flag), in six dimensions taken from the token subspace below the choice codes:

    - `<|user|>`'s embedding gets a flag (Uf), and layer 0's nearest-verb-or-role head (query head
      4) carries it into a turn flag (U): a token whose nearest role token is `<|user|>` is in a
      user turn;
    - layer 2, query head 6 (key/value head 3): a constant query against U, less the role flag (not
      the role tokens themselves), plus a recency term (RoPE's second-slowest pair: nearly flat
      over a request, a turn 100 tokens back scores about 8 lower), so every position attends to
      the latest user turn's tokens. Its value and output start as GLM's initializer leaves them
      (the output at zero) and train;
    - the request's script: each token with a Latin letter or the case mark gets an embedding
      flag (Lf), each token with another character or byte outside ASCII (a piece of a Chinese
      character) another (Cf), and
      the head's first two value dimensions carry them into two dimensions (L, C): the share of
      each script among the request's tokens. The trained weights answered one-word English
      greetings ("Help", "Hello") in Chinese.

    What stays fixed: the six dimensions in the embeddings and in every write (only these heads
    write U, L and C), the norms' weights there where they are read, the layer-0 head's new value
    row and output column, and the layer-2 head's key, query (but its turn term) and script values
    and outputs (but their gains, which train). The turn term is not kept but set by
    `calibrate_bag` every ten steps. Query head 7 shares the key and values; its query trains.
    `turn` and `recency` scale the query before attention's 1/sqrt(head_dim).

    In the second turn of a conversation whose first reply is short (three tokens), the attention
    splits about evenly between the two requests: the nearest-role head cannot tell a role two
    tokens back from one five back. The demo trains on single-turn conversations only.
    """
    import torch

    cfg = model.config
    hd = cfg.head_dim
    if cfg.num_hidden_layers < 4 or cfg.num_key_value_heads < 4 or cfg.num_attention_heads // cfg.num_key_value_heads < 2:
        raise ValueError("the bag circuit needs 4+ layers, 4+ key/value heads and 2+ query heads per key/value head")
    nv = len(verbs)
    at = bag_dims(model, verbs, params)
    Lf, Cf, L, C, Uf, U, Zf = (at[k] for k in ("Lf", "Cf", "L", "C", "Uf", "U", "Zf"))
    flags = slice(Lf, U + 1)
    user = tok.convert_tokens_to_ids("<|user|>")
    added = set(tok.get_added_vocab().values())
    texts = {i: tok.decode([i]) for i in range(len(tok)) if i not in added}
    # a case mark comes before a Latin capital only: it counts as Latin
    latin = [i for i, t in texts.items() if any("a" <= ch.lower() <= "z" or ch == CASE_MARK for ch in t)]
    cjk = [i for i, t in texts.items() if any(ord(ch) > 127 and ch != CASE_MARK for ch in t)]
    emb, layers = model.model.embed_tokens.weight, model.model.layers
    a0, a2 = layers[0].self_attn, layers[2].self_attn
    fixed, keep = _fixed_masks()

    with torch.no_grad():
        _reserve(model, flags, keep)
        m = float(emb[:, :Lf].norm(dim=1).mean())
        emb[user, Uf] = m
        emb[latin, Lf] = m
        emb[cjk, Cf] = m
        # layer 0: the choice circuit's head 4 (key/value head 2) carries Uf from the nearest role token
        q0, k0 = 4 * hd, 2 * hd
        a0.v_proj.weight[k0 + nv] = 0.0
        a0.v_proj.weight[k0 + nv, Uf] = 1.0
        a0.o_proj.weight[:, q0 + nv] = 0.0
        a0.o_proj.weight[U, q0 + nv] = m / 11.3
        keep("model.layers.0.self_attn.v_proj.weight", a0.v_proj.weight, k0 + nv)
        keep("model.layers.0.self_attn.o_proj.weight", a0.o_proj.weight, (slice(None), q0 + nv))
        keep("model.layers.0.input_layernorm.weight", layers[0].input_layernorm.weight, flags)
        # layer 2, query head 6 / key/value head 3: every position looks at the latest user turn
        q, kv = slice(at["script"], at["script"] + hd), slice(3 * hd, 4 * hd)
        for proj, rows in (("q_proj", q), ("k_proj", kv)):
            for kind in ("weight", "bias"):
                getattr(getattr(a2, proj), kind)[rows] = 0.0
                keep(f"model.layers.2.self_attn.{proj}.{kind}", getattr(getattr(a2, proj), kind), rows)
        a2.v_proj.weight[kv, flags] = 0.0
        keep("model.layers.2.input_layernorm.weight", layers[2].input_layernorm.weight, flags)
        q0, k0 = q.start, kv.start
        for j, (flag, share) in enumerate(((Lf, L), (Cf, C))):  # the script shares, fixed
            for kind in ("weight", "bias"):
                getattr(a2.v_proj, kind)[k0 + j] = 0.0
                keep(f"model.layers.2.self_attn.v_proj.{kind}", getattr(a2.v_proj, kind), k0 + j)
            a2.v_proj.weight[k0 + j, flag] = 1.0
            a2.o_proj.weight[:, q0 + j] = 0.0
            keep("model.layers.2.self_attn.o_proj.weight", a2.o_proj.weight, (slice(None), q0 + j))
            fixed["model.layers.2.self_attn.o_proj.weight"][share, q0 + j] = False  # its gain trains
            a2.o_proj.weight[share, q0 + j] = m / 2
        a2.k_proj.weight[k0 + 8, U] = 1.0
        a2.k_proj.weight[k0 + 8, Zf] = -1.0  # not the role tokens themselves
        a2.q_proj.bias[q0 + 8] = turn
        a2.k_proj.bias[k0 + 4] = 1.0  # RoPE pair 2 (0.01 rad per position): nearer scores higher
        a2.q_proj.bias[q0 + 4] = recency
        fixed["model.layers.2.self_attn.q_proj.bias"][at["query"]] = False  # set by calibrate_bag
    return sorted(fixed.items())


def bag_dims(model, verbs: list[str], params: list[str]) -> dict[str, int]:
    """Where `bag_circuit` puts things: its six residual dimensions (Lf, Cf, L, C, Uf, U, right below
    the choice codes), the choice circuit's role flag it reads (Zf), and in layer 2's q_proj the
    bag head's first row (script) and its turn query (query, a bias index)."""
    cfg = model.config
    base = _choice_base(cfg, verbs, params)
    at = dict(zip(("Lf", "Cf", "L", "C", "Uf", "U"), range(base - 6, base)))
    return at | {"Zf": base + len(params) + len(verbs), "script": 6 * cfg.head_dim, "query": 6 * cfg.head_dim + 8}


def bag_probes(encoded, assistant: int, user: int, count: int = 48) -> list[tuple[list[int], int, int]]:
    """The first `count` conversations cut at their first `<|assistant|>`, with their request's span."""
    probes = []
    for ids, _ in encoded[:count]:
        end = ids.index(assistant)
        start = max(k for k in range(end) if ids[k] == user) + 1
        probes.append((ids[: end + 1], start, end))
    return probes


def turn_level(model, probes, U: int) -> float:
    """The mean of the turn flag over the probes' request tokens, as layer 2's attention reads it."""
    import torch

    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for ids, start, end in probes:
            out = model.model(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False)
            normed = model.model.layers[2].input_layernorm(out.hidden_states[2][0].float())
            total += float(normed[start:end, U].sum())
            n += end - start
    model.train(was_training)
    return total / n


def calibrate_bag(model, probes, dims: dict[str, int], target: float) -> float:
    """Set the bag head's turn query so that query x flag stays `target`; returns the query.

    Layer 2 reads the turn flag after its norm, which divides by the whole residual. In a
    plain-only run of 400 steps the flag layer 0 writes fell 8x and the residual layer 2 divides
    by grew 14x, and with the query kept as built the head put 19% of its attention on the request
    (98% before training). Set from the flag's level every ten steps (48 training prompts), the
    query rose from 20 to about 3,500 and the head kept 96% on the request after 900 steps."""
    import torch

    level = turn_level(model, probes, dims["U"])
    query = target / max(level, 1e-6)
    with torch.no_grad():
        model.model.layers[2].self_attn.q_proj.bias[dims["query"]] = query
    return query


def batches(encoded: list[tuple[list[int], list[int]]], tokens_per_batch: int, row: int, rng: random.Random):
    """One epoch of batches: conversations in a seeded random order, packed into rows of `row` tokens.

    Packing mixes every category into every batch (batches of similar-length conversations are
    one category each, and the model then swings from one pattern to the next) and wastes no
    compute on padding. Positions restart at each conversation, as at inference.
    """
    order = list(range(len(encoded)))
    rng.shuffle(order)
    rows: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i in order:
        n = len(encoded[i][0])
        if cur and used + n > row:
            rows.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += n
    if cur:
        rows.append(cur)
    per = max(1, tokens_per_batch // row)
    return [rows[k: k + per] for k in range(0, len(rows), per)][::-1]


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      segments=None, **kwargs):
    """Causal attention inside each packed conversation only (`segments`: per row, its (start, end)
    spans), registered as the attention of training (`use_segment_attention`).

    The same math as the mask transformers builds for packed rows, without the row-long mask: a row
    of 2048 tokens holding conversations of 300 costs 300² per conversation, not 2048².
    Without `segments` (a single conversation) it is plain causal attention.
    """
    import torch
    import torch.nn.functional as F

    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # transformers' repeat_kv: each key/value head serves `groups` query heads in a row
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    if segments is None:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=query.shape[2] > 1, scale=scaling)
        return out.transpose(1, 2).contiguous(), None
    # Split, not sliced: the backward of a slice writes its gradient into a zero tensor of the whole
    # input, once per conversation per layer (a fifth of a step's time); a split's backward
    # concatenates the pieces once. The same views, so the same values and gradients, bit for bit.
    rows = []
    for qkv, spans in zip(zip(query.split(1), key.split(1), value.split(1)), segments):
        sizes = [b - a for a, b in spans]  # the spans cover the row, in order
        parts = zip(*(t.split(sizes, dim=2) for t in qkv))
        rows.append(torch.cat([F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling)
                               for q, k, v in parts], dim=2))
    return torch.cat(rows, 0).transpose(1, 2).contiguous(), None


def use_segment_attention(model) -> None:
    """Switch `model` to `segment_attention` (no mask is built: each conversation is its own span)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register("demo_segments", segment_attention)
    AttentionMaskInterface.register("demo_segments", lambda *a, **k: None)
    model.set_attn_implementation("demo_segments")


def collate(encoded, rows: list[list[int]], pad: int):
    import torch

    n = max(sum(len(encoded[i][0]) for i in r) for r in rows)
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    labels = torch.full((len(rows), n), -100, dtype=torch.long)
    pos = torch.zeros((len(rows), n), dtype=torch.long)
    segments = []
    for r, members in enumerate(rows):
        at, spans = 0, []
        for i in members:
            a, b = encoded[i]
            ids[r, at: at + len(a)] = torch.tensor(a)
            labels[r, at: at + len(b)] = torch.tensor(b)
            pos[r, at: at + len(a)] = torch.arange(len(a))
            spans.append((at, at + len(a)))
            at += len(a)
        if at < n:
            spans.append((at, n))  # the padding, a span of its own
        segments.append(spans)
    return ids, labels, pos, segments


def trained_loss(model, ids, labels, pos, segments, weights=None):
    """The mean next-token cross-entropy over the trained positions, with the output projection run
    only there: most of a row (78%) is prompt and observations, which carry no loss. The same
    value and gradients as `model(..., labels=labels).loss`, in another order of summation.
    `weights` (the shape of `labels`, from `choice_weights`) makes it a weighted mean."""
    import torch

    hidden = model.model(input_ids=ids, position_ids=pos, segments=segments, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    scored = targets != -100
    logits = model.lm_head(hidden[:, :-1][scored])
    if weights is None:
        return torch.nn.functional.cross_entropy(logits.float(), targets[scored])
    losses = torch.nn.functional.cross_entropy(logits.float(), targets[scored], reduction="none")
    w = weights[:, 1:][scored]
    return (losses * w).sum() / w.sum()


def choice_positions(ids: list[int], labels: list[int], assistant: int) -> list[int]:
    """Where each trained assistant turn writes its first token: the tool it calls (a name's first
    token), or the newline that starts an answer. One token per turn among dozens, so its loss
    weighs little unless weighted."""
    return [k + 1 for k in range(len(ids) - 1) if ids[k] == assistant and labels[k + 1] != -100]


def choice_weights(encoded, rows: list[list[int]], positions: list[list[int]], weight: float, shape):
    """Loss weights for a `collate`d batch: `weight` at each conversation's `positions`, 1 elsewhere."""
    import torch

    w = torch.ones(shape)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            for k in positions[i]:
                w[r, at + k] = weight
            at += len(encoded[i][0])
    return w


def held_out_exact(model, tok, stop: dict[str, int], count: int, seed: int = 1) -> dict[str, float]:
    """Per category, the share of `count` held-out conversations whose every trained assistant
    turn the model predicts exactly, token by token.

    Teacher-forced: one forward pass per conversation, argmax at each target position. All of a
    turn's argmaxes being right is the same as greedy decoding writing that turn, so this is a fast
    (seconds), strict proxy of `evaluate.py`'s task success, without the tools.
    """
    import torch

    was_training = model.training
    model.eval()
    out = {}
    with torch.inference_mode():
        for cat in data.CATEGORIES:
            ok = 0
            examples = data.generate(cat, count, seed=seed, split="eval")
            for ids, labels in (data.encode(ex, tok, stop) for ex in examples):
                pred = model(input_ids=torch.tensor([ids])).logits[0, :-1].argmax(-1)
                target = torch.tensor(labels[1:])
                scored = target != -100
                ok += bool((pred[scored] == target[scored]).all())
            out[cat] = ok / count
    model.train(was_training)
    return out


def cpu_kind() -> dict[str, Any]:
    """What decides a CPU run's arithmetic besides the seed, for `training.json`: the processor,
    the vector width torch's own kernels use, the instruction sets oneDNN's bfloat16 products may
    use, and a cap on them (`ONEDNN_MAX_CPU_ISA`). Measured on one machine, a 6-step run gave four
    different weights with oneDNN left alone (AMX) and capped at AVX512_CORE_BF16, AVX512_CORE
    and AVX2; a rerun compares against a run on the same kind."""
    import torch

    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:  # not Linux
        pass
    flags = fields.get("flags", "").split()
    return {"model": fields.get("model name", ""), "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_isa": sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "avx512_fp16")),
            "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}


def weights_hash(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class WeightAverage:
    """An exponential moving average of a model's weights (`train.py --ema`), the weights saved.

    A held-out greeting is answered from the few words it shares with training phrasings, and
    which reply wins moves from step to step: on the plain-only proxy, the raw weights at step 900
    got 77.5% of held-out greetings right and their average with decay 0.99 85.5% (the same run).
    The average is kept in float32 beside the live weights and never feeds back into training,
    so the run's trajectory is the one without it. The weights training keeps as built (the
    choice circuit's) are a constant whose average is that constant up to float32 rounding (a few
    ulps after 2,000 steps).

        avg = WeightAverage(model, 0.995)
        ...; opt.step(); avg.update(model)
        with avg.applied(model):
            save(model, out, eos, meta)
    """

    def __init__(self, model, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the average's decay must be between 0 and 1, not {decay}")
        self.decay = decay
        self.params = [p.detach().clone() for p in model.parameters()]

    def update(self, model) -> None:
        import torch

        with torch.no_grad():
            for avg, p in zip(self.params, model.parameters()):
                avg.mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)

    @contextmanager
    def applied(self, model):
        """Within the block `model` holds the averaged weights; afterwards its own, bit for bit."""
        import torch

        live = list(model.parameters())
        with torch.no_grad():
            own = [p.detach().clone() for p in live]
            for p, avg in zip(live, self.params):
                p.copy_(avg)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, mine in zip(live, own):
                    p.copy_(mine)


def save(model, out: Path, eos: list[int], meta: dict) -> None:
    training_attention = model.config._attn_implementation
    model.set_attn_implementation("sdpa")  # what the checkpoint's config says: the runtime's own choice
    model.save_pretrained(str(out), safe_serialization=True)
    model.set_attn_implementation(training_attention)
    gen = {"eos_token_id": eos, "pad_token_id": eos[0], "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    (out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")


# ---- main -----------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "glm_runtime" / "demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=80000, help="training conversations")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--tokens-per-batch", type=int, default=8192)
    p.add_argument("--row", type=int, default=2048, help="tokens per packed row")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--copy-circuit", action=argparse.BooleanOptionalAction, default=True,
                   help="start with a built-in copy circuit (see copy_circuit; default: on)")
    p.add_argument("--choice-circuit", action=argparse.BooleanOptionalAction, default=True,
                   help="start with a built-in circuit that chooses between declared user functions by the "
                        "parameter the request names (see choice_circuit; needs the copy circuit; default: on)")
    p.add_argument("--bag-circuit", action=argparse.BooleanOptionalAction, default=False,
                   help="start with a head that reads the latest user turn as a bag of its tokens (see bag_circuit; "
                        "needs the choice circuit; default: off, as the shipped run: one full run with it was worse, "
                        "see MODEL_CARD.md)")
    p.add_argument("--circuit-lr", type=float, default=0.25,
                   help="learning-rate factor of the attention layers that hold the copy circuit")
    p.add_argument("--copy-ngram", type=int, choices=[1, 2, 3], default=3,
                   help="tokens of context the copy circuit's induction heads match (see copy_circuit)")
    p.add_argument("--copy-gain", type=float, default=0.2, help="the copy circuit's starting output gain")
    p.add_argument("--split", choices=sorted(SPLITS), default="letters",
                   help="how text is split before BPE (see SPLITS): glm4, words (every space a token), or "
                        "letters (words, and a word outside the templates spelled letter by letter)")
    p.add_argument("--min-word-count", type=int, default=40,
                   help="--split letters: a word is kept whole when in at least this many of 80,000 conversations "
                        "(scaled with --samples)")
    p.add_argument("--whole-words", action=argparse.BooleanOptionalAction, default=False,
                   help="--split letters: a known word counts its other cases too, and each one is a token of "
                        "its own, not letters or BPE pieces (see build_tokenizer; default: off, as the shipped run)")
    p.add_argument("--case-mark", action=argparse.BooleanOptionalAction, default=True,
                   help="--tokenizer bpe: write each capital as a mark token before its small letter, so a word has "
                        "the same tokens in any case (see build_tokenizer; default: on, as the shipped run; "
                        "--no-case-mark: the tokenizer of the previous weights, sha256 e4cf6ea9...)")
    p.add_argument("--fillers", type=float, default=0.3,
                   help="the share of training requests with a filler word or two before their values "
                        "(before a greeting: at the start)")
    p.add_argument("--rotary", type=float, default=0.25,
                   help="partial_rotary_factor: the share of each head's dimensions RoPE turns; the rest "
                        "match by content alone, as the copy circuit's induction heads do")
    p.add_argument("--fast-loss", action=argparse.BooleanOptionalAction, default=True,
                   help="run the output projection on the trained positions only (trained_loss): the "
                        "same loss, other rounding, 1.3x faster per batch where measured")
    p.add_argument("--plain-weight", type=float, default=2.0,
                   help="the share of plain conversations (greetings), against python 3, browser 3, cogview 2, "
                        "function 3, error 2")
    p.add_argument("--choice-weight", type=float, default=1.0,
                   help="loss weight of each assistant turn's first token: the tool it calls, or the newline of an "
                        "answer (20 did not teach the choice between two functions; see MODEL_CARD.md)")
    p.add_argument("--blind", action=argparse.BooleanOptionalAction, default=True,
                   help="train on the phrasings a helper wrote without seeing the held-out ones too "
                        "(scripts/demo/blind_phrasings.json, see data.blind_phrasings); --no-blind: the data "
                        "of the previous weights, sha256 5e435782...")
    p.add_argument("--drop-crossing", action=argparse.BooleanOptionalAction, default=False,
                   help="leave out every training phrasing that holds a held-out phrasing of another reply, at any "
                        "length and in either language (data.crossing_filter; one run with it was no better, see "
                        "MODEL_CARD.md)")
    p.add_argument("--skip-prose", action=argparse.BooleanOptionalAction, default=True,
                   help="learn the BPE without the template's constant paragraphs (single tokens anyway), so no "
                        "token is a piece of them that training never shows (build_tokenizer); --no-skip-prose: "
                        "the tokenizer of the previous weights, sha256 000003c3...")
    p.add_argument("--vary-ends", type=float, default=0.25,
                   help="the share of training requests whose closing punctuation is dropped or changed")
    p.add_argument("--vary-case", type=float, default=0.25,
                   help="the share of English training requests that start with a small letter")
    p.add_argument("--drop-word", type=float, default=0.0,
                   help="the share of English plain training requests of three words or more that lose one "
                        "(never to a held-out phrasing; see data._drop_a_word; default: 0, as the shipped run)")
    p.add_argument("--ema", type=float, default=0.0,
                   help="save (and evaluate) an exponential moving average of the weights with this decay "
                        "instead of the last step's (WeightAverage; 0: off)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="matrix products in bfloat16 (autocast; the weights stay float32): 1.6x faster here")
    p.add_argument("--tokenizer", choices=["bytes", "bpe"], default="bpe",
                   help="bytes: 256 byte symbols (every held-out text is spelled from trained symbols); bpe: a BPE of --vocab")
    p.add_argument("--vocab", type=int, default=2048, help="BPE vocabulary size (--tokenizer bpe)")
    p.add_argument("--tie", action=argparse.BooleanOptionalAction, default=True,
                   help="tie the output projection to the embeddings (default: tied)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=704)
    p.add_argument("--context", type=int, default=2048)
    # Part of what makes a run reproducible: the same thread count gives the same weights.
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=0,
                   help="every N steps, log the held-out exact-match rate per category (0: only at the end)")
    p.add_argument("--eval-count", type=int, default=30, help="held-out conversations per category for that log")
    p.add_argument("--log", type=Path, default=None)
    p.add_argument("--hash", action="store_true", help="print the sha256 of the final weights")
    return p.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    if args.choice_weight != 1 and not args.fast_loss:
        raise SystemExit("--choice-weight needs --fast-loss")
    if not 0 <= args.ema < 1:
        raise SystemExit(f"--ema is a decay between 0 and 1 (0.995 averages about the last 200 steps; 0: off), "
                         f"not {args.ema}")
    import torch
    from transformers import GlmConfig, GlmForCausalLM

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    log_file = args.log.open("a") if args.log else None

    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        if log_file:
            log_file.write(line + "\n")
            log_file.flush()

    template = official_template()
    t0 = time.time()
    weights = data.WEIGHTS | {"plain": args.plain_weight}
    with data.crossing_filter(args.drop_crossing), data.blind_pools(args.blind):
        examples = data.mixture(args.samples, seed=args.seed, weights=weights, vary_ends=args.vary_ends,
                                fillers=args.fillers, vary_case=args.vary_case, drop_word=args.drop_word)
    bare = _bare_tokenizer(template)
    from glm_runtime.chat_format import render

    texts = [render(ex.messages, ex.tools, tokenizer=bare, add_generation_prompt=False) for ex in examples]
    case_mark = args.case_mark and args.tokenizer == "bpe"  # the byte tokenizer has no words to mark
    tok = build_tokenizer(texts, vocab_size=args.vocab, template=template, out=args.out, kind=args.tokenizer,
                          split=args.split, min_word_count=max(2, args.min_word_count * args.samples // 80000),
                          whole_words=args.whole_words, skip_prose=args.skip_prose, case_mark=case_mark)
    from glm_runtime.tokenizer import load_tokenizer

    tok = load_tokenizer(args.out)  # exactly as the runtime loads it
    stop = {t: tok.convert_tokens_to_ids(t) for t in GLM4_SPECIAL_TOKENS}
    encoded = encode_all(examples, tok, stop, args.threads)
    encoded = [e for e in encoded if len(e[0]) <= args.context]
    lengths = sorted(len(e[0]) for e in encoded)
    log(f"data: {len(encoded)} conversations, vocab {len(tok)}, tokens median {lengths[len(lengths) // 2]} "
        f"max {lengths[-1]}, {time.time() - t0:.0f}s")

    eos = [stop[t] for t in EOS]
    cfg = GlmConfig(**{k: v for k, v in model_config(len(tok), eos, args).items() if k not in ("architectures", "model_type")})
    torch.manual_seed(args.seed)
    model = GlmForCausalLM(cfg)
    model.config.architectures = ["GlmForCausalLM"]
    use_segment_attention(model)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters, {args.layers} layers, hidden {args.hidden}")
    slow: list[str] = []
    if args.copy_circuit:
        slow = copy_circuit(model, seed=args.seed, ngram=args.copy_ngram, gain=args.copy_gain)
        log(f"copy circuit built in; its attention layers train at {args.circuit_lr:g}x the learning rate")
    fixed: list[tuple[Any, Any, Any]] = []  # (parameter, flat indices, values) restored after every step
    if args.choice_circuit:
        if not args.copy_circuit:
            raise SystemExit("--choice-circuit needs --copy-circuit")
        named = dict(model.named_parameters())
        try:
            verbs, params = data.function_words()
            kept = choice_circuit(model, tok, verbs=verbs, params=params)
            if args.bag_circuit:
                kept += bag_circuit(model, tok, verbs=verbs, params=params)
        except ValueError as e:
            raise SystemExit(f"{e} (a model this shape or a tokenizer this small cannot hold the choice circuit: "
                             "pass --no-choice-circuit)") from None
        masks: dict[str, Any] = {}
        for name, mask in kept:  # one mask per parameter, taken once both circuits are built
            masks[name] = masks[name] | mask if name in masks else mask
        if args.bag_circuit:  # the turn query's level, kept through training by calibrate_bag
            dims = bag_dims(model, verbs, params)
            probes = bag_probes(encoded, stop["<|assistant|>"], stop["<|user|>"])
            bag_target = float(model.model.layers[2].self_attn.q_proj.bias[dims["query"]].detach()) * turn_level(
                model, probes, dims["U"])
        for name, mask in sorted(masks.items()):  # flat indices: restoring takes about 1 ms a step
            fixed.append((named[name], mask.flatten().nonzero().squeeze(1), named[name].detach()[mask].clone()))
        built = "choice and bag circuits" if args.bag_circuit else "choice circuit"
        log(f"{built} built in; {sum(len(i) for _, i, _ in fixed)} of their weights stay fixed")
    elif args.bag_circuit:
        raise SystemExit("--bag-circuit needs --choice-circuit")
    groups: dict[tuple[bool, float], list] = {}
    for n, p in model.named_parameters():
        factor = args.circuit_lr if any(n.startswith(s + ".") for s in slow) else 1.0
        groups.setdefault((p.dim() >= 2, factor), []).append(p)
    opt = torch.optim.AdamW([{"params": ps, "weight_decay": 0.01 if decay else 0.0, "lr": args.lr * factor}
                             for (decay, factor), ps in sorted(groups.items(), key=lambda g: (g[0][0], -g[0][1]))],
                            lr=args.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))))
    rng = random.Random(args.seed)
    queue: list[list[int]] = []
    model.train()
    meta = {"seed": args.seed, "samples": args.samples, "steps": args.steps, "params": n_params,
            "tokens_per_batch": args.tokens_per_batch, "row": args.row, "lr": args.lr, "threads": args.threads,
            "tokenizer": args.tokenizer, "tie": args.tie, "bf16": args.bf16, "copy_circuit": args.copy_circuit,
            "circuit_lr": args.circuit_lr}
    meta |= {"copy_ngram": args.copy_ngram, "copy_gain": args.copy_gain, "split": args.split, "rotary": args.rotary,
             "fast_loss": args.fast_loss, "plain_weight": args.plain_weight, "vary_ends": args.vary_ends,
             "min_word_count": args.min_word_count, "fillers": args.fillers,
             "vary_case": args.vary_case, "cpu": cpu_kind()}
    if args.blind:
        meta["blind"] = True
    if args.drop_crossing:
        meta["drop_crossing"] = True
    if args.skip_prose:
        meta["skip_prose"] = True
    if args.whole_words:
        meta["whole_words"] = True
    if case_mark:
        meta["case_mark"] = True
    if args.drop_word:
        meta["drop_word"] = args.drop_word
    if args.choice_circuit:  # weights before it have no such key
        meta["choice_circuit"] = True
    if args.bag_circuit:
        meta["bag_circuit"] = True
    if args.choice_weight != 1:  # the shipped weights' training.json predates the option
        meta["choice_weight"] = args.choice_weight
    if args.ema:
        meta["ema"] = args.ema
    choices = [choice_positions(i, l, stop["<|assistant|>"]) for i, l in encoded] if args.choice_weight != 1 else None
    average = WeightAverage(model, args.ema) if args.ema else None

    def saved_weights():
        """A block within which `model` holds the weights to evaluate and save."""
        return average.applied(model) if average else nullcontext()

    t1, seen, avg = time.time(), 0, None
    for step in range(1, args.steps + 1):
        if not queue:
            queue = batches(encoded, args.tokens_per_batch, args.row, rng)
        rows = queue.pop()
        ids, labels, pos, segments = collate(encoded, rows, stop["<|endoftext|>"])
        loss_weights = choice_weights(encoded, rows, choices, args.choice_weight, labels.shape) if choices else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            if args.fast_loss:
                loss = trained_loss(model, ids, labels, pos, segments, loss_weights)
            else:
                loss = model(input_ids=ids, labels=labels, position_ids=pos, segments=segments, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for param, index, values in fixed:
                param.view(-1).index_copy_(0, index, values)
        if average:
            average.update(model)
        if args.bag_circuit and step % 10 == 0:
            query = calibrate_bag(model, probes, dims, bag_target)
            if step % 100 == 0:
                log(f"bag head's turn query {query:.1f}")
        sched.step()
        seen += ids.numel()
        avg = loss.item() if avg is None else 0.95 * avg + 0.05 * loss.item()
        if step % 10 == 0 or step == 1:
            el = time.time() - t1
            log(f"step {step}/{args.steps} loss {loss.item():.4f} avg {avg:.4f} lr {sched.get_last_lr()[0]:.2e} "
                f"{seen / el:.0f} tok/s {el / 60:.1f} min")
        if (args.eval_every and step % args.eval_every == 0) or step == args.steps:
            with saved_weights():
                exact = held_out_exact(model, tok, stop, args.eval_count)
            log("held-out exact " + " ".join(f"{c} {v:.0%}" for c, v in exact.items()))
            meta["held_out_exact"] = exact
        if step % args.save_every == 0 or step == args.steps:
            with saved_weights():
                save(model, args.out, eos, meta | {"step": step, "loss_avg": avg})
            log(f"saved step {step} to {args.out}")
    with saved_weights():
        digest = weights_hash(model)
        meta |= {"step": args.steps, "loss_avg": avg, "weights_sha256": digest, "minutes": (time.time() - t1) / 60}
        save(model, args.out, eos, meta)
    log(f"done: weights sha256 {digest}")
    return digest


if __name__ == "__main__":
    main()
