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

    python3 scripts/demo/held_out_words.py
    python3 scripts/demo/held_out_words.py --blind
"""

from __future__ import annotations

import argparse
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="The words of held-out greetings that training never shows.")
    p.add_argument("--blind", action="store_true", help="train with the phrasings written blind too")
    p.add_argument("--drop-crossing", action="store_true",
                   help="leave out training phrasings that hold another reply's held-out phrasing")
    args = p.parse_args(argv)
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
