"""Synthetic All-Tools conversations for the demo model, in GLM-4's wire format.

Every conversation is a list of `Message`s as the agent loop builds them (a system message with
the date, the user's request, the assistant's calls, the tools' observations, the answer) and the
tool specs the registry would declare; `encode` renders it with `render_ids` and the demo
tokenizer's chat template (the official GLM-4 one), exactly as `LocalBackend` renders a prompt,
and marks which tokens are the assistant's (the only ones with a loss).

Six categories, English and Chinese: `python` (arithmetic and small data questions), `browser`
(search -> mclick -> an answer citing 【id†title】), `cogview` (a picture, an English prompt),
`function` (a user tool declared in the system prompt with random names), `plain` (greetings,
no tool) and `error` (an error observation, then a corrected call).

Held-out conversations differ from the training ones by template, by name and by value: each
pool of phrasings, topics, function names and parameter names is split in two, `split="train"`
draws from one part and `split="eval"` from the other. A training-only phrasing that differs from a
held-out one only in case or punctuation is dropped; training's augmentations (`mixture`) only
change closing punctuation and put filler words (common or made-up) before a request's values.

    >>> ex = generate("python", 1, seed=0)[0]
    >>> [m.role for m in ex.messages]
    ['system', 'user', 'assistant', 'observation', 'assistant']
"""

from __future__ import annotations

import functools
import json
import random
import re
import string
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glm_runtime.messages import Message, ToolSpec

__all__ = ["CATEGORIES", "Example", "builtin_specs", "encode", "function_source", "generate", "mixture"]

CATEGORIES = ("python", "browser", "cogview", "function", "plain", "error")
BUILTINS = ("python", "simple_browser", "cogview")


@dataclass
class Example:
    """One conversation. `train[i]` says whether message i is a target (assistant, not a mistake).

    `expect` holds what an evaluation checks: the tool, the arguments, the answer's must-haves.
    `functions` are the user tools' definitions (see `function_source`).
    """

    category: str
    lang: str
    messages: list[Message]
    tools: list[ToolSpec]
    train: list[bool]
    expect: dict[str, Any] = field(default_factory=dict)
    functions: list[dict[str, Any]] = field(default_factory=list)


def builtin_specs(names) -> list[ToolSpec]:
    return [ToolSpec(name=n, kind=n) for n in BUILTINS if n in names]


# ---- shared pools -----------------------------------------------------------------------------

def _half(items: list, split: str, extra: tuple = ()) -> list:
    """Training gets the even positions (and `extra`, phrasings only ever trained on), held-out
    evaluation the odd ones. An `extra` phrasing that differs from a held-out one only in case or
    punctuation ("Goodbye" for "Goodbye!") is left out: it would be the held-out phrasing. Inside
    `crossing_filter()`, so is a training phrasing that holds a held-out phrasing of another reply
    (`_crossings`)."""
    if split != "train":
        return items[1::2]
    if not _DROP_CROSSING:
        return _train_half(items, extra)
    crossing = _crossings()
    return [x for x in _train_half(items, extra) if x not in crossing]


def _train_half(items: list, extra: tuple = ()) -> list:
    """`_half`'s training phrasings before `_crossings` leaves any out."""
    held = {_bare(x) for x in items[1::2]}
    return items[0::2] + [x for x in extra if _bare(x) not in held]


def _bare(text: str) -> str:
    """`text` without case, punctuation or spaces: what tells two phrasings apart."""
    return "".join(c for c in text.lower() if c.isalnum() or c in "{}")


# Training-only phrasings: more ways of asking the same thing, so that a model this small learns the
# cue of each kind of request rather than a handful of sentences. None of them is an evaluation phrasing.
_MORE = {
    "arith_en": ["{a} {op} {b}", "Quick: {a} {op} {b}?", "Work out {a} {op} {b} for me.", "What do you get for {a} {op} {b}?",
                 "Find {a} {op} {b}.", "Evaluate {a} {op} {b}.", "Could you compute {a} {op} {b}?", "Result of {a} {op} {b}?",
                 "I need {a} {op} {b}.", "Do the math: {a} {op} {b}.", "Let's compute {a} {op} {b}.",
                 "I'd like {a} {op} {b}.", "Here's one: {a} {op} {b}", "Who's got {a} {op} {b}?"],
    "arith_zh": ["{a} {op} {b}", "{a} {op} {b} 得多少？", "帮我算 {a} {op} {b}", "请计算 {a} {op} {b} 的值", "{a} {op} {b} 结果是多少",
                 "算出 {a} {op} {b}", "告诉我 {a} {op} {b} 等于几"],
    "sum_en": ["Total of {items}?", "Please sum {items}.", "Sum of {items}?", "Add {items} together.", "Let's add {items}."],
    "sum_zh": ["{items} 加起来是多少？", "请求和：{items}", "{items} 的总数"],
    "max_en": ["Max of {items}?", "Which of {items} is largest?", "Largest number among {items}?", "Find the biggest of {items}.", "Where's the max in {items}?"],
    "max_zh": ["{items} 哪个最大？", "{items} 的最大数", "最大值：{items}"],
    "min_en": ["Min of {items}?", "Which of {items} is smallest?", "Smallest number among {items}?", "Find the lowest of {items}.", "I'd like the min of {items}."],
    "min_zh": ["{items} 哪个最小？", "{items} 的最小数", "最小值：{items}"],
    "mean_en": ["Mean of {items}?", "Average of {items}, please.", "Calculate the average of {items}.", "What is the mean of {items}?", "Let's average {items}."],
    "mean_zh": ["{items} 的平均是多少？", "求平均：{items}", "{items} 平均下来是多少"],
    "sort_en": ["Order {items} from low to high.", "Sort {items}.", "Please sort {items} ascending.", "{items} sorted, please.", "Let's sort {items}."],
    "sort_zh": ["{items} 排个序", "把 {items} 排序", "升序排列 {items}"],
    "len_en": ["Length of '{w}'?", "How many characters does '{w}' have?", "Count the letters of '{w}'.", "len of '{w}'?"],
    "len_zh": ["'{w}' 有多少个字母？", "'{w}' 的字符数是多少？", "计算 '{w}' 的长度"],
    "pow_en": ["{a} to the {b}th power?", "Compute {a} to the power {b}.", "{a} ** {b} = ?", "Raise {a} to the power of {b}."],
    "pow_zh": ["{a} 的 {b} 次方", "算 {a} 的 {b} 次方", "{a} 的 {b} 次幂是多少？"],
    "search_en": ["Please look up {t}.", "Look {t} up online.", "Search about {t}.", "Find news about {t}.", "Web search: {t}.",
                  "Look up information on {t}.", "Browse for {t}.", "Can you look up {t}?", "Find pages about {t}.",
                  "Search online for {t}.", "Do a web search on {t}.", "What does the web say about {t}?"],
    "search_zh": ["搜{t}", "上网搜索{t}", "搜索一下{t}", "查查{t}的资料", "网上查一下{t}", "查一查{t}", "帮我上网查{t}", "搜索关于{t}的新闻",
                  "找一下{t}的资料", "在网上查{t}"],
    "draw_en": ["Draw me a {x}.", "Please draw a {x}.", "Picture of a {x}, please.", "Make an image of a {x}.",
                "Generate a picture of a {x}.", "Could you paint a {x}?", "An image of a {x}, please.", "Sketch a {x}.",
                "I want a picture of a {x}.", "Render a {x}.", "Create a picture of a {x}."],
    "draw_zh": ["画{x}", "画一张{x}", "请生成一张{x}的图", "帮我生成{x}的图片", "给我画一个{x}", "我想要{x}的图", "生成{x}的画", "画一幅{x}"],
    "function_en": ["Give me the {thing} for {args}.", "Please get the {thing} for {args}.", "The {thing} for {args}?",
              "Show the {thing} for {args}.", "Can you tell me the {thing} for {args}?", "Fetch the {thing} for {args}.",
              "Query the {thing} for {args}.", "Report the {thing} for {args}."],
    "function_zh": ["{args} 的{thing}", "获取 {args} 的{thing}", "告诉我 {args} 的{thing}是多少", "看看 {args} 的{thing}", "查一下 {args} 的{thing}"],
}


def _date(rng: random.Random) -> str:
    return f"Current date: {rng.randint(2024, 2027)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}."


def _tools_for(rng: random.Random, needed: set[str], fn_specs: list[ToolSpec]) -> list[ToolSpec]:
    names = set(needed)
    r = rng.random()
    if r < 0.4:
        names |= {"python", "simple_browser"}  # the CLI's default
    elif r < 0.7:
        names |= {n for n in BUILTINS if rng.random() < 0.5}
    elif r < 0.85:
        names |= set(BUILTINS)
    return builtin_specs(names) + fn_specs


# ---- python -----------------------------------------------------------------------------------

_OPS = {"+": ("plus", "加"), "-": ("minus", "减"), "*": ("times", "乘以")}

_ARITH = {
    "en": ["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b} please.",
           "What's {a} {op} {b}?", "How much is {a} {op} {b}?", "Can you work out {a} {op} {b}?",
           "Please evaluate {a} {op} {b}.", "Tell me {a} {op} {b}.", "{a} {op} {b} = ?", "Solve {a} {op} {b}."],
    "zh": ["{a} {op} {b} 等于多少？", "计算 {a} {op} {b}", "请帮我算一下 {a} {op} {b}", "{a} {op} {b} 是多少？",
           "帮我计算 {a} {op} {b} 的结果", "算一算 {a} {op} {b}", "{a} {op} {b} 的值是多少？", "求 {a} {op} {b}"],
}
_LIST_TASKS = {
    # kind: (code template, en phrasings, zh phrasings, en answer, zh answer)
    "sum": ("print(sum({lst}))",
            ["What is the sum of {items}?", "Add up {items}.", "Sum these numbers: {items}.",
             "What do {items} add up to?", "Give me the total of {items}."],
            ["{items} 的和是多少？", "把 {items} 加起来", "求 {items} 的总和", "计算 {items} 之和"],
            "The sum is {v}.", "总和是 {v}。"),
    "max": ("print(max({lst}))",
            ["What is the largest of {items}?", "Which is the biggest number in {items}?",
             "Find the maximum of {items}.", "What's the max of {items}?"],
            ["{items} 中最大的数是多少？", "求 {items} 的最大值", "找出 {items} 里最大的数"],
            "The largest is {v}.", "最大的数是 {v}。"),
    "min": ("print(min({lst}))",
            ["What is the smallest of {items}?", "Find the minimum of {items}.",
             "Which is the lowest number in {items}?", "What's the min of {items}?"],
            ["{items} 中最小的数是多少？", "求 {items} 的最小值", "找出 {items} 里最小的数"],
            "The smallest is {v}.", "最小的数是 {v}。"),
    "mean": ("print(sum({lst}) / len({lst}))",
             ["What is the average of {items}?", "Compute the mean of {items}.",
              "Find the mean value of {items}.", "What's the average of {items}?"],
             ["{items} 的平均值是多少？", "计算 {items} 的平均数", "求 {items} 的平均值"],
             "The average is {v}.", "平均值是 {v}。"),
    "sort": ("print(sorted({lst}))",
             ["Sort {items} in ascending order.", "Put {items} in order.", "Sort these numbers: {items}.",
              "Arrange {items} from smallest to largest."],
             ["把 {items} 从小到大排序", "对 {items} 进行排序", "请将 {items} 按升序排列"],
             "Sorted: {v}.", "排序结果是 {v}。"),
}
_WORDS = ["banana", "elephant", "keyboard", "mountain", "orchestra", "pineapple", "telescope", "umbrella",
          "volcano", "whisper", "notebook", "lantern", "saxophone", "glacier", "harbor", "meadow", "compass",
          "tangerine", "blueprint", "cathedral", "dolphin", "envelope", "firework", "gondola", "horizon",
          "igloo", "jasmine", "kangaroo", "labyrinth", "marathon", "nectar", "octopus", "parachute", "quartz",
          "raspberry", "satellite", "tornado", "unicorn", "vineyard", "walnut", "xylophone", "yogurt", "zeppelin"]
_LEN_EN = ["How many letters are in the word '{w}'?", "How long is the string '{w}'?",
           "Count the characters in '{w}'.", "What is the length of '{w}'?"]
_LEN_ZH = ["'{w}' 这个单词有几个字母？", "字符串 '{w}' 的长度是多少？", "数一下 '{w}' 有多少个字符"]
_POW = {"en": ["What is {a} to the power of {b}?", "Compute {a} ** {b}.", "What is {a} raised to the {b}?",
               "Calculate {a}^{b}."],
        "zh": ["{a} 的 {b} 次方是多少？", "计算 {a} 的 {b} 次幂", "求 {a}^{b}", "{a} 的 {b} 次方等于几？"]}


def _python_task(rng: random.Random, lang: str, split: str) -> tuple[str, str, str, str]:
    """(request, code, expected output, answer with {v})."""
    kind = rng.choice(["arith", "arith", "arith", "list", "list", "len", "pow"])
    if kind == "arith":
        op = rng.choice(list(_OPS))
        a, b = rng.randint(2, 999), rng.randint(2, 99 if op == "*" else 999)
        shown = rng.choice([op, op, _OPS[op][0 if lang == "en" else 1]]) if op != "*" else rng.choice(["*", "*", "×", _OPS[op][0 if lang == "en" else 1]])
        request = rng.choice(_half(_ARITH[lang], split, _MORE["arith_" + lang])).format(a=a, op=shown, b=b)
        v = str(eval(f"{a} {op} {b}"))  # noqa: S307 - our own digits and operator
        answer = f"{a} {shown} {b} = {{v}}." if lang == "en" else f"{a} {shown} {b} = {{v}}。"
        return request, f"print({a} {op} {b})", v, answer
    if kind == "pow":
        a, b = rng.randint(2, 30), rng.randint(2, 6)
        request = rng.choice(_half(_POW[lang], split, _MORE["pow_" + lang])).format(a=a, b=b)
        return request, f"print({a} ** {b})", str(a**b), ("{a}^{b} = {{v}}." if lang == "en" else "{a}^{b} = {{v}}。").format(a=a, b=b)
    if kind == "len":
        w = rng.choice(_half(_WORDS, split)) if split == "eval" or rng.random() < 0.5 else _pseudo_word(rng)
        request = rng.choice(_half(_LEN_EN if lang == "en" else _LEN_ZH, split, _MORE["len_" + lang])).format(w=w)
        answer = f"'{w}' has {{v}} characters." if lang == "en" else f"'{w}' 有 {{v}} 个字符。"
        return request, f"print(len('{w}'))", str(len(w)), answer
    task = rng.choice(list(_LIST_TASKS))
    code, en, zh, ans_en, ans_zh = _LIST_TASKS[task]
    nums = [rng.randint(1, 200) for _ in range(rng.randint(3, 6))]
    sep = ", " if lang == "en" else rng.choice(["、", ", "])
    items = sep.join(map(str, nums))
    if lang == "en" and rng.random() < 0.5:
        items = ", ".join(map(str, nums[:-1])) + " and " + str(nums[-1])
    request = rng.choice(_half(en if lang == "en" else zh, split, _MORE[f"{task}_{lang}"])).format(items=items)
    lst = "[" + ", ".join(map(str, nums)) + "]"
    v = {"sum": lambda: str(sum(nums)), "max": lambda: str(max(nums)), "min": lambda: str(min(nums)),
         "mean": lambda: str(sum(nums) / len(nums)), "sort": lambda: str(sorted(nums))}[task]()
    return request, code.format(lst=lst), v, ans_en if lang == "en" else ans_zh


def _python(rng: random.Random, lang: str, split: str) -> Example:
    request, code, v, answer = _python_task(rng, lang, split)
    fn = [_function(rng, split)[0]] if rng.random() < 0.2 else []
    msgs = [Message("system", _date(rng)), Message("user", request), Message("assistant", code, "python"),
            Message("observation", v), Message("assistant", answer.format(v=v))]
    return Example("python", lang, msgs, _tools_for(rng, {"python"}, fn), [False, False, True, False, True],
                   expect={"tool": "python", "code": code, "value": v})


# ---- browser ----------------------------------------------------------------------------------

_TOPIC_A = ["solar", "deep sea", "ancient", "urban", "electric", "quantum", "desert", "arctic", "medieval",
            "tropical", "coastal", "digital", "volcanic", "alpine", "renewable", "nocturnal", "robotic",
            "migratory", "lunar", "botanical"]
_TOPIC_N = ["batteries", "coral reefs", "libraries", "bridges", "bicycles", "telescopes", "railways", "bees",
            "glaciers", "lighthouses", "vaccines", "satellites", "windmills", "orchids", "submarines", "castles",
            "markets", "whales", "observatories", "forests", "canals", "gardens"]
_TOPIC_ZH_A = ["太阳能", "深海", "古代", "城市", "电动", "量子", "沙漠", "北极", "中世纪", "热带", "沿海", "数字",
               "火山", "高山", "可再生", "夜行", "机器人", "候鸟", "月球", "植物"]
_TOPIC_ZH_N = ["电池", "珊瑚礁", "图书馆", "桥梁", "自行车", "望远镜", "铁路", "蜜蜂", "冰川", "灯塔", "疫苗",
               "卫星", "风车", "兰花", "潜艇", "城堡", "市场", "鲸鱼", "天文台", "森林", "运河", "花园"]
_SEARCH_EN = ["Look up {t}.", "Search the web for {t}.", "Find information about {t}.", "Search for {t}.",
              "Look up recent news on {t}.", "Can you search {t} online?", "Browse the web about {t}.",
              "Find me articles about {t}."]
_SEARCH_ZH = ["查一下{t}", "搜索{t}的资料", "帮我搜索一下{t}", "上网查查{t}", "查找关于{t}的信息", "搜一搜{t}",
              "帮我查一下{t}的最新消息", "在网上搜索{t}"]
_SITES = ["wiki", "news", "journal", "daily", "times", "review", "post", "report", "museum", "institute"]
_FACTS_EN = ["{T} have been studied since {y}.", "{T} grew by {n} percent in {y}.",
             "Experts counted {n} new {t} in {y}.", "A {y} survey found {n} kinds of {t}.",
             "The first report on {t} appeared in {y}.", "{T} cover about {n} square kilometres today."]
_FACTS_ZH = ["{t}的研究始于{y}年。", "{y}年{t}增长了百分之{n}。", "专家在{y}年统计到{n}处新的{t}。",
             "{y}年的调查发现了{n}种{t}。", "关于{t}的第一份报告发表于{y}年。"]
_FILL_EN = ["Researchers continue to collect new data.", "Local groups publish updates every year.",
            "More details are listed in the full report.", "The topic draws many visitors and readers."]
_FILL_ZH = ["研究人员仍在收集新的数据。", "当地机构每年发布更新。", "完整报告中列出了更多细节。"]


# made-up words: syllables of an onset, a vowel and an optional coda, so every letter of the alphabet
# and the clusters of English words (str, ck, ght, qu, ...) are copied in training, at lengths up to
# an "observatories"; trained on consonant-vowel words without q or y, of at most 9 letters, the
# model wrote "guantum" for "quantum" and stopped "telescopes" at "teles"
_ONSETS = list("bcdfghjklmnprstvwxyz") * 3 + ["qu", "bl", "br", "ch", "cl", "cr", "dr", "fl", "fr", "gl", "gr",
                                             "kn", "ph", "pl", "pr", "sc", "sh", "sk", "sl", "sm", "sn", "sp",
                                             "st", "str", "sw", "th", "tr", "tw", "wh", "wr"]
_NUCLEI = list("aeiou") * 6 + ["y", "ai", "au", "ea", "ee", "ei", "ie", "oa", "oo", "ou", "ue"]
_CODAS = [""] * 40 + list("bcdfgklmnprstvxz") * 2 + ["ck", "ct", "ft", "ght", "ld", "lt", "mp", "nch", "nd", "ng",
                                                        "nk", "nt", "pt", "rd", "rk", "rm", "rn", "rt", "sh", "sk",
                                                        "sp", "ss", "st", "th", "tch"]


def _held_out_words() -> tuple[set[str], set[str]]:
    """Words and syllables only the evaluation draws, which made-up training words must avoid."""
    words = {w for t in _TOPIC_A[1::2] + _TOPIC_N[1::2] for w in t.split()} | set(_WORDS[1::2])
    return words, set(_FN_SYLL[1::2])


_TOPIC_WORDS = frozenset(x for t in _TOPIC_A + _TOPIC_N for x in t.split())


def is_slot_word(word: str) -> bool:
    """Whether `word` is (part of) a value the model copies: a topic word, a word whose length is
    asked, a function name's syllables or a stretch of a hex file name (any word of the letters a-f,
    so "add" too). The `letters` tokenizer spells these like any unknown word, in training as in
    evaluation, whichever half they are from."""
    w = word.lower()
    return w in _TOPIC_WORDS or w in _WORDS or all(c in "abcdef" for c in w) or _is_syllables(w)


def _is_syllables(w: str) -> bool:
    """Whether `w` is one or more of the function names' syllables (zorqua, bli, ...)."""
    return any(w.startswith(s) and (w == s or _is_syllables(w[len(s):])) for s in _FN_SYLL)


def _pseudo_word(rng: random.Random) -> str:
    """A made-up word of 1-4 syllables (3-14 letters) that contains no held-out word or syllable."""
    words, sylls = _held_out_words()
    while True:
        n = rng.choice([1, 1, 2, 2, 2, 3, 3, 4])
        w = "".join(("" if k == 0 and rng.random() < 0.15 else rng.choice(_ONSETS)) + rng.choice(_NUCLEI)
                    + rng.choice(_CODAS) for k in range(n))
        if rng.random() < 0.2:
            w += "s"
        if 3 <= len(w) <= 14 and w not in words and not any(x in w for x in sylls):
            return w


def _zh_chars() -> str:
    """The CJK characters made-up Chinese topics and fillers are drawn from: the whole CJK Unified
    Ideographs block (U+4E00-U+9FA5), the held-out topics' characters included, as the letters of
    held-out English words are (a made-up topic never contains a held-out topic word, `_zh_made_up`).

    Each character is one to three tokens, pieces of its UTF-8 bytes; what the model copies in a
    held-out topic must be pieces it has written in training. A fixed pool of 900 characters without
    the held-out ones left pieces of them never written (the last piece of 礁, all of 物): the model
    wrote `珊瑚` for `珊瑚礁` and `植` for `植物森林`."""
    return "".join(map(chr, range(0x4E00, 0x9FA6)))


_ZH_POOL = _zh_chars()
_ZH_HELD = tuple(_TOPIC_ZH_A[1::2] + _TOPIC_ZH_N[1::2])


def _zh_made_up(rng: random.Random, low: int, high: int) -> str:
    """`low` to `high` random CJK characters that contain no held-out topic word."""
    while True:
        w = "".join(rng.choice(_ZH_POOL) for _ in range(rng.randint(low, high)))
        if not any(h in w for h in _ZH_HELD):
            return w


def _topic(rng: random.Random, lang: str, split: str) -> str:
    if split == "train" and rng.random() < 0.6:  # made-up topics: learn to copy any words, not these
        if lang == "en":
            return " ".join(_pseudo_word(rng) for _ in range(rng.choice([1, 2, 2, 3])))
        return _zh_made_up(rng, 2, 5)
    if lang == "en":
        return f"{rng.choice(_half(_TOPIC_A, split))} {rng.choice(_half(_TOPIC_N, split))}"
    return rng.choice(_half(_TOPIC_ZH_A, split)) + rng.choice(_half(_TOPIC_ZH_N, split))


def browser_task(rng: random.Random, lang: str, split: str) -> dict[str, Any]:
    """A topic, the request, and the search results and pages a local server would serve for it."""
    t = _topic(rng, lang, split)
    request = rng.choice(_half(_SEARCH_EN if lang == "en" else _SEARCH_ZH, split, _MORE["search_" + lang])).format(t=t)
    results = []
    for k in range(rng.randint(3, 4)):
        site = rng.choice(_SITES)
        y, n = rng.randint(1950, 2025), rng.randint(2, 99)
        if lang == "en":
            title = f"{t.title()} - {site.title()} {rng.randint(1, 99)}"
            fact = rng.choice(_FACTS_EN).format(T=t[0].upper() + t[1:], t=t, y=y, n=n)
            body = [fact, rng.choice(_FILL_EN)]
        else:
            title = f"{t} - {site} {rng.randint(1, 99)}"
            fact = rng.choice(_FACTS_ZH).format(t=t, y=y, n=n)
            body = [fact, rng.choice(_FILL_ZH)]
        slug = "".join(rng.choice(string.ascii_lowercase) for _ in range(6))
        results.append({"title": title, "snippet": fact, "body": body, "slug": f"{site}/{slug}", "fact": fact})
    return {"topic": t, "request": request, "results": results}


def render_search(results: list[dict[str, Any]], urls: list[str], first_id: int) -> str:
    """The `simple_browser` observation of a search, as BrowserTool._search writes it."""
    return "\n\n".join(f"【{first_id + k}†{r['title']}†{_host(u)}】\n{r['snippet']}"
                       for k, (r, u) in enumerate(zip(results, urls)))


def render_pages(results: list[dict[str, Any]], urls: list[str], ids: list[int]) -> str:
    """The observation of an mclick, as BrowserTool._show writes each page."""
    return "\n\n".join(f"【{i}†{r['title']}†{_host(u)}】\nURL: {u}\n\n" + "\n\n".join(r["body"])
                       for r, u, i in zip(results, urls, ids))


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname or url


def _browser(rng: random.Random, lang: str, split: str) -> Example:
    task = browser_task(rng, lang, split)
    rs = task["results"]
    if rng.random() < 0.5:
        base = f"http://127.0.0.1:{rng.randint(20000, 65000)}/"
        urls = [base + r["slug"] for r in rs]
    else:
        urls = [f"https://www.{r['slug'].split('/')[0]}{rng.randint(1, 9)}.{rng.choice(['com', 'org', 'net'])}/"
                f"{r['slug'].split('/')[1]}" for r in rs]
    first = 0 if rng.random() < 0.6 else rng.randint(1, 40)
    ids = [first + k for k in range(2)]  # two pages: short enough for a tiny context
    search = f'search("{task["topic"]}")'
    click = f"mclick([{', '.join(map(str, ids))}])"
    top = rs[0]
    answer = (f"{top['fact']}【{ids[0]}†{top['title']}】" if lang == "en"
              else f"根据搜索结果，{top['fact']}【{ids[0]}†{top['title']}】")
    msgs = [Message("system", _date(rng)), Message("user", task["request"]),
            Message("assistant", search, "simple_browser"), Message("observation", render_search(rs, urls, first)),
            Message("assistant", click, "simple_browser"),
            Message("observation", render_pages(rs[: len(ids)], urls[: len(ids)], ids)),
            Message("assistant", answer)]
    return Example("browser", lang, msgs, _tools_for(rng, {"simple_browser"}, []),
                   [False, False, True, False, True, False, True],
                   expect={"tool": "simple_browser", "query": task["topic"], "task": task})


# ---- cogview ----------------------------------------------------------------------------------

_ADJ = [("red", "红色的"), ("blue", "蓝色的"), ("green", "绿色的"), ("golden", "金色的"), ("white", "白色的"),
        ("black", "黑色的"), ("tiny", "小小的"), ("giant", "巨大的"), ("old", "古老的"), ("happy", "快乐的"),
        ("sleepy", "困倦的"), ("shiny", "闪亮的"), ("purple", "紫色的"), ("wooden", "木制的")]
_NOUN = [("cat", "猫"), ("dog", "狗"), ("house", "房子"), ("mountain", "山"), ("robot", "机器人"), ("tree", "树"),
         ("boat", "小船"), ("dragon", "龙"), ("bird", "鸟"), ("car", "汽车"), ("castle", "城堡"), ("fox", "狐狸"),
         ("lighthouse", "灯塔"), ("horse", "马"), ("flower", "花"), ("rabbit", "兔子"), ("owl", "猫头鹰"),
         ("train", "火车"), ("panda", "熊猫"), ("tiger", "老虎")]
_SCENE = [("in the snow", "在雪地里"), ("at sunset", "在日落时"), ("on the beach", "在海滩上"),
          ("in a forest", "在森林里"), ("under the stars", "在星空下"), ("in the rain", "在雨中"),
          ("on a hill", "在山坡上"), ("in a city street", "在城市街道上"), ("by a lake", "在湖边"),
          ("in space", "在太空中"), ("in a garden", "在花园里"), ("at night", "在夜晚")]
_DRAW_EN = ["Draw a {x}.", "Make a picture of a {x}.", "Generate an image of a {x}.", "Paint a {x}.",
            "Create an illustration of a {x}.", "Can you draw a {x}?", "Show me a picture of a {x}.",
            "I'd like an image of a {x}."]
_DRAW_ZH = ["画一个{x}", "请画{x}", "生成一张{x}的图片", "帮我画{x}", "画一幅{x}的画", "给我一张{x}的图",
            "请生成{x}的图像", "我想要一张{x}的图片"]
_STYLE = ["detailed, high quality", "soft light, digital art", "watercolor style", "photorealistic, sharp focus"]


def cogview_task(rng: random.Random, lang: str, split: str) -> dict[str, Any]:
    # Held out: the combinations (adjective, noun, scene) split by parity of their index sum.
    while True:
        a, n, s = rng.randrange(len(_ADJ)), rng.randrange(len(_NOUN)), rng.randrange(len(_SCENE))
        if ((a + n + s) % 2 == 0) == (split == "train"):
            break
    en = f"{_ADJ[a][0]} {_NOUN[n][0]} {_SCENE[s][0]}"
    zh = f"{_SCENE[s][1]}的{_ADJ[a][1]}{_NOUN[n][1]}"
    request = rng.choice(_half(_DRAW_EN if lang == "en" else _DRAW_ZH, split, _MORE["draw_" + lang])).format(x=en if lang == "en" else zh)
    prompt = f"A {en}, {_STYLE[a % len(_STYLE)]}."  # the style follows the adjective: learnable
    answer = f"Here is the picture of a {en}." if lang == "en" else f"这是为你生成的{zh}的图片。"
    return {"request": request, "prompt": prompt, "answer": answer, "words": en.split()}


def _cogview(rng: random.Random, lang: str, split: str) -> Example:
    task = cogview_task(rng, lang, split)
    name = "".join(rng.choice("0123456789abcdef") for _ in range(8))
    obs = (f"Generated a {rng.choice([64, 512, 1024])}x{rng.choice([64, 512, 1024])} image (seed {rng.randint(0, 99999)}, "
           f"{rng.choice([2, 4, 20, 50])} steps): /tmp/glm-agent-{name}/artifacts/cogview-{name}.png")
    msgs = [Message("system", _date(rng)), Message("user", task["request"]),
            Message("assistant", task["prompt"], "cogview"), Message("observation", obs),
            Message("assistant", task["answer"])]
    return Example("cogview", lang, msgs, _tools_for(rng, {"cogview"}, []), [False, False, True, False, True],
                   expect={"tool": "cogview", "words": task["words"]})


# ---- user functions ---------------------------------------------------------------------------

_FN_VERB = ["get", "fetch", "lookup", "find", "query", "check", "read", "load", "compute", "resolve", "pull", "scan"]
_FN_SYLL = ["zor", "qua", "bli", "tep", "mox", "ran", "vel", "dru", "kip", "sol", "gar", "nym", "fex", "lum",
            "pra", "tov", "wen", "yad", "hux", "cel"]
_THINGS = [("population", "人口"), ("temperature", "气温"), ("price", "价格"), ("rating", "评分"),
           ("distance", "距离"), ("stock level", "库存"), ("score", "分数"), ("delay", "延误时间"),
           ("capacity", "容量"), ("altitude", "海拔"), ("balance", "余额"), ("speed", "速度"),
           ("humidity", "湿度"), ("weight", "重量"), ("rank", "排名"), ("budget", "预算")]
_PARAMS = [("city", "string"), ("station", "string"), ("product", "string"), ("team", "string"),
           ("account", "string"), ("route", "string"), ("warehouse", "string"), ("planet", "string"),
           ("year", "integer"), ("day", "integer"), ("floor", "integer"), ("order_id", "integer"),
           ("user_id", "integer"), ("room", "integer"), ("level", "integer"), ("batch_no", "integer")]
_STR_VALUES = ["Paris", "Oslo", "Lima", "Kyoto", "Cairo", "Quito", "Perth", "Dakar", "Tampa", "Riga", "Bern",
               "Accra", "Hanoi", "Nairobi", "Porto", "Tunis", "Vaduz", "Sucre", "Apia", "Doha", "Minsk", "Baku",
               "alpha", "bravo", "delta", "echo", "kilo", "lima", "oscar", "sierra", "tango", "zulu"]
_FN_ASK_EN = ["What is the {thing} for {args}?", "Tell me the {thing} for {args}.", "Get the {thing} for {args}.",
              "I need the {thing} for {args}.", "Check the {thing} for {args}.", "Look up the {thing} for {args} with the tool.",
              "Find the {thing} for {args}.", "What's the {thing} for {args}?"]
_FN_ASK_ZH = ["{args} 的{thing}是多少？", "查询 {args} 的{thing}", "帮我看看 {args} 的{thing}", "{args} 的{thing}是什么？",
              "告诉我 {args} 的{thing}", "请获取 {args} 的{thing}"]
_FN_ANS_EN = "The {thing} for {args} is {v}."
_FN_ANS_ZH = "{args} 的{thing}是 {v}。"


def _function(rng: random.Random, split: str) -> tuple[ToolSpec, dict[str, Any]]:
    """A user function with a random name and 1-2 parameters: its spec and its definition."""
    sylls = _half(_FN_SYLL, split)
    if split == "train" and rng.random() < 0.5:  # made-up syllables too: copy names, don't memorize them
        name = f"{rng.choice(_FN_VERB)}_{_pseudo_word(rng)}"
    else:
        name = f"{rng.choice(_FN_VERB)}_{rng.choice(sylls)}{rng.choice(sylls)}"
    if rng.random() < 0.5:
        name += f"_{rng.choice(['info', 'data', 'value', 'stats', 'now', 'v2'])}"
    thing = rng.choice(_THINGS)
    # two parameters in half of the training functions (a third in evaluation): copying the second
    # value, not the first one again, is what a two-parameter call gets wrong
    params = rng.sample(_PARAMS, rng.choice([1, 2] if split == "train" else [1, 1, 2]))
    defn = {"name": name, "thing": thing, "params": params,
            "description": f"Return the {thing[0]} for the given {' and '.join(p for p, _ in params)}."}
    props = {p: {"type": t} for p, t in params}
    spec = ToolSpec(name=name, description=defn["description"],
                    parameters={"type": "object", "properties": props, "required": [p for p, _ in params]},
                    kind="function")
    return spec, defn


def function_words() -> tuple[list[str], list[str]]:
    """The words every function name starts with (its verb) and every parameter name starts with
    (`order` for `order_id`, which a request writes `order id`): what `train.choice_circuit` codes."""
    return list(_FN_VERB), [p.split("_")[0] for p, _ in _PARAMS]


def function_source(defn: dict[str, Any]) -> str:
    """Python source of the user tool `defn` (for a `--tools` file): returns a value made from its arguments.

    The registry's `@tool` reads it into exactly the spec `_function` builds.
    """
    args = ", ".join(f"{p}: {'int' if t == 'integer' else 'str'}" for p, t in defn["params"])
    key = " + ".join(f"str({p})" for p, _ in defn["params"])
    return (f"@tool\ndef {defn['name']}({args}) -> str:\n"
            f"    {json.dumps(defn['description'])}\n"
            f"    h = sum(ord(c) * (i + 1) for i, c in enumerate({key} + {defn['name']!r}))\n"
            f"    return str(h % 997 + 3)\n")


def function_value(defn: dict[str, Any], args: dict[str, Any]) -> str:
    key = "".join(str(args[p]) for p, _ in defn["params"]) + defn["name"]
    return str(sum(ord(c) * (i + 1) for i, c in enumerate(key)) % 997 + 3)


def function_task(rng: random.Random, lang: str, split: str) -> dict[str, Any]:
    spec, defn = _function(rng, split)
    args: dict[str, Any] = {}
    for p, t in defn["params"]:
        if t == "integer":
            args[p] = rng.randint(1, 9999)
        elif split == "train" and rng.random() < 0.3:
            args[p] = _pseudo_word(rng).title()
        else:
            args[p] = rng.choice(_STR_VALUES)
    if lang == "en":
        said = " and ".join(f"{p.replace('_', ' ')} {v}" for p, v in args.items())
        request = rng.choice(_half(_FN_ASK_EN, split, _MORE["function_en"])).format(thing=defn["thing"][0], args=said)
        answer = _FN_ANS_EN.format(thing=defn["thing"][0], args=said, v="{v}")
    else:
        said = "、".join(f"{p} {v}" for p, v in args.items())
        request = rng.choice(_half(_FN_ASK_ZH, split, _MORE["function_zh"])).format(thing=defn["thing"][1], args=said)
        answer = _FN_ANS_ZH.format(thing=defn["thing"][1], args=said, v="{v}")
    return {"spec": spec, "defn": defn, "args": args, "request": request, "answer": answer}


def _function_example(rng: random.Random, lang: str, split: str) -> Example:
    task = function_task(rng, lang, split)
    v = function_value(task["defn"], task["args"])
    specs = [task["spec"]]
    if rng.random() < (0.5 if split == "train" else 0.3):  # a second, unrelated function to choose from
        other, odefn = _function(rng, split)
        if other.name != task["spec"].name and odefn["thing"] != task["defn"]["thing"]:
            specs = [other, task["spec"]] if rng.random() < 0.5 else [task["spec"], other]
    msgs = [Message("system", _date(rng)), Message("user", task["request"]),
            Message("assistant", json.dumps(task["args"], ensure_ascii=False), task["spec"].name),
            Message("observation", v), Message("assistant", task["answer"].format(v=v))]
    ex = Example("function", lang, msgs, _tools_for(rng, set(), specs), [False, False, True, False, True],
                 expect={"tool": task["spec"].name, "args": task["args"], "value": v})
    ex.functions = [task["defn"]]
    return ex


# ---- plain answers ----------------------------------------------------------------------------

_PLAIN = {
    "en": [(["Hi", "Hello", "Hey there", "Hello!", "Hi!", "Good morning", "Good evening", "Hey"],
            "Hello! How can I help you today?"),
           (["Who are you?", "What are you?", "Introduce yourself.", "What is your name?"],
            "I am a tiny demo model of glm-agent. I can run Python, search the web, draw pictures and call your tools."),
           (["Thanks!", "Thank you.", "Thanks a lot", "Great, thank you!"], "You're welcome!"),
           (["How are you?", "How are you doing?", "How is it going?", "Are you there?"],
            "I'm doing well, thanks. What can I do for you?"),
           (["Bye", "Goodbye!", "See you later", "Bye bye"], "Goodbye! Have a nice day."),
           (["What can you do?", "How can you help me?", "What tools do you have?", "Help"],
            "I can compute with Python, look things up on the web, draw pictures and use the tools you give me.")],
    "zh": [(["你好", "您好", "嗨", "你好呀", "早上好", "晚上好", "哈喽", "在吗"], "你好！有什么可以帮你的吗？"),
           (["你是谁？", "你叫什么名字？", "介绍一下你自己", "你是什么？"],
            "我是 glm-agent 的一个小型演示模型，可以运行 Python、搜索网页、画图和调用你的工具。"),
           (["谢谢", "谢谢你！", "多谢", "非常感谢"], "不客气！"),
           (["你好吗？", "最近怎么样？", "你还好吗？", "今天过得怎么样？"], "我很好，谢谢。有什么需要帮忙的吗？"),
           (["再见", "拜拜", "回头见", "下次见"], "再见，祝你愉快！"),
           (["你能做什么？", "你有什么功能？", "你会做什么？", "帮帮我"], "我可以用 Python 计算、上网搜索、画图，还能调用你提供的工具。")],
}


_PLAIN_MORE = {  # training-only, in the order of _PLAIN's groups
    "en": [["Hi there", "Hello there", "Hey!", "Good afternoon", "Howdy", "Greetings", "Hi, assistant", "Yo",
            "Morning!", "Hello everyone", "Hi friend",
            "Hiya", "Hey hey", "Good day", "Hi again", "Heya", "Hi, good to see you"],
           ["Who is this?", "Tell me about yourself.", "Are you a bot?", "Which model are you?", "What model is this?",
            "Who am I talking to?", "What should I call you?",
            "Who made you?", "Are you an AI?", "What kind of assistant are you?", "Tell me who you are."],
           ["Thanks", "Thank you!", "Many thanks.", "Thanks so much!", "Cheers, thanks", "Thank you very much",
            "Perfect, thanks.", "Much appreciated.", "I appreciate it, thanks",
            "Thx", "Thanks again", "Awesome, thanks!", "Nice, thanks", "OK thanks", "Thank you so much"],
           ["How are things?", "How's it going?", "Are you ok?", "How do you do?", "Is anyone there?",
            "How have you been?", "How's your day?",
            "How are you today?", "How's everything?", "You doing ok?", "Still there?", "Are you around?"],
           ["Goodbye", "Bye!", "See you", "Farewell", "Good night", "Later!", "Catch you later", "Talk to you soon",
            "Bye for now",
            "Bye now", "See ya", "Take care", "Have a good one", "I'm leaving, bye", "See you tomorrow"],
           ["What can you help with?", "What are you able to do?", "Help me", "What do you do?", "Show me what you can do.",
            "What are your skills?", "Can you assist me?", "I need some help.",
            "How do you work?", "What are your features?", "What tools can you use?", "What are you good at?"]],
    "zh": [["你好！", "嗨，你好", "下午好", "喂", "哈喽你好", "大家好", "早安", "中午好", "嘿", "有人吗？",
            "嗨嗨", "哈啰", "喂，你好", "上午好"],
           ["你是谁", "你是什么模型？", "请介绍一下自己", "你是机器人吗？", "你叫啥？", "我在跟谁说话？",
            "你是哪个模型？", "说说你是谁", "你是人工智能吗？"],
           ["谢谢！", "感谢", "太感谢了", "谢啦", "多谢你", "辛苦了，谢谢", "感激不尽",
            "谢了", "万分感谢", "好的，谢谢", "谢谢啦"],
           ["你好吗", "过得好吗？", "最近好吗？", "你怎么样？", "最近过得如何？",
            "你今天好吗？", "最近还好吧？", "近来可好？", "一切都好吗？"],
           ["再见！", "拜拜！", "明天见", "晚安", "先走了，再见", "周末见", "一会儿见", "改天见",
            "回见", "我走了，拜", "明儿见", "再会"],
           ["你能干什么？", "你可以帮我做什么？", "你有哪些本领？", "帮我一下", "你会些什么？", "你有什么用？",
            "你能帮我什么？", "你都会什么？", "你有什么技能？", "你擅长什么？"]],
}


def _plain(rng: random.Random, lang: str, split: str) -> Example:
    group = rng.randrange(len(_PLAIN[lang]))
    asks, answer = _PLAIN[lang][group]
    request = rng.choice(_half(asks, split, _PLAIN_MORE[lang][group]))
    msgs = [Message("system", _date(rng)), Message("user", request), Message("assistant", answer)]
    fn = [_function(rng, split)[0]] if rng.random() < 0.2 else []
    return Example("plain", lang, msgs, _tools_for(rng, set(), fn), [False, False, True],
                   expect={"tool": None, "answer": answer})


# ---- an error, then a corrected call ----------------------------------------------------------

def python_error_code(code: str, rng: random.Random, cell: int = 1) -> tuple[str, str]:
    """A broken version of `code` and the traceback a Jupyter kernel prints for it as its `cell`th
    execution (`python` renders it without a trailing newline)."""
    if rng.random() < 0.5:
        bad = code[:-1]  # the closing parenthesis is missing
        caret = " " * (len(bad) + 4)
        return bad, f"  Cell In[{cell}], line 1\n    {bad}\n{caret}^\nSyntaxError: incomplete input"
    bad = code.replace("print(", "pritn(", 1)
    return bad, ("---------------------------------------------------------------------------\n"
                 "NameError                                 Traceback (most recent call last)\n"
                 f"Cell In[{cell}], line 1\n----> 1 {bad}\n\nNameError: name 'pritn' is not defined")


def function_error_args(task: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
    """Wrong arguments for a function task: an integer written as text, or a missing parameter."""
    args = dict(task["args"])
    ints = [p for p, t in task["defn"]["params"] if t == "integer"]
    if ints and rng.random() < 0.6:
        args[ints[0]] = f"{args[ints[0]]} units"
        return args
    if len(args) > 1:
        args.pop(next(iter(args)))
        return args
    args = {k + "_name": v for k, v in args.items()}
    return args


def _error(rng: random.Random, lang: str, split: str) -> Example:
    from tools.registry import ToolRegistry  # the registry's own words for the error observation

    if rng.random() < 0.5:
        request, code, v, answer = _python_task(rng, lang, split)
        # a session's kernel counts its executions: the error is rarely its first cell
        bad, trace = python_error_code(code, rng, rng.randint(1, 150) if split == "train" else 1)
        msgs = [Message("system", _date(rng)), Message("user", request), Message("assistant", bad, "python"),
                Message("observation", trace), Message("assistant", code, "python"), Message("observation", v),
                Message("assistant", answer.format(v=v))]
        return Example("error", lang, msgs, _tools_for(rng, {"python"}, []),
                       [False, False, False, False, True, False, True],
                       expect={"tool": "python", "code": code, "value": v, "bad": bad})
    task = function_task(rng, lang, split)
    bad = function_error_args(task, rng)
    reg = ToolRegistry()
    reg.add(_spec_tool(task["spec"]))
    err = reg.check(task["spec"].name, bad).error
    v = function_value(task["defn"], task["args"])
    name = task["spec"].name
    msgs = [Message("system", _date(rng)), Message("user", task["request"]),
            Message("assistant", json.dumps(bad, ensure_ascii=False), name), Message("observation", f"Error: {err}"),
            Message("assistant", json.dumps(task["args"], ensure_ascii=False), name), Message("observation", v),
            Message("assistant", task["answer"].format(v=v))]
    ex = Example("error", lang, msgs, _tools_for(rng, set(), [task["spec"]]),
                 [False, False, False, False, True, False, True],
                 expect={"tool": name, "args": task["args"], "value": v, "bad": bad})
    ex.functions = [task["defn"]]
    return ex


def _spec_tool(spec: ToolSpec) -> Any:
    from tools.base import Tool

    class _Declared(Tool):
        name, description, parameters = spec.name, spec.description, spec.parameters

        def call(self, arguments, ctx):  # pragma: no cover - only checked, never run
            raise NotImplementedError

    return _Declared()


# ---- phrasings written blind ------------------------------------------------------------------

# More training-only phrasings, for the kinds whose held-out phrasings are the furthest from
# training: the six plain replies, the python tasks, search and user functions. Helpers wrote them from a
# description of each kind (what the user means, the reply, the slots) without seeing this file,
# the held-out phrasings or any failure, so they broaden what each kind can sound like without
# aiming at the evaluation. `blind_phrasings` drops every one that is a held-out phrasing up to
# case, punctuation, contractions and a leading or trailing filler word (`_near`), or holds one of
# more than a word (`_contains`), and every plain one that is another kind's; the rest join `_MORE`
# and `_PLAIN_MORE` inside `blind_pools()`. Inside `crossing_filter()` (not for the shipped
# weights), training also leaves out every phrasing, blind or hand-written, that holds a held-out
# phrasing of another reply at any length and in either language (`_crosses`: the Chinese greeting
# "hello" is the English held-out "Hello").
BLIND_FILE = Path(__file__).with_name("blind_phrasings.json")
PLAIN_KINDS = ("greeting", "identity", "thanks", "how_are_you", "farewell", "capabilities")
_CONTRACTIONS = {"what's": "what is", "how's": "how is", "who's": "who is", "where's": "where is",
                 "that's": "that is", "it's": "it is", "let's": "let us", "i'm": "i am", "you're": "you are",
                 "can't": "can not", "cannot": "can not", "don't": "do not", "i'd": "i would", "i'll": "i will",
                 "what're": "what are", "thx": "thanks", "u": "you", "ur": "your"}
_EDGE_FILLERS = {"en": {"ok", "okay", "so", "well", "um", "hmm", "oh", "alright", "please", "just", "now", "then"},
                 "zh": {"嗯", "哦", "噢", "请", "那个", "好的", "麻烦", "吧", "呢", "啊", "呀"}}


def _near(text: str, lang: str) -> str:
    """`text` reduced to what makes it a phrasing: no case, punctuation, contractions or a filler
    word at either end ("OK, what's the sum of {items}?" and "What is the sum of {items}" meet)."""
    if lang == "zh":
        bare = _bare(text)
        for f in sorted(_EDGE_FILLERS["zh"], key=len, reverse=True):
            if bare.startswith(f) and len(bare) > len(f):
                bare = bare[len(f):]
            if bare.endswith(f) and len(bare) > len(f):
                bare = bare[:-len(f)]
        return bare
    words = [_CONTRACTIONS.get(w, w) for w in re.findall(r"\{\w+\}|[a-z0-9']+|[*^+×-]", text.lower().replace("’", "'"))]
    words = " ".join(words).split()
    while len(words) > 1 and words[0] in _EDGE_FILLERS["en"]:
        words = words[1:]
    while len(words) > 1 and words[-1] in _EDGE_FILLERS["en"]:
        words = words[:-1]
    return " ".join(words)


def _contains(near: str, held: str, lang: str, any_length: bool = False) -> bool:
    """Whether the phrasing `near` holds the held-out phrasing `held` (both `_near`), where that is
    more than one word (English) or two characters (Chinese), or of any length with `any_length`:
    "What is your name, assistant?" holds "What is your name?". A held-out phrasing of one word
    only excludes itself, not the word."""
    if lang == "zh":
        return (any_length or len(held) > 2) and held in near
    return (any_length or " " in held) and f" {held} " in f" {near} "


def _held_out_pools(lang: str) -> dict[str, list[str]]:
    """Each blind key's phrasing pool as `_half` splits it (held-out: the odd positions)."""
    pools = {k: _PLAIN[lang][g][0] for g, k in enumerate(PLAIN_KINDS)}
    pools.update({"arith": _ARITH[lang], "len": _LEN_EN if lang == "en" else _LEN_ZH, "pow": _POW[lang],
                  "search": _SEARCH_EN if lang == "en" else _SEARCH_ZH,
                  "function": _FN_ASK_EN if lang == "en" else _FN_ASK_ZH})
    pools.update({k: v[1 if lang == "en" else 2] for k, v in _LIST_TASKS.items()})
    return pools


def _extra_pool(key: str, lang: str) -> list[str]:
    """The training-only phrasings of a blind key (`_PLAIN_MORE` or `_MORE`)."""
    return _PLAIN_MORE[lang][PLAIN_KINDS.index(key)] if key in PLAIN_KINDS else _MORE[f"{key}_{lang}"]


def _blind_key_pools():
    """(language, key, held-out phrasings, training phrasings before `_crossings`) of every blind key."""
    for lang in ("en", "zh"):
        for key, pool in _held_out_pools(lang).items():
            yield lang, key, pool[1::2], _train_half(pool, _extra_pool(key, lang))


@functools.cache
def _held_by_reply() -> tuple[tuple[str, str, str], ...]:
    """(language, key, `_near` form) of every held-out phrasing that no training phrasing of its own
    key and language is: the phrasings a model can only answer from their words."""
    out = []
    for lang, key, held, train in _blind_key_pools():
        trained = {_near(x, lang) for x in train}
        out += [(lang, key, n) for n in dict.fromkeys(_near(x, lang) for x in held) if n not in trained]
    return tuple(out)


def _crosses(text: str, lang: str, key: str) -> str | None:
    """The held-out phrasing of another reply that the training phrasing `text` (of `key` in `lang`)
    holds, at any length and in either language, or None. "What are you able to do?" (capabilities)
    holds "What are you?" (identity); the Chinese greeting "hello" is the English "Hello". Training
    on it would teach that held-out phrasing the wrong reply."""
    near = {m: _near(text, m) for m in ("en", "zh")}
    for m, k, held in _held_by_reply():
        if (m, k) != (lang, key) and _contains(near[m], held, m, any_length=True):
            return held
    return None


_DROP_CROSSING = False  # set by `crossing_filter`


@contextmanager
def crossing_filter(on: bool = True):
    """Within the block, training leaves out every phrasing that `_crosses` finds (`train.py
    --drop-crossing`): hand-written ones in `_half`, blind ones in `blind_phrasings`. Off by
    default: the shipped weights were trained without it, and the one run with it was no better
    (MODEL_CARD.md). Enter it before `blind_pools`."""
    global _DROP_CROSSING
    before, _DROP_CROSSING = _DROP_CROSSING, on
    try:
        yield
    finally:
        _DROP_CROSSING = before


@functools.cache
def _crossings() -> frozenset[str]:
    """The hand-written training phrasings that `_crosses` finds; `_half` leaves them out. (Blind
    phrasings that cross are dropped in `blind_phrasings`, so none is ever in a pool to find.)"""
    return frozenset(x for lang, key, _, train in _blind_key_pools() for x in train if _crosses(x, lang, key))


_SLOTS = {"arith": ["{a} {op} {b}"], "sum": ["{items}"], "max": ["{items}"], "min": ["{items}"], "mean": ["{items}"],
          "sort": ["{items}"], "len": ["'{w}'"], "pow": ["{a}", "{b}"], "search": ["{t}"], "function": ["{thing}", "{args}"]}


def blind_phrasings(raw: dict | None = None) -> tuple[dict[str, dict[str, list[str]]], list[tuple[str, str, str]]]:
    """The blind phrasings that may be trained on, per language and key, and those dropped, with why."""
    raw = raw if raw is not None else json.loads(BLIND_FILE.read_text(encoding="utf-8"))
    kept: dict[str, dict[str, list[str]]] = {}
    dropped: list[tuple[str, str, str]] = []
    for lang, keys in raw.items():
        pools = _held_out_pools(lang)
        held = {_near(x, lang) for pool in pools.values() for x in pool[1::2]}
        plain_train = {_near(x, lang): k for k in PLAIN_KINDS for x in pools[k][0::2]}
        kept[lang] = {}
        seen: set[tuple[str, str]] = set()  # (key, _near of a kept phrasing)
        for key, phrasings in keys.items():
            if key not in pools:
                raise ValueError(f"{BLIND_FILE.name}: unknown key {key!r} for {lang}")
            kept[lang][key] = []
            for text in phrasings:
                near = _near(text, lang)
                slots = re.findall(r"\{\w*\}", text)
                want = _SLOTS.get(key, [])
                why = ("a held-out phrasing" if near in held else
                       "contains a held-out phrasing" if any(_contains(near, h, lang) for h in held) else
                       "holds another reply's held-out phrasing" if _DROP_CROSSING and _crosses(text, lang, key) else
                       "another kind's phrasing" if plain_train.get(near, key) != key else
                       "a repeat" if (key, near) in seen else
                       "wrong slots" if (sorted(slots) != sorted(re.findall(r"\{\w*\}", " ".join(want)))
                                         or any(w not in text for w in want)) else None)
                if why:
                    dropped.append((lang, text, why))
                    continue
                seen.add((key, near))
                kept[lang][key].append(text)
    return kept, dropped


@contextmanager
def blind_pools(on: bool = True):
    """Within the block, training draws from the blind phrasings too (`train.py --blind`): they
    join the training-only pools, in the file's order, and leave them afterwards."""
    added: list[tuple[list[str], int]] = []  # each pool, and how many phrasings joined it
    if on:
        kept, _ = blind_phrasings()
        for lang, keys in kept.items():
            for key, phrasings in keys.items():
                pool = _extra_pool(key, lang)
                pool.extend(phrasings)
                added.append((pool, len(phrasings)))
    try:
        yield
    finally:
        for pool, n in added:
            del pool[len(pool) - n:]


# ---- generating and encoding ------------------------------------------------------------------

_MAKERS = {"python": _python, "browser": _browser, "cogview": _cogview, "function": _function_example,
           "plain": _plain, "error": _error}


def generate(category: str, n: int, *, seed: int, split: str = "train") -> list[Example]:
    """`n` conversations of `category`, the same for the same seed; half English, half Chinese."""
    if category not in _MAKERS:
        raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
    if split not in ("train", "eval"):
        raise ValueError("split must be train or eval")
    rng = random.Random(f"{category}/{split}/{seed}")
    return [_MAKERS[category](rng, "en" if i % 2 == 0 else "zh", split) for i in range(n)]


WEIGHTS = {"python": 3, "browser": 3, "cogview": 2, "function": 3, "plain": 1, "error": 2}


def mixture(n: int, *, seed: int, weights: dict[str, float] | None = None, vary_ends: float = 0.0,
            fillers: float = 0.0, vary_case: float = 0.0, drop_word: float = 0.0) -> list[Example]:
    """A shuffled training mixture of all categories.

    `vary_ends`: the share of requests whose closing punctuation is changed (`_vary_end`), as people
    type with or without it. `fillers`: the share of requests with a word or two put before their
    values, or before a greeting (`_add_fillers`), so that the model finds the values wherever the
    phrasing puts them and a request's kind whatever comes first. `vary_case`: the share of English
    requests that start with a small letter ("thanks", "look up ..."), as people type them.
    `drop_word`: the share of English plain requests of three words or more that lose one
    (`_drop_a_word`), so that fewer words have to carry a reply; drawn from its own generator, so
    that at 0 the mixture is the one without it."""
    weights = weights or WEIGHTS
    total = sum(weights.values())
    out: list[Example] = []
    for c in CATEGORIES:
        out += generate(c, int(n * weights[c] / total), seed=seed)
    rng = random.Random(seed)
    rng.shuffle(out)
    drop_rng = random.Random(f"drop/{seed}")
    for ex in out:
        if drop_word and ex.category == "plain" and ex.lang == "en" and drop_rng.random() < drop_word:
            shorter = _drop_a_word(ex.messages[1].content, drop_rng)
            if shorter:
                ex.messages[1] = Message("user", shorter)
        if vary_ends and rng.random() < vary_ends:
            ex.messages[1] = Message("user", _vary_end(ex.messages[1].content, ex.lang, rng))
        if fillers and rng.random() < fillers:
            ex.messages[1] = Message("user", _add_fillers(ex.messages[1].content, ex, rng))
        if vary_case and ex.lang == "en" and rng.random() < vary_case:
            text = ex.messages[1].content
            ex.messages[1] = Message("user", text[:1].lower() + text[1:])
        if rng.random() < 0.15:
            _prepend_exchange(ex, rng)
    return out


_ENDS = {"en": ("", ".", "!", "?"), "zh": ("", "。", "！", "？", "?", "!")}


def _drop_a_word(text: str, rng: random.Random) -> str | None:
    """The English request `text` without one of its words after the first (which most often says what
    is asked: "Who are you?" must not become "Are you?"), its closing punctuation kept, or None where
    fewer than two words would be left or what is left holds a held-out plain phrasing of any reply,
    at any length ("Thank you so much" never becomes "Thank you")."""
    words = text.split(" ")
    if len(words) < 3:
        return None
    i = rng.randrange(1, len(words))
    left = words[:i] + words[i + 1:]
    if i == len(words) - 1:
        left[-1] += re.search(r"[.!?]*$", words[i]).group(0)
    shorter = " ".join(left)
    near = _near(shorter, "en")
    if not near or any(_contains(near, held, "en", any_length=True) for held in _plain_held_out_en()):
        return None
    return shorter


@functools.cache
def _plain_held_out_en() -> tuple[str, ...]:
    """The `_near` forms of the English held-out plain phrasings, every reply's."""
    pools = _held_out_pools("en")
    return tuple(dict.fromkeys(_near(x, "en") for k in PLAIN_KINDS for x in pools[k][1::2]))


def _vary_end(text: str, lang: str, rng: random.Random) -> str:
    """`text` with its closing punctuation dropped or replaced by another."""
    body = text.rstrip("".join(set("".join(_ENDS["en"] + _ENDS["zh"]))))
    return body + rng.choice(_ENDS[lang]) if body else text


_FILLERS = {"en": ["please", "now", "hey", "ok", "so", "quickly", "just", "also", "then", "kindly", "again", "next",
                    "hi", "well", "and"],
            "zh": ["请", "嗯", "那个", "麻烦", "现在", "好的", "然后", "还有", "你好", "帮忙"]}
_PLAIN_FILLERS = {"en": ["ok", "well", "so", "oh", "alright", "um", "hmm", "right"], "zh": ["嗯", "好的", "那个", "哦", "噢"]}


def _add_fillers(text: str, ex: Example, rng: random.Random) -> str:
    """`text` with one or two filler words (common ones or made-up ones) inserted before its first
    value: at a word boundary in English (never right before the value, where a made-up word would
    read as part of it), at the start in Chinese (which has no spaces to tell a filler from a topic)."""
    if ex.category == "plain":  # a greeting has no value: a word before it, never one that changes its kind
        lead = rng.choice(_PLAIN_FILLERS[ex.lang]) if rng.random() < 0.6 else _made_up_filler(ex.lang, rng)
        if ex.lang == "zh":
            return lead + rng.choice(["，", "", " "]) + text
        return lead[0].upper() + lead[1:] + rng.choice([", ", " ", "! "]) + text
    start = _first_value(text, ex)
    fills = [rng.choice(_FILLERS[ex.lang]) if rng.random() < 0.6 else _made_up_filler(ex.lang, rng)
             for _ in range(rng.choice([1, 1, 2]))]
    if ex.lang == "zh":
        return "".join(fills) + rng.choice(["，", "", " ", "："]) + text
    words = text[:start].split(" ")  # the last is "" when a space comes before the value
    # a word right before a number can't be read as part of it: a made-up word there is what a
    # held-out "Solve 769 minus 467" looks like (spelled "Solve"), which the model copied as
    # `print(7o - 467)` when training never put one there; before a topic or a name it would merge
    number = ex.expect.get("tool") == "python" and start < len(text) and text[start].isdigit()
    at = rng.randrange(max(1, len(words) - (0 if number else 1)))
    if at == 0:
        lead = " ".join(fills)
        return lead[0].upper() + lead[1:] + rng.choice([", ", " ", ": "]) + text
    return " ".join(words[:at] + fills + words[at:]) + text[start:]


def _made_up_filler(lang: str, rng: random.Random) -> str:
    """A made-up word, or one or two random CJK characters."""
    return _pseudo_word(rng) if lang == "en" else _zh_made_up(rng, 1, 2)


def _first_value(text: str, ex: Example) -> int:
    """Where the first value the model must copy starts in the request (its length if none is found)."""
    e = ex.expect
    values = [e["query"]] if "query" in e else [str(v) for v in e.get("args", {}).values()]
    values += e.get("words", [])[:1]
    found = [text.find(v) for v in values if v and text.find(v) >= 0]
    digits = next((i for i, c in enumerate(text)  # a number, or the quote that opens a word ("Let's" has none)
                   if c.isdigit() or (c == "'" and (i == 0 or not text[i - 1].isalnum()))), len(text))
    return min(found + [digits])


def _prepend_exchange(ex: Example, rng: random.Random) -> None:
    """Put an earlier, finished exchange before the request (as `glm-agent chat` does); not trained."""
    python_ok = any(t.kind == "python" for t in ex.tools)
    maker = _python if python_ok and rng.random() < 0.5 else _plain
    prior = maker(rng, rng.choice(["en", "zh"]), "train")
    ex.messages[1:1] = prior.messages[1:]
    ex.train[1:1] = [False] * (len(prior.messages) - 1)


def encode(ex: Example, tokenizer: Any, stop_ids: dict[str, int]) -> tuple[list[int], list[int]]:
    """Token ids of the whole conversation and the loss targets (-100 where there is no loss).

    The ids are what `render_ids` (the runtime's renderer) makes of the conversation; after each
    trained assistant message comes the token the model must stop on (`<|observation|>` after a
    call, `<|user|>` after an answer).
    """
    from glm_runtime.chat_format import render_ids

    ids = render_ids(ex.messages, ex.tools, tokenizer, add_generation_prompt=False)
    assistant = stop_ids["<|assistant|>"]
    specials = set(stop_ids.values())
    labels = [-100] * len(ids)
    turn = [i for i, m in enumerate(ex.messages) if m.role == "assistant"]
    starts = [k for k, t in enumerate(ids) if t == assistant]
    if len(starts) != len(turn):
        raise ValueError(f"{len(starts)} <|assistant|> markers for {len(turn)} assistant messages")
    for k, mi in zip(starts, turn):
        if not ex.train[mi]:
            continue
        j = k + 1
        while j < len(ids) and ids[j] not in specials:
            labels[j] = ids[j]
            j += 1
        if j < len(ids):
            labels[j] = ids[j]  # the stop token that follows
    if ex.train[-1] and ex.messages[-1].role == "assistant":
        ids.append(stop_ids["<|user|>"])
        labels.append(stop_ids["<|user|>"])
    # labels are the targets of the *previous* position: shift happens in the model's loss
    return ids, labels
