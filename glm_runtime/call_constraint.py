"""Constrained call headers: the model can only name a tool that exists.

In the "glm4" format the line after each `<|assistant|>` decides what follows: empty (the
answer comes on the next line) or the name of the tool being called. A small or heavily
quantized model sometimes misspells that name (`scan_drancel` for `scan_drusol`), runs it into
the answer (`get_weather{"city"...`) or loops on it; the loop then spends a step on an error.
`CallHeaderConstraint` is a logits processor that, while such a line is being written, masks
every token that would not keep it a prefix of "" or of a declared name followed by a newline.
After the newline the model is free: it still chooses whether to call, which tool, and writes
the arguments itself (the tools check those).

    >>> table = TokenTable(tokenizer)                                                  # doctest: +SKIP
    >>> proc = CallHeaderConstraint(table, ["python", "get_weather"], assistant_id)   # doctest: +SKIP
    >>> engine.generate(prompt_ids, logits_processor=proc)                            # doctest: +SKIP

`LocalBackend` applies it on every step of a "glm4" model unless `constrain_calls=False`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["CallHeaderConstraint", "TokenTable"]


class TokenTable:
    """Every token's text, indexed by its first character (built once per tokenizer).

    Special tokens and tokens that are not whole characters on their own (a piece of a
    multi-byte character) get no text: a tool name is ASCII, so neither can be part of a header.

    Texts are compared as the tokenizer's normalizer writes them: a tokenizer that writes a capital
    as a mark token and its small letter (`glm_runtime.tokenizer.CASE_MARK`) spells "getWeather"
    with the tokens of "get", the mark and "weather", and only in that form does a prefix of the
    name start with a token's text.
    """

    def __init__(self, tokenizer: Any) -> None:
        n = len(tokenizer)
        special = set(getattr(tokenizer, "all_special_ids", ()) or ())
        special |= {i for i in getattr(tokenizer, "added_tokens_decoder", {}) if getattr(
            tokenizer.added_tokens_decoder[i], "special", False)}
        texts = tokenizer.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
        self.texts: list[str] = ["" if i in special or "\ufffd" in t else t for i, t in enumerate(texts)]
        self.by_first: dict[str, list[int]] = {}
        for i, t in enumerate(self.texts):
            if t:
                self.by_first.setdefault(t[0], []).append(i)
        self.decode = lambda ids: tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        normalizer = getattr(backend, "normalizer", None)
        self.normalize = normalizer.normalize_str if normalizer is not None else (lambda text: text)

    def continuing(self, written: str, targets: Iterable[str]) -> list[int]:
        """The tokens after `written` that keep it on the way to one of `targets` (or finish one
        and go on past its end)."""
        out: set[int] = set()
        written = self.normalize(written)
        for target in map(self.normalize, targets):
            if not target.startswith(written) or len(target) == len(written):
                continue
            rest = target[len(written):]
            for i in self.by_first.get(rest[0], ()):
                t = self.texts[i]
                if rest.startswith(t) or t.startswith(rest):
                    out.add(i)
        return sorted(out)


class CallHeaderConstraint:
    """Logits processor: the line after each `<|assistant|>` is empty or a name in `names`.

    `seq` (what the engine passes) is the prompt and the tokens generated so far; the prompt ends
    with `<|assistant|>`. Between calls it only grows, as in `Engine.generate`, which calls
    `reset()` when a generation starts. Once the header line has its newline, logits pass
    through unchanged.
    """

    def __init__(self, table: TokenTable, names: Iterable[str], assistant_id: int) -> None:
        self.table = table
        self.assistant_id = int(assistant_id)
        self.targets = ["\n"] + sorted({n + "\n" for n in names if n and "\n" not in n})
        self._allowed: dict[str, Any] = {}
        self.reset()

    def reset(self) -> None:
        """Forget the sequence (the engine calls this when a generation starts)."""
        self._seen = 0  # how much of `seq` has been looked at
        self._start: int | None = None  # where the current header begins (after its <|assistant|>)
        self._done = True  # the current header has its newline (or there is none)

    def header(self, seq: Sequence[int]) -> str | None:
        """The header line written so far, or None when it is complete (or there is none).

        Incremental: each call looks only at the tokens added since the last one, so a long reply
        costs nothing per token once its header is written.
        """
        if len(seq) < self._seen:  # another sequence: start over
            self.reset()
        for i in range(self._seen, len(seq)):
            if seq[i] == self.assistant_id:
                self._start, self._done = i + 1, False
        self._seen = len(seq)
        if self._done:
            return None
        written = self.table.decode(seq[self._start:]) if self._start < len(seq) else ""
        if "\n" in written:
            self._done = True
            return None
        return written

    def __call__(self, seq: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        import torch

        written = self.header(seq)
        if written is None:
            return logits
        mask = self._allowed.get(written)
        if mask is None:
            ids = [i for i in self.table.continuing(written, self.targets) if i < logits.shape[-1]]
            if not ids:  # cannot happen with a byte-level vocabulary ("\n" is a token); never block
                return logits
            mask = torch.full(logits.shape, float("-inf"), dtype=logits.dtype, device=logits.device)
            mask[torch.tensor(ids, device=logits.device)] = 0.0
            self._allowed[written] = mask
        return logits + mask
