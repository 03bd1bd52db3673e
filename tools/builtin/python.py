"""The `python` built-in: a stateful Jupyter kernel in the sandbox, one per session.

The model writes code; it runs in the session's kernel with the work directory at
`/mnt/data`; the model reads back bounded, ANSI-free text, and images (PNG, JPEG) are saved
as artifacts with a one-line reference. A cell past its timeout is interrupted; if it
ignores that, or the kernel dies (os._exit, out of memory), the kernel is restarted and the
model is told its state was lost.

    >>> from tools.builtin.python import PythonTool
    >>> PythonTool(timeout=30, memory_mb=512).kind
    'python'
"""

from __future__ import annotations

import base64
import itertools
import re
import threading
import time
from pathlib import Path
from typing import Any

from prompts import tool_description
from sandbox import Execution, Kernel, Policy
from tools.artifacts import numbered, save_new
from tools.base import Tool, ToolContext, ToolResult
from tools.errors import ToolInputError

__all__ = ["PythonTool", "render"]

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg"}


def _strip_ansi(text: str) -> str:
    return ANSI.sub("", text).replace("\r\n", "\n")


def _bound(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters omitted ...]\n{text[-half:]}"


def render(result: Execution, images: list[str], limit: int) -> str:
    """The text the model reads for one execution: output, result, images, error, notes.

    Each part loses its trailing newlines (a print's, or the one IPython leaves after a
    SyntaxError's caret), so an observation never ends in a blank line whatever raised it.

        >>> render(Execution(status="ok", stdout="2\\n"), [], 1000)
        '2'
    """
    parts = []
    if result.stdout:
        parts.append(result.stdout.rstrip("\n"))
    if result.stderr:
        parts.append(result.stderr.rstrip("\n"))
    for d in result.displays:
        if not any(m in d.data for m in IMAGE_TYPES) and "text/plain" in d.data:
            parts.append(d.data["text/plain"])
    parts.extend(f"[image saved: {name}]" for name in images)
    if result.error is not None:
        parts.append((result.error.traceback or f"{result.error.ename}: {result.error.evalue}").rstrip("\n"))
    parts.extend(f"[sandbox: {note}]" for note in result.notes)
    text = _strip_ansi("\n".join(parts))
    return _bound(text, limit)


class PythonTool(Tool):
    """Runs the model's code in a sandboxed, stateful kernel. Settings become the sandbox `Policy`.

        >>> PythonTool(timeout=10, network=False).policy.timeout
        10
    """

    name = "python"
    kind = "python"
    description = tool_description("python", lang="en")
    parameters = {"type": "object", "properties": {"code": {"type": "string", "description": "Python code"}},
                  "required": ["code"]}
    self_timed = True

    def __init__(
        self,
        timeout: float = 60.0,
        *,
        memory_mb: int = 1024,
        cpu_seconds: int = 3600,
        max_processes: int = 64,
        disk_mb: int = 512,
        network: bool = False,
        output_chars: int = 8000,
        isolation: str = "auto",
        allow_unsafe: bool = False,
    ) -> None:
        self.timeout = timeout
        self.output_chars = output_chars
        self.policy = Policy(timeout=timeout, memory_mb=memory_mb, cpu_seconds=cpu_seconds,
                             max_processes=max_processes, disk_mb=disk_mb, network=network,
                             output_limit=max(output_chars * 4, 10_000), isolation=isolation,
                             allow_unsafe=allow_unsafe)
        self.kernel: Kernel | None = None
        self._lock = threading.Lock()
        self._images = itertools.count(1)  # image numbers, kept across calls

    def setup(self, ctx: ToolContext) -> None:
        """Start the kernel with `ctx.workdir` mounted at /mnt/data (once; later calls reuse it)."""
        with self._lock:
            if self.kernel is None:
                kernel = Kernel(ctx.workdir, self.policy)
                kernel.start()
                self.kernel = kernel

    def call(self, arguments: dict[str, Any] | str, ctx: ToolContext) -> ToolResult:
        code = arguments.get("code") if isinstance(arguments, dict) else arguments
        if not isinstance(code, str) or not code.strip():
            raise ToolInputError("expected Python code to run")
        if self.kernel is None:
            self.setup(ctx)
        timeout = self.timeout if ctx.deadline is None else max(0.1, ctx.deadline - time.monotonic())
        result = self.kernel.execute(code, timeout=timeout, cancelled=ctx.cancelled)
        paths = self._save_images(result, ctx.artifacts_dir)
        content = render(result, [p.name for p in paths], self.output_chars)
        if not content:
            content = "[no output]"
        meta = {"status": result.status, "state_lost": result.state_lost, "duration": round(result.duration, 3)}
        return ToolResult(content=content, artifacts=paths, is_error=not result.ok, metadata=meta)

    def _save_images(self, result: Execution, artifacts_dir: Path) -> list[Path]:
        paths = []
        for d in result.displays:
            mime = next((m for m in IMAGE_TYPES if m in d.data), None)  # one file per display, PNG first
            if mime is None:
                continue
            try:
                data = base64.b64decode(d.data[mime], validate=False)
            except (ValueError, TypeError):
                continue
            try:
                paths.append(self._write_artifact(artifacts_dir, IMAGE_TYPES[mime], data))
            except OSError as e:  # e.g. a link planted where the artifacts directory was
                result.notes.append(f"an image could not be saved: {e.strerror}")
        return paths

    def _write_artifact(self, artifacts_dir: Path, ext: str, data: bytes) -> Path:
        # The artifacts directory may lie inside the work directory, where sandboxed code can plant
        # links: `save_new` never follows one there, and passes over names already taken.
        workdir = self.kernel.workdir if self.kernel else None
        return save_new(artifacts_dir, data, numbered(f"python-{{:03d}}.{ext}", self._images), within=workdir)

    def close(self) -> None:
        """Shut the kernel down; no process, bubblewrap or cgroup is left. Safe to repeat."""
        with self._lock:
            if self.kernel is not None:
                self.kernel.shutdown()
                self.kernel = None
