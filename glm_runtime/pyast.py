"""`ast.parse` and `ast.literal_eval` made safe to call from several threads at once.

CPython 3.11 counts the AST constructor's recursion depth in state shared by the whole
interpreter. When a garbage collection inside one thread's parse runs a finalizer and the
interpreter switches threads, a second thread's parse moves the same counter, and one of them
raises ``SystemError: AST constructor recursion depth mismatch`` (CPython gh-106905). The browser
tool parses commands from several threads, so every parse in this project goes through one lock.
The lock is reentrant: a finalizer that parses on the thread already holding it does not deadlock.
"""

from __future__ import annotations

import ast
import threading
from typing import Any, Literal

__all__ = ["literal_eval", "parse"]

_LOCK = threading.RLock()


def parse(source: str, mode: Literal["exec", "eval"] = "exec") -> ast.AST:
    """`ast.parse(source, mode=mode)`, one thread at a time."""
    with _LOCK:
        return ast.parse(source, mode=mode)


def literal_eval(node_or_text: ast.AST | str) -> Any:
    """`ast.literal_eval`, with a text parsed under the lock (a node is only walked, never built)."""
    if isinstance(node_or_text, str):
        node_or_text = parse(node_or_text.lstrip(" \t"), mode="eval")
    return ast.literal_eval(node_or_text)
