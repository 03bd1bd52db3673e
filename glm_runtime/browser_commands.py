"""The command grammar GLM-4 writes to its `simple_browser` tool: the one grammar of the project.

The wire-format parser (`chat_format`) checks a call with it before the call reaches the tool,
and the browser tool (`tools.builtin.browser`) runs what it returns, so what the parser lets
through is exactly what the browser can do. The model writes one or more Python-looking calls,
one per line::

    search("北京 天气", recency_days=3)     # recency_days: whole days, >= 1; optional
    mclick([1, 4, 5])                        # or a bare id: mclick(3)
    open_url("https://example.com/")         # page=N for the next piece of a long page:
    open_url("https://example.com/", page=2) # the browser's own observations say so

They are read with `ast` (literals only, nothing is evaluated) and checked against these three
signatures. Anything else raises `BrowserCommandError`, whose message quotes what was wrong
and tells the model what to write instead.

    >>> parse_browser_commands('search("glm-4", recency_days=7)\\nmclick(2)')
    [BrowserCommand(name='search', query='glm-4', recency_days=7, ids=(), url='', page=1), BrowserCommand(name='mclick', query='', recency_days=None, ids=(2,), url='', page=1)]
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any, Literal

from glm_runtime import pyast

__all__ = ["BROWSER_FUNCTIONS", "BROWSER_USAGE", "BrowserCommand", "BrowserCommandError", "parse_browser_commands"]

# name -> parameter names in positional order (the signatures the model is told about).
BROWSER_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "search": ("query", "recency_days"),
    "mclick": ("ids",),
    "open_url": ("url", "page"),
}
BROWSER_USAGE = ('write one command per line: search("query", recency_days=7), mclick([1, 2, 3]) '
                 'or open_url("https://...", page=2)')


class BrowserCommandError(ValueError):
    """The model's `simple_browser` text is not a list of valid commands (the model's fault)."""


@dataclass(frozen=True)
class BrowserCommand:
    """One parsed browser command; only the fields of its `name` are set (`page` is 1 unless asked).

        >>> BrowserCommand("open_url", url="https://a.example/", page=2).page
        2
    """

    name: Literal["search", "mclick", "open_url"]
    query: str = ""
    recency_days: int | None = None
    ids: tuple[int, ...] = ()
    url: str = ""
    page: int = 1


def parse_browser_commands(text: str) -> list[BrowserCommand]:
    """Parse `simple_browser` call text into commands; raise BrowserCommandError if invalid.

    A code fence around the commands is dropped; blank lines and comments are ignored.
    """
    source = _strip_fence(text).strip()
    if not source:
        raise BrowserCommandError(f"simple_browser got no command; {BROWSER_USAGE}")
    try:
        tree, source = _parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        detail = e.msg if isinstance(e, SyntaxError) else type(e).__name__
        raise BrowserCommandError(
            f"simple_browser could not read {_clip(source)!r} ({detail}); {BROWSER_USAGE}") from None
    if not tree.body:  # only comments
        raise BrowserCommandError(f"simple_browser got no command; {BROWSER_USAGE}")
    return [_command(stmt, source) for stmt in tree.body]


def _parse(source: str) -> tuple[ast.Module, str]:
    """The syntax tree and the source it was read from (parsed under `pyast`'s lock)."""
    try:
        return pyast.parse(source), source
    except IndentationError:
        # Commands are one per line, so an indented line is only stray whitespace, not a block.
        source = "\n".join(line.strip() for line in source.splitlines())
        return pyast.parse(source), source


def _command(stmt: ast.stmt, source: str) -> BrowserCommand:
    segment = ast.get_source_segment(source, stmt) or ""
    call = stmt.value if isinstance(stmt, ast.Expr) else None
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise BrowserCommandError(f"simple_browser expects function calls, got {_clip(segment)!r}; {BROWSER_USAGE}")
    name = call.func.id
    if name not in BROWSER_FUNCTIONS:
        raise BrowserCommandError(
            f"simple_browser has no function {name!r}; the functions are search, mclick and open_url: {BROWSER_USAGE}")
    return _typed(name, _bind(name, call, segment), segment)


def _bind(name: str, call: ast.Call, segment: str) -> dict[str, Any]:
    params = BROWSER_FUNCTIONS[name]
    if len(call.args) > len(params):
        raise BrowserCommandError(
            f"{name}() takes at most {len(params)} argument(s) ({', '.join(params)}): {_clip(segment)!r}")
    bound: dict[str, Any] = {}
    pairs = list(zip(params, call.args)) + [(kw.arg, kw.value) for kw in call.keywords]
    for key, node in pairs:
        if key is None or key not in params:
            shown = "**" if key is None else repr(key)
            raise BrowserCommandError(
                f"{name}() has no parameter {shown}; its parameters are {', '.join(params)}: {_clip(segment)!r}")
        if key in bound:
            raise BrowserCommandError(f"{name}() got {key!r} twice: {_clip(segment)!r}")
        try:
            bound[key] = ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            raise BrowserCommandError(
                f"{name}() arguments must be literals (quoted strings, numbers, lists): {_clip(segment)!r}"
            ) from None
    return bound


def _typed(name: str, args: dict[str, Any], segment: str) -> BrowserCommand:
    if name == "search":
        query, days = args.get("query"), args.get("recency_days")
        if not isinstance(query, str) or not query.strip():
            raise BrowserCommandError(
                f'search() needs a non-empty query string, e.g. search("GLM-4 release date"): {_clip(segment)!r}')
        if days is not None and not _is_int(days, 1):
            raise BrowserCommandError(
                f"search() recency_days must be a whole number of days >= 1, got {days!r}: {_clip(segment)!r}")
        return BrowserCommand("search", query=query.strip(), recency_days=days)
    if name == "mclick":
        ids = args.get("ids")
        if _is_int(ids, 0):  # mclick(3): one id without its list
            ids = [ids]
        if not isinstance(ids, (list, tuple)) or not ids or not all(_is_int(i, 0) for i in ids):
            raise BrowserCommandError(
                f"mclick() needs a non-empty list of integer result ids (>= 0), e.g. mclick([1, 3]), "
                f"got {_clip(repr(ids))}: {_clip(segment)!r}")
        return BrowserCommand("mclick", ids=tuple(dict.fromkeys(ids)))  # a repeated id opens once
    url, page = args.get("url"), args.get("page", 1)
    if not isinstance(url, str) or not url.strip():
        raise BrowserCommandError(
            f'open_url() needs a URL string, e.g. open_url("https://example.com"), got {_clip(repr(url))}')
    if not _is_int(page, 1):
        raise BrowserCommandError(
            f"open_url() page must be an integer >= 1, got {_clip(repr(page))}: {_clip(segment)!r}")
    return BrowserCommand("open_url", url=url.strip(), page=page)


def _is_int(x: Any, minimum: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= minimum


def _strip_fence(text: str) -> str:
    s = text.strip()
    if s.startswith("```") and s.endswith("```") and len(s) >= 6:
        s = s[3:-3]
        first, _, rest = s.partition("\n")
        # The first line is a language tag when it has no call in it.
        return rest if "(" not in first else s
    return text


def _clip(s: str, n: int = 120) -> str:
    return s if len(s) <= n else s[:n] + "..."
