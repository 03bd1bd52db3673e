"""Loading the GLM-4 tokenizer from a checkpoint directory, without remote code.

Two layouts exist in the wild:

- `tokenizer.json` (glm-4-9b-chat-hf, GLM-4-0414, GLM-4.5+): a Hugging Face fast tokenizer.
- `tokenizer.model` + `tokenizer_config.json` (glm-4-9b-chat, glm-4-9b-chat-1m): tiktoken-format
  BPE ranks read by a remote-code `ChatGLM4Tokenizer`. We convert the ranks to a fast tokenizer
  once (a few seconds) and cache the result by the file's hash.

Role and control markers (`<|user|>`, `[gMASK]`, ...) are special tokens in both cases.

    >>> tok = load_tokenizer("../shared/glm4")          # doctest: +SKIP
    >>> tok.encode("<|user|>\\n你好", add_special_tokens=False)  # doctest: +SKIP
    [151336, 198, 109377]
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = ["CASE_MARK", "GLM4_PATTERN", "GLM4_SPECIAL_TOKENS", "TokenizerError", "default_cache_dir",
           "drop_stray_marks", "load_tokenizer", "marks_case", "unfinished"]

# The split pattern of GLM-4's tiktoken encoding (the `cl100k_base` pattern).
GLM4_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

GLM4_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
    "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>",
)

# A tokenizer may write a capital letter as this mark before the small letter ("Help" as
# "\ue000help"): its normalizer adds the mark and its decoder takes it away, so "Help" and "help" are
# the same word to the model (the demo model's tokenizer, `scripts/demo/train.py --case-mark`).
# A private-use character: no text a user writes is expected to hold it.
CASE_MARK = "\ue000"


def unfinished(text: str) -> bool:
    """Whether decoded text ends part-way through a character: half of a multi-byte character
    (decoded as U+FFFD) or a case mark whose letter is still to come. A streaming printer holds
    such text back until the next token."""
    return text.endswith(("\ufffd", CASE_MARK))


def marks_case(tokenizer: Any) -> bool:
    """Whether `tokenizer` writes a capital as `CASE_MARK` and its small letter."""
    normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
    return normalizer is not None and normalizer.normalize_str("A") == CASE_MARK + "a"


def drop_stray_marks(text: str) -> str:
    """Decoded `text` of a case-marking tokenizer without the marks no letter follows: the decoder
    has turned each mark and its letter into the capital, so a mark left inside the text is one
    the model wrote before a space or a digit, and means nothing. A mark at the very end stays:
    its letter may come with the next token (`unfinished`)."""
    body, end = (text[:-1], CASE_MARK) if text.endswith(CASE_MARK) else (text, "")
    return body.replace(CASE_MARK, "") + end


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "glm-agent" / "tokenizers"


class TokenizerError(RuntimeError):
    """The checkpoint directory has no tokenizer we can load (missing or malformed files)."""


def load_tokenizer(path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> PreTrainedTokenizerFast:
    """Load the tokenizer of the checkpoint at `path` as a fast tokenizer.

    The chat template, when `tokenizer_config.json` has one, is kept on the returned object.
    """
    path = Path(path)
    if (path / "tokenizer.json").is_file():
        return _load_fast(path)
    if (path / "tokenizer.model").is_file():
        return _load_tiktoken(path, Path(cache_dir) if cache_dir else default_cache_dir())
    raise TokenizerError(
        f"no tokenizer in {path}: expected tokenizer.json, or tokenizer.model with tokenizer_config.json"
    )


def _read_config(path: Path) -> dict[str, Any]:
    cfg_file = path / "tokenizer_config.json"
    if not cfg_file.is_file():
        return {}
    try:
        return json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{cfg_file} is not valid JSON: {e}") from e


def _load_fast(path: Path) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    cfg = _read_config(path)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    if cfg.get("chat_template"):
        tok.chat_template = cfg["chat_template"]
    for key in ("eos_token", "pad_token"):
        if isinstance(cfg.get(key), str):
            setattr(tok, key, cfg[key])
    return tok


def _load_tiktoken(path: Path, cache_dir: Path) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    cfg = _read_config(path)
    ranks = path / "tokenizer.model"
    specials = _special_tokens(cfg)
    key = hashlib.sha256(ranks.read_bytes() + json.dumps(specials).encode()).hexdigest()[:24]
    cached = cache_dir / key / "tokenizer.json"
    if not cached.is_file():
        try:
            _convert_ranks(ranks, specials, cached)
        except (ValueError, KeyError, UnicodeError) as e:
            raise TokenizerError(f"{ranks} is not a tiktoken ranks file (base64 token, space, rank per line): {e}") from e
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(cached),
        eos_token=cfg.get("eos_token", "<|endoftext|>"),
        pad_token=cfg.get("pad_token", "<|endoftext|>"),
        additional_special_tokens=specials,
        clean_up_tokenization_spaces=False,
    )
    if cfg.get("chat_template"):
        tok.chat_template = cfg["chat_template"]
    return tok


def _special_tokens(cfg: dict[str, Any]) -> list[str]:
    """Special tokens in id order: from `added_tokens_decoder` when present, else GLM-4's set."""
    decoder = cfg.get("added_tokens_decoder") or {}
    if decoder:
        return [decoder[k]["content"] for k in sorted(decoder, key=int)]
    return list(GLM4_SPECIAL_TOKENS)


def _convert_ranks(ranks: Path, specials: list[str], dest: Path) -> None:
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(
        vocab_file=str(ranks), pattern=GLM4_PATTERN, extra_special_tokens=specials
    ).converted()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a crash never leaves a half-written cache entry.
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".tmp")
    os.close(fd)
    try:
        backend.save(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
