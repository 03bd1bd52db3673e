"""Settings of the `glm-agent` command line: defaults < TOML config file < environment < flags.

The config file is `--config FILE`, else `$GLM_AGENT_CONFIG`, else
`~/.config/glm-agent/config.toml` when it exists. Its keys are the field names below; the
environment spells them `GLM_AGENT_<NAME>` (`GLM_AGENT_MODEL`, `GLM_AGENT_MAX_STEPS`, ...).

    # ~/.config/glm-agent/config.toml
    model = "/models/glm-4-9b-chat-int4"
    enable = ["python", "simple_browser"]
    tools_files = ["~/my_tools.py"]
    max_steps = 30
    confirm = "ask"
    python_memory_mb = 2048      # the python tool's sandbox limits (also python_timeout,
    python_disk_mb = 1024        # python_max_processes); GLM_AGENT_PYTHON_MEMORY_MB=2048 works too
    search_backend = "searxng"   # simple_browser's search: duckduckgo (default), searxng or brave
    searxng_url = "http://127.0.0.1:8888"
    # search_api_key: Brave's key; better in $GLM_AGENT_SEARCH_API_KEY than in a file

Only the CLI reads these; the library takes explicit arguments (`Agent(...)`).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from agent.api import DEFAULT_MODEL
from agent.decision import Budgets
from agent.errors import UserError
from agent.session import default_sessions_root

__all__ = ["PYTHON_LIMITS", "SEARCH_BACKENDS", "Settings", "browser_options", "load_settings", "python_options"]

ENV_PREFIX = "GLM_AGENT_"


@dataclass
class Settings:
    model: str = DEFAULT_MODEL
    quantize: str = "auto"
    device: str = "auto"
    context: int | None = None  # tokens of context to allow (bounds the KV cache); model's own if None
    backend_url: str | None = None  # an OpenAI-compatible server (vLLM, SGLang) instead of a local model
    api_key: str | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    enable: list[str] = field(default_factory=lambda: ["python", "simple_browser"])
    tools_files: list[str] = field(default_factory=list)
    max_steps: int = 20
    max_tool_calls: int = 50
    max_seconds: float | None = None
    max_tokens: int | None = None
    max_new_tokens: int = 1024
    sessions_dir: str = field(default_factory=lambda: str(default_sessions_root()))
    confirm: str = "ask"
    allow_private_network: bool = False
    image_model: str | None = None
    lang: str = "zh"
    # A local GLM-4 model may name only declared tools (glm_runtime.call_constraint); false lets
    # it write any name, which the loop then answers with an error.
    constrain_calls: bool = True
    # The python tool's sandbox limits; None keeps the tool's default (60 s, 1024 MiB, 64, 512 MiB).
    python_timeout: float | None = None
    python_memory_mb: int | None = None
    python_max_processes: int | None = None
    python_disk_mb: int | None = None
    # simple_browser's web search; the key is a secret: never shown in repr, messages or logs.
    search_backend: str = "duckduckgo"
    searxng_url: str | None = None
    search_api_key: str | None = field(default=None, repr=False)
    # The local engine's KV caches of prompt prefixes (the system prompt), kept for later runs;
    # "none" turns it off. Bounded to 2 GiB, least recently used first out.
    prompt_cache: str | None = field(default_factory=lambda: str(default_prompt_cache_dir()))
    # Where a float checkpoint quantized on load is saved once, so later starts skip quantizing;
    # "none" turns it off.
    quantized_cache: str | None = field(default_factory=lambda: str(default_quantized_cache_dir()))

    def budgets(self) -> Budgets:
        return Budgets(max_steps=self.max_steps, max_tool_calls=self.max_tool_calls, max_seconds=self.max_seconds,
                       max_tokens=self.max_tokens, max_new_tokens=self.max_new_tokens)

    def python_options(self) -> dict[str, Any]:
        """Keyword arguments for `add_builtin("python", ...)`: the limits that are set."""
        return python_options(dataclasses.asdict(self))

    def browser_options(self) -> dict[str, Any]:
        """Keyword arguments for `add_builtin("simple_browser", ...)`."""
        return browser_options(dataclasses.asdict(self))


# Settings key -> PythonTool keyword; `glm-agent tools call` takes the same --python-* flags.
PYTHON_LIMITS = {"python_timeout": "timeout", "python_memory_mb": "memory_mb",
                 "python_max_processes": "max_processes", "python_disk_mb": "disk_mb"}


def python_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The python tool's keyword arguments from `python_*` settings; UserError if one is not positive.

        >>> python_options({"python_memory_mb": 256, "python_timeout": None, "model": "x"})
        {'memory_mb': 256}
    """
    out = {}
    for key, kwarg in PYTHON_LIMITS.items():
        value = values.get(key)
        if value is None:
            continue
        if value <= 0:
            raise UserError(f"{key} (--{key.replace('_', '-')}) must be positive, not {value:g}")
        out[kwarg] = value
    return out


SEARCH_BACKENDS = ("duckduckgo", "searxng", "brave")


def browser_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """simple_browser's keyword arguments from the settings; UserError naming the flag if one is missing.

        >>> browser_options({"search_backend": "searxng", "searxng_url": "http://127.0.0.1:8888"})
        {'search_backend': 'searxng', 'searxng_url': 'http://127.0.0.1:8888'}
    """
    out: dict[str, Any] = {}
    if values.get("allow_private_network"):
        out["allow_private_network"] = True
    backend = values.get("search_backend") or "duckduckgo"
    if backend not in SEARCH_BACKENDS:
        raise UserError(f"search_backend (--search-backend) must be one of {', '.join(SEARCH_BACKENDS)}, "
                        f"not {backend!r}")
    if backend == "searxng" and not values.get("searxng_url"):
        raise UserError("--search-backend searxng needs --searxng-url URL (or searxng_url in the config file, "
                        f"or ${ENV_PREFIX}SEARXNG_URL)")
    if backend == "brave" and not values.get("search_api_key"):
        raise UserError(f"--search-backend brave needs a Brave Search API key: set ${ENV_PREFIX}SEARCH_API_KEY "
                        "(or --search-api-key)")
    if backend != "duckduckgo":
        out["search_backend"] = backend
    if values.get("searxng_url"):
        out["searxng_url"] = values["searxng_url"]
    if values.get("search_api_key"):
        out["search_api_key"] = values["search_api_key"]
    return out


def _user_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "glm-agent"


def default_prompt_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/glm-agent/prompt-cache`, else `~/.cache/glm-agent/prompt-cache`."""
    return _user_cache_dir() / "prompt-cache"


def default_quantized_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/glm-agent/quantized`, else `~/.cache/glm-agent/quantized`."""
    return _user_cache_dir() / "quantized"


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """Turn a TOML or environment value into the field's type; UserError naming the key if not."""
    text = str(kind)
    try:
        if value is None or (isinstance(value, str) and value.lower() in ("", "none") and "None" in text):
            return None
        if text.startswith("list"):
            return [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else list(value)
        if text.startswith("bool"):
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if text.startswith("int"):
            return int(value)
        if text.startswith("float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise UserError(f"setting {name!r}: cannot read {value!r} as {text}") from None


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    config: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge the layers; a flag given as None means "not given" and does not override.

        >>> load_settings({"max_steps": 5}, environ={"GLM_AGENT_MAX_STEPS": "9"}).max_steps
        5
        >>> load_settings({}, environ={"GLM_AGENT_MAX_STEPS": "9"}).max_steps
        9
    """
    environ = os.environ if environ is None else environ
    fields = {f.name: f.type for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    path = config or environ.get(ENV_PREFIX + "CONFIG")
    default_path = Path(environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "glm-agent" / "config.toml"
    if path is None and default_path.is_file():
        path = default_path
    if path is not None:
        try:
            data = tomllib.loads(Path(path).expanduser().read_text(encoding="utf-8"))
        except OSError as e:
            raise UserError(f"cannot read the config file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"the config file {path} is not valid TOML: {e}") from None
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise UserError(f"the config file {path} has unknown keys: {', '.join(unknown)}; "
                            f"known: {', '.join(fields)}")
        values.update({k: _coerce(k, v, fields[k]) for k, v in data.items()})
    for name, kind in fields.items():
        if ENV_PREFIX + name.upper() in environ:
            values[name] = _coerce(name, environ[ENV_PREFIX + name.upper()], kind)
    for name, value in (flags or {}).items():
        if value is not None and name in fields:
            values[name] = _coerce(name, value, fields[name])
    s = Settings(**values)
    if s.confirm not in ("ask", "auto", "deny"):
        raise UserError(f"confirm must be ask, auto or deny, not {s.confirm!r}")
    s.python_options()  # a limit that is not positive is the user's error, named here
    if s.search_backend not in SEARCH_BACKENDS:  # a missing URL or key matters only if the browser is enabled
        raise UserError(f"search_backend (--search-backend) must be one of {', '.join(SEARCH_BACKENDS)}, "
                        f"not {s.search_backend!r}")
    return s
