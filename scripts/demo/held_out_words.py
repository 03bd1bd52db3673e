"""Which words of each held-out greeting does training ever show the model, and for which reply?

A plain reply is chosen from the request's words alone: there is no value to copy. A model trained
from scratch on `data.py`'s conversations knows a word only from the training requests it appears
in, so a held-out phrasing with a word that no training request of its kind contains can be
answered right only through the other words or by luck. For every held-out plain phrasing this
prints its words that training requests of its own kind never contain: those that only other
kinds' training requests contain ("other"), and those that no training greeting contains at all
("nowhere"), and the training requests of another kind that hold the whole phrasing ("inside":
"What are you able to do?" teaches the capabilities reply for a request that holds "What are
you?"; `train.py --drop-crossing` leaves such phrasings out, and `--drop-crossing` here shows
training with it). `--blind`: with the phrasings written blind in training too (`train.py --blind`).

`--bag TOKENIZER` asks how far the request's tokens alone carry the reply: a naive Bayes classifier
over the set of tokens of each plain request in the default training mixture (80,000 conversations,
as `train.py` builds it), scored on the 200 held-out plain conversations `evaluate.py` runs. It
knows nothing of word order, so it fails where the tokens point to another reply. `--bag words`
counts lower-case words (`data._near`) instead of a tokenizer's tokens.

    python3 scripts/demo/held_out_words.py
    python3 scripts/demo/held_out_words.py --blind
    python3 scripts/demo/held_out_words.py --bag glm_runtime/demo
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data  # noqa: E402


def words(text: str) -> set[str]:
    """The lower-case Latin words of `text`, or its CJK characters one by one."""
    return set(re.findall(r"[a-z']+", text.lower())) | set(re.findall(r"[\u4e00-\u9fff]", text))


def holds(text: str, phrasing: str, lang: str) -> bool:
    """Whether the request `text` holds the whole of `phrasing`, up to case, punctuation,
    contractions and filler words at the phrasing's ends (`data._near`), at any length."""
    return data._contains(data._near(text, lang), data._near(phrasing, lang), lang, any_length=True)


def plain_gaps(lang: str) -> list[dict]:
    """One row per held-out plain phrasing of `lang`: its kind (the index of its reply in
    `data._PLAIN`), its words that training requests of that kind never contain, and the training
    requests of other kinds that hold it."""
    kinds = [(data._half(asks, "train", data._PLAIN_MORE[lang][g]), data._half(asks, "eval"))
             for g, (asks, _) in enumerate(data._PLAIN[lang])]
    rows = []
    for g, (train, held) in enumerate(kinds):
        own = set().union(*map(words, train))
        other = set().union(*(words(t) for h, (ts, _) in enumerate(kinds) if h != g for t in ts))
        for phrasing in held:
            w = words(phrasing)
            inside = [t for h, (ts, _) in enumerate(kinds) if h != g for t in ts if holds(t, phrasing, lang)]
            rows.append({"kind": g, "phrasing": phrasing, "other": sorted((w - own) & other),
                         "nowhere": sorted(w - own - other), "inside": inside})
    return rows


def bag_baseline(features, *, alpha: float = 0.5, count: int = 200, samples: int = 80000) -> dict:
    """Naive Bayes over `features(text, lang)` (a set) of the plain requests in the default training
    mixture, each reply's own; scored on `evaluate.py`'s `count` held-out plain conversations.
    Returns the share right and, per held-out phrasing the classifier gets wrong, the reply it
    picks and in how many conversations."""
    import train

    kinds = {lang: {answer: g for g, (_, answer) in enumerate(data._PLAIN[lang])} for lang in ("en", "zh")}
    a = train.parse_args([])  # the mixture of the default command
    with data.crossing_filter(a.drop_crossing), data.blind_pools(a.blind):
        mix = data.mixture(samples, seed=a.seed, weights=data.WEIGHTS | {"plain": a.plain_weight},
                           vary_ends=a.vary_ends, fillers=a.fillers, vary_case=a.vary_case, drop_word=a.drop_word)
    counts: dict = {}
    for ex in mix:
        if ex.category == "plain":
            seen = counts.setdefault((ex.lang, kinds[ex.lang][ex.expect["answer"]]), [0, {}])
            seen[0] += 1
            for f in features(ex.messages[1].content, ex.lang):
                seen[1][f] = seen[1].get(f, 0) + 1
    right, wrong = 0, {}
    for ex in data.generate("plain", count, seed=1, split="eval"):
        text, truth = ex.messages[1].content, kinds[ex.lang][ex.expect["answer"]]
        fs = features(text, ex.lang)

        def score(g: int) -> float:
            n, seen = counts[(ex.lang, g)]
            return sum(math.log((seen.get(f, 0) + alpha) / (n + 2 * alpha)) for f in fs)

        best = max(range(len(data._PLAIN[ex.lang])), key=score)
        if best == truth:
            right += 1
        else:
            wrong.setdefault(text, [data.PLAIN_KINDS[best], 0])[1] += 1
    return {"right": right / count, "wrong": wrong}


def bag_features(source: str):
    """`--bag`'s features: lower-case words (`words`), or a tokenizer directory's tokens."""
    if source == "words":
        return lambda text, lang: set(data._near(text, lang).split()) if lang == "en" else set(data._bare(text))
    from glm_runtime.tokenizer import load_tokenizer

    tok = load_tokenizer(source)
    space = set(tok.encode(" ", add_special_tokens=False))
    return lambda text, lang: set(tok.encode(text, add_special_tokens=False)) - space


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="The words of held-out greetings that training never shows.")
    p.add_argument("--blind", action="store_true", help="train with the phrasings written blind too")
    p.add_argument("--drop-crossing", action="store_true",
                   help="leave out training phrasings that hold another reply's held-out phrasing")
    p.add_argument("--bag", metavar="TOKENIZER",
                   help="instead: score a bag-of-tokens classifier of the training requests on the held-out ones "
                        "(a tokenizer directory, or 'words')")
    args = p.parse_args(argv)
    if args.bag:
        out = bag_baseline(bag_features(args.bag))
        print(f"bag of {args.bag}: {out['right']:.1%} of the held-out plain conversations right")
        for text, (kind, n) in sorted(out["wrong"].items(), key=lambda kv: -kv[1][1]):
            print(f"  {text!r:24} -> {kind} ({n})")
        return
    for lang in ("en", "zh"):
        print(f"{lang}: held-out phrasing -> its words that no training request of its kind has")
        with data.crossing_filter(args.drop_crossing), data.blind_pools(args.blind):
            rows = plain_gaps(lang)
        for r in rows:
            print(f"  {r['phrasing']!r:24} only another kind's: {', '.join(r['other']) or '-':12} "
                  f"no training greeting's: {', '.join(r['nowhere']) or '-':8} "
                  f"inside another kind's: {', '.join(map(repr, r['inside'])) or '-'}")


if __name__ == "__main__":
    main()
