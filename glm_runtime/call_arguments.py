"""Reading the arguments of a tool call as GLM models write them.

- JSON (GLM-4's `name\\n{json}`): taken as written when valid; repaired only where the intent is
  unambiguous (a Markdown fence around it, a Python-style dict, nothing written means `{}`), and
  the repair is named; otherwise an error the model can act on (cut off, text around it, ...).
- `<arg_key>k</arg_key><arg_value>v</arg_value>` pairs (GLM-4.5+): values typed by the tool's
  JSON Schema (strings as written, anything else read as JSON).
- Code, with or without a Markdown fence (GLM-4's `python` calls).

Every reader returns `(value, repair, error)` and never raises on model output.

    >>> read_json_arguments("f", '```json\\n{"a": 1}\\n```')
    ({'a': 1}, 'removed a Markdown code fence around the JSON', None)
    >>> strip_code_fence("```python\\nprint(1)\\n```")
    ('print(1)', None)
"""

from __future__ import annotations

import json
import re
from typing import Any

from glm_runtime import pyast
from glm_runtime.messages import ToolSpec

__all__ = ["read_json_arguments", "read_xml_arguments", "strip_code_fence"]


_FENCE = re.compile(r"\A\s*```[^\n`]*\n(.*?)(?:\n[ \t]*```[ \t]*(?:\n(.*))?)?\Z", re.S)


def strip_code_fence(body: str) -> tuple[str, str | None]:
    """Code with a Markdown fence removed; the fence is optional in GLM-4's python calls."""
    m = _FENCE.match(body)
    if m is None:
        return body.strip("\n").rstrip(), None
    after = (m.group(2) or "").strip()
    code = m.group(1).rstrip("`").rstrip() if m.group(2) is None else m.group(1)
    return code.strip("\n").rstrip(), ("ignored text after the code fence" if after else None)


def read_json_arguments(name: str, body: str) -> tuple[dict[str, Any], str | None, str | None]:
    """(arguments, repair, error) for a JSON function call's body."""
    s = body.strip()
    if not s:
        return {}, "no arguments were written; read them as {}", None
    repair = None
    unfenced = _unfence_json(s)
    if unfenced is not None:
        s, repair = unfenced, "removed a Markdown code fence around the JSON"
    try:
        value = json.loads(s)
    except RecursionError:
        return {}, None, f"the arguments of `{name}` are nested too deeply to read"
    except ValueError as e:
        return _repair_json(name, s, e)
    if not isinstance(value, dict):
        kind = type(value).__name__
        return {}, None, f"the arguments of `{name}` must be one JSON object like {{\"key\": value}}, not a {kind}"
    return value, repair, None


def _unfence_json(s: str) -> str | None:
    m = re.fullmatch(r"```(?:json|JSON)?[ \t]*\n?(.*?)\n?[ \t]*```", s, re.S)
    return m.group(1).strip() if m else None


def _repair_json(name: str, s: str, e: ValueError) -> tuple[dict[str, Any], str | None, str | None]:
    if _unclosed(s):
        return {}, None, (
            f"the arguments of `{name}` end before the JSON object is complete (the reply was cut off?): "
            f"...{_clip(s[-60:], 60)!r}; write the whole JSON object again"
        )
    try:
        value = pyast.literal_eval(s)  # literals only: Python-style quotes and True/False/None
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        value = None
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        try:
            return json.loads(json.dumps(value)), "read a Python-style dict as JSON", None
        except (ValueError, TypeError):
            pass
    start = s.find("{")
    if start >= 0:
        try:
            obj, end = json.JSONDecoder().raw_decode(s, start)
        except (ValueError, RecursionError):
            obj, end = None, 0
        if isinstance(obj, dict):
            around = (s[:start].strip(), s[end:].strip())
            where = "before" if around[0] else "after"
            return {}, None, (
                f"the arguments of `{name}` must be only a JSON object, but there is text {where} it: "
                f"{_clip(around[0] or around[1], 60)!r}"
            )
    msg = getattr(e, "msg", str(e))
    return {}, None, (
        f"the arguments of `{name}` are not valid JSON ({msg}): write them as one JSON object, "
        f'e.g. {{"key": "value"}}'
    )


def _unclosed(s: str) -> bool:
    """Whether JSON text stops inside a string or with brackets still open (it was cut off)."""
    depth, in_str, esc = 0, False, False
    for ch in s:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
    return (in_str or depth > 0) and s.lstrip()[:1] in "{["


_XML_ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)


def read_xml_arguments(
    name: str, body: str, spec: ToolSpec | None
) -> tuple[dict[str, Any], str | None, str | None]:
    """(arguments, repair, error) for a GLM-4.5 call's `<arg_key>/<arg_value>` pairs."""
    pairs = [(m.group(1).strip(), m.group(2)) for m in _XML_ARG.finditer(body)]
    leftover = _XML_ARG.sub("", body).strip()
    if not pairs and leftover.startswith("{"):
        args, _, error = read_json_arguments(name, leftover)
        if error:
            return {}, None, error
        return args, "read JSON arguments instead of <arg_key>/<arg_value> pairs", None
    if leftover:
        return {}, None, (
            f"unexpected text in the call to `{name}`: {_clip(leftover, 60)!r}; write each argument as "
            "<arg_key>name</arg_key><arg_value>value</arg_value>"
        )
    args: dict[str, Any] = {}
    for key, value in pairs:
        if not key:
            return {}, None, f"an argument of `{name}` has an empty <arg_key>"
        if key in args:
            return {}, None, f"the argument `{key}` of `{name}` is given twice"
        args[key] = _typed_value(value, _schema_type(spec, key))
    return args, None, None


def _schema_type(spec: ToolSpec | None, key: str) -> Any:
    if spec is None or not isinstance(spec.parameters, dict):
        return None
    props = spec.parameters.get("properties")
    prop = props.get(key) if isinstance(props, dict) else None
    if prop is None:
        prop = spec.parameters.get("additionalProperties")
    return prop.get("type") if isinstance(prop, dict) else None


def _typed_value(value: str, schema_type: Any) -> Any:
    """A value as its schema types it: strings stay as written, anything else is read as JSON."""
    types = schema_type if isinstance(schema_type, list) else [schema_type]
    if "string" in types or "str" in types:
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return value


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[:n] + "..."
