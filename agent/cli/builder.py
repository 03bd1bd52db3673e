"""Building an `Agent` from CLI `Settings`: the backend, the tool registry, the session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from agent.api import Agent
from agent.errors import ModelUnavailable, UserError
from agent.cli.settings import Settings
from agent.session import Session
from glm_runtime.messages import ToolCall

__all__ = ["build_agent", "build_backend", "build_registry"]

DEMO_HINT = ("To try glm-agent without the 9B model, use `--model demo` (a tiny model trained to call the "
             "tools, shipped with the package) or pass a small local checkpoint directory with --model DIR.")


def build_registry(settings: Settings, session: Session) -> Any:
    """The tools the settings enable, working in the session's directories."""
    from tools.registry import ToolRegistry

    reg = ToolRegistry(workdir=session.work_dir, artifacts_dir=session.artifacts_dir)
    for name in settings.enable:
        if name in ("", "none"):
            continue
        options: dict[str, Any] = {}
        if name == "simple_browser":
            options.update(settings.browser_options())
        if name == "cogview" and settings.image_model:
            options["model"] = settings.image_model
        if name == "python":
            options.update(settings.python_options())
        try:
            reg.add_builtin(name, **options)
        except ValueError as e:  # ToolDefinitionError: an unknown built-in name
            raise UserError(str(e)) from None
    for f in settings.tools_files:
        try:
            reg.load(str(Path(f).expanduser()))
        except (ValueError, RuntimeError, OSError, ImportError) as e:
            raise UserError(f"--tools {f}: {e}") from None
    return reg


def build_backend(settings: Settings, *, progress: Callable | None = None, forced_replies: str | None = None) -> Any:
    """The model: an OpenAI-compatible server, or the local engine (downloaded on first use).

    `forced_replies` (a JSON file with one string per step) forces those replies out of the
    local model with a logits processor: a testing hook for end-to-end runs of the CLI.
    """
    if settings.backend_url:
        from glm_runtime.backends.openai import OpenAIBackend

        return OpenAIBackend(settings.backend_url, model=settings.model, api_key=settings.api_key,
                             context_window=settings.context, temperature=settings.temperature)
    model, extra = settings.model, {}
    if model == "demo":
        from glm_runtime.demo import demo_model_dir

        # float32: the tiny model was trained in it, and bf16 rounding can flip its greedy choices
        model, extra = str(demo_model_dir()), {"dtype": "float32"}
    from glm_runtime.backends.local import LocalBackend
    from glm_runtime.checkpoint import CheckpointError
    from glm_runtime.engine import SamplingParams

    try:
        backend = LocalBackend.from_model(
            model, **extra, quantize=settings.quantize, device=settings.device, max_cache_tokens=settings.context,
            progress=progress, lang=settings.lang, constrain_calls=settings.constrain_calls,
            prompt_cache_dir=str(Path(settings.prompt_cache).expanduser()) if settings.prompt_cache else None,
            quantized_cache_dir=str(Path(settings.quantized_cache).expanduser()) if settings.quantized_cache else None,
            sampling=SamplingParams(temperature=settings.temperature, top_p=settings.top_p))
    except CheckpointError as e:
        raise ModelUnavailable(f"cannot load the model {settings.model!r}: {e}\n{DEMO_HINT}") from None
    if forced_replies:
        from glm_runtime.testing import forced_text

        replies = json.loads(Path(forced_replies).read_text(encoding="utf-8"))
        backend.logits_processor = [forced_text(backend.tokenizer, r, then=backend.engine.stop_ids[0])
                                    for r in replies]
    return backend


def build_agent(
    settings: Settings,
    *,
    session: Session | None = None,
    confirm: Callable[[ToolCall], bool] | None = None,
    progress: Callable | None = None,
    forced_replies: str | None = None,
) -> Agent:
    """An Agent for the settings; a new session under `settings.sessions_dir` unless given one."""
    resumed = session is not None
    if session is None:
        session = Session.create(Path(settings.sessions_dir).expanduser(), meta={"model": settings.model})
    registry = None
    try:
        registry = build_registry(settings, session)
        backend = build_backend(settings, progress=progress, forced_replies=forced_replies)
    except BaseException:
        if registry is not None:
            registry.close()
        if not resumed:  # nothing happened in it: leave no empty session behind
            shutil.rmtree(session.path, ignore_errors=True)
        raise
    kwargs = dict(tools=registry, backend=backend, budgets=settings.budgets(), confirmation=settings.confirm,
                  confirm=confirm)
    if resumed:
        return Agent.resume(session, **kwargs)
    return Agent(session=session, **kwargs)
