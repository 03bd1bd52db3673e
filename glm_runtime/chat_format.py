"""GLM-4's chat format: render a conversation into the prompt the model reads, parse what it writes.

Render and parse are inverse pure functions. Two formats exist, chosen from the checkpoint:

- "glm4" (GLM-4-9B-Chat, -hf, GLM-4-0414): `[gMASK]<sop>`, then per message
  `<|role|>{metadata}\\n{content}`; the prompt ends with `<|assistant|>`. The model answers with
  `\\n` then text, or calls a tool by writing `name\\n` then its arguments (JSON; code for
  `python`; commands for `simple_browser`; a prompt for `cogview`). One generation may hold
  several `<|assistant|>` segments.
- "glm45" (GLM-4.5+): calls are written `<tool_call>name<arg_key>k</arg_key><arg_value>v</arg_value></tool_call>`,
  optionally after `<think>...</think>` reasoning; values are typed by the tool's JSON Schema.

When the tokenizer carries a chat template, `render` is exactly what transformers'
`apply_chat_template` yields (the model was trained on it); otherwise a built-in renderer writes
the same layout with the wording in `prompts/`. `parse` never raises on bad model output: it
returns an AssistantTurn whose `error` says, in words the model can act on, what was wrong.

    >>> render([Message("user", "你好")])
    '[gMASK]<sop><|user|>\\n你好<|assistant|>'
    >>> parse('get_weather\\n{"city": "北京"}').tool_calls[0].arguments
    {'city': '北京'}
    >>> parse("\\n17 × 23 = 391").text
    '17 × 23 = 391'
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Sequence, Union

from glm_runtime.browser_commands import BrowserCommand, BrowserCommandError, parse_browser_commands
from glm_runtime.call_arguments import read_json_arguments, read_xml_arguments, strip_code_fence
from glm_runtime.messages import BUILTIN_TOOLS, ROLES, AssistantTurn, Message, ToolCall, ToolSpec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "ASSISTANT",
    "FORMATS",
    "STOP_MARKERS",
    "BrowserCommand",
    "BrowserCommandError",
    "Format",
    "StreamEvent",
    "StreamParser",
    "TextDelta",
    "ToolCallStarted",
    "call_name",
    "detect_format",
    "messages_from_json",
    "messages_from_turn",
    "parse",
    "parse_browser_commands",
    "render",
    "render_ids",
    "render_turn",
    "tools_from_json",
]

Format = Literal["glm4", "glm45"]
FORMATS: tuple[str, ...] = ("glm4", "glm45")

ASSISTANT = "<|assistant|>"
# Generation stops on these; anything after one is not part of the assistant's turn.
STOP_MARKERS: tuple[str, ...] = ("<|observation|>", "<|user|>", "<|endoftext|>", "<|system|>")
_THINK, _THINK_END = "<think>", "</think>"
_CALL, _CALL_END = "<tool_call>", "</tool_call>"
_MARKERS = {
    "glm4": (ASSISTANT, *STOP_MARKERS),
    "glm45": (ASSISTANT, *STOP_MARKERS, _THINK, _THINK_END, _CALL, _CALL_END),
}
# model_type values of checkpoints that write GLM-4.5-style calls.
GLM45_MODEL_TYPES = frozenset({"glm4_moe", "glm4v_moe", "glm4_moe_lite", "glm4_moe_mtp"})
# A tool name as the model writes it on the first line: ASCII, as in OpenAI-style function
# names (BFCL's contain dots), so a one-word Chinese answer missing its newline stays text.
_NAME = re.compile(r"[A-Za-z_][\w.\-]*", re.ASCII)
# In GLM-4.5 calls, a built-in's single text argument travels under this key.
_BUILTIN_ARG = {"python": "code", "simple_browser": "commands", "cogview": "prompt"}
_INTERNAL = "internal parser error"


# -- stream events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    """More answer text; the deltas of one reply concatenate to the parsed turn's `text`."""

    text: str
    type: Literal["text_delta"] = "text_delta"


@dataclass(frozen=True)
class ToolCallStarted:
    """The model began calling `name` (known from the call's first line); `index` counts calls."""

    name: str
    index: int
    type: Literal["tool_call_started"] = "tool_call_started"


StreamEvent = Union[TextDelta, ToolCallStarted]


# -- which format ------------------------------------------------------------------------------


def detect_format(tokenizer_or_config: Any) -> Format:
    """The call format of a checkpoint, from its chat template or its `config.json` model type.

    Accepts a tokenizer (its `chat_template`), a checkpoint directory, a config object or dict
    (`model_type`, or a `chat_template` key), or the template text itself.

        >>> detect_format({"model_type": "glm4_moe"})
        'glm45'
        >>> detect_format({"model_type": "chatglm"})
        'glm4'
    """
    template, model_type = _format_hints(tokenizer_or_config)
    if template and ("<arg_key>" in template or _CALL in template):
        return "glm45"
    if model_type in GLM45_MODEL_TYPES:
        return "glm45"
    return "glm4"


def _format_hints(source: Any) -> tuple[str, str]:
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        return _dir_hints(Path(source))
    if isinstance(source, str):
        return source, ""
    if isinstance(source, dict):
        return _template_text(source.get("chat_template")), str(source.get("model_type") or "")
    template = _template_text(getattr(source, "chat_template", None))
    return template, str(getattr(source, "model_type", "") or "")


def _dir_hints(path: Path) -> tuple[str, str]:
    template, model_type = "", ""
    for name in ("tokenizer_config.json", "config.json"):
        try:
            cfg = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(cfg, dict):
            template = template or _template_text(cfg.get("chat_template"))
            model_type = model_type or str(cfg.get("model_type") or "")
    jinja = path / "chat_template.jinja"
    if not template and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    return template, model_type


def _template_text(t: Any) -> str:
    if isinstance(t, str):
        return t
    if isinstance(t, list):  # named templates: [{"name": ..., "template": ...}]
        return "\n".join(str(x.get("template", "")) for x in t if isinstance(x, dict))
    if isinstance(t, dict):
        return "\n".join(str(v) for v in t.values())
    return ""


# -- inputs: JSON files and turns ---------------------------------------------------------------


def messages_from_json(obj: Any) -> list[Message]:
    """Messages from the `--messages` file shape: a list of `{role, content, metadata?}`.

    Raises ValueError naming the message and what is wrong with it.

        >>> messages_from_json([{"role": "user", "content": "hi"}])
        [Message(role='user', content='hi', metadata='')]
    """
    if not isinstance(obj, list):
        raise ValueError("messages must be a JSON list of {\"role\", \"content\", \"metadata\"} objects")
    out = []
    for i, m in enumerate(obj):
        if not isinstance(m, dict):
            raise ValueError(f"message {i} must be an object with role and content, got {type(m).__name__}")
        role = "observation" if m.get("role") == "tool" else m.get("role")
        if role not in ROLES:
            raise ValueError(f"message {i} has role {m.get('role')!r}; expected one of {', '.join(ROLES)}")
        content, metadata = m.get("content"), m.get("metadata")
        if content is not None and not isinstance(content, str):
            raise ValueError(f"message {i}: content must be a string, got {type(content).__name__}")
        if metadata is not None and not isinstance(metadata, str):
            raise ValueError(f"message {i}: metadata must be a string (a tool's name), got {type(metadata).__name__}")
        out.append(Message(role, content or "", metadata or ""))
    return out


def tools_from_json(obj: Any) -> list[ToolSpec]:
    """Tool specs from the `--tools` file shape.

    Items are `{"type": "function", "function": {name, description, parameters}}` or a built-in
    `{"type": "python" | "simple_browser" | "cogview"}`. Raises ValueError naming the bad item.

        >>> tools_from_json([{"type": "python"}])[0].kind
        'python'
    """
    if not isinstance(obj, list):
        raise ValueError("tools must be a JSON list of {\"type\": ...} objects")
    return [_tool_from_dict(i, t) for i, t in enumerate(obj)]


def _tool_from_dict(i: int, t: Any) -> ToolSpec:
    if isinstance(t, ToolSpec):
        return t
    if not isinstance(t, dict):
        raise ValueError(f"tool {i} must be an object, got {type(t).__name__}")
    kind = t.get("type", "function")
    if kind in BUILTIN_TOOLS:
        return ToolSpec(name=kind, kind=kind)
    if kind != "function":
        raise ValueError(f"tool {i} has type {kind!r}; expected function, {', '.join(BUILTIN_TOOLS)}")
    fn = t.get("function", t)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ValueError(f"tool {i}: a function needs a non-empty string name")
    params = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, dict):
        raise ValueError(f"tool {i} ({fn['name']}): parameters must be a JSON Schema object")
    description = fn.get("description") or ""
    if not isinstance(description, str):
        raise ValueError(f"tool {i} ({fn['name']}): description must be a string")
    return ToolSpec(name=fn["name"], description=description, parameters=params, kind="function")


def messages_from_turn(turn: AssistantTurn) -> list[Message]:
    """The assistant messages that put `turn` into the history: its text, then one per call.

        >>> messages_from_turn(AssistantTurn(tool_calls=(ToolCall("python", "1+1"),)))
        [Message(role='assistant', content='1+1', metadata='python')]
    """
    out = [Message("assistant", turn.text)] if turn.text else []
    for c in turn.tool_calls:
        out.append(Message("assistant", _call_text(c), c.name))
    return out


def _call_text(call: ToolCall) -> str:
    if isinstance(call.arguments, str):
        return call.arguments
    return json.dumps(call.arguments, ensure_ascii=False)


def _as_message(m: Message | dict[str, Any]) -> Message:
    return m if isinstance(m, Message) else messages_from_json([m])[0]


def _as_specs(tools: Iterable[ToolSpec | dict[str, Any]]) -> list[ToolSpec]:
    return [_tool_from_dict(i, t) for i, t in enumerate(tools or ())]


# -- rendering -------------------------------------------------------------------------------


def render(
    messages: Sequence[Message | dict[str, Any]],
    tools: Sequence[ToolSpec | dict[str, Any]] = (),
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    fmt: Format = "glm4",
    add_generation_prompt: bool = True,
    lang: str = "zh",
) -> str:
    """The prompt text for `messages` with `tools` declared in it.

    With a tokenizer that has a chat template, this is `apply_chat_template(..., tokenize=False)`
    (tools go on the first message as GLM-4-9B's template reads them, and as `tools=` as
    GLM-4-0414's and GLM-4.5's read them). Otherwise the built-in renderer writes the same layout;
    with `lang="zh"` its text equals GLM-4-9B-Chat's official template.

        >>> render([Message("user", "hi")], [ToolSpec("python", kind="python")])[:23]
        '[gMASK]<sop><|system|>\\n'
    """
    _check_fmt(fmt)
    msgs = [_as_message(m) for m in messages]
    specs = _as_specs(tools)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return _render_template(msgs, specs, tokenizer, fmt, add_generation_prompt)
    if fmt == "glm45":
        return _render_glm45(msgs, specs, add_generation_prompt, lang)
    return _render_glm4(msgs, specs, add_generation_prompt, lang)


def _check_fmt(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown chat format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _render_glm4(msgs: list[Message], specs: list[ToolSpec], gen: bool, lang: str) -> str:
    from prompts import prompt_text, system_prompt, tool_description

    out = ["[gMASK]<sop>"]
    if specs:
        out.append("<|system|>\n" + system_prompt(lang=lang) + "\n\n" + prompt_text("tools_heading", lang=lang))
        # "\n## name" with one newline: transformers renders templates with trim_blocks, which eats
        # the first newline after each `{% if %}` of the official template.
        for spec in specs:
            if spec.kind == "function":
                fn = json.dumps(spec.to_openai()["function"], ensure_ascii=False, indent=4)
                out.append(f"\n## {spec.name}\n\n{fn}\n" + prompt_text("function_hint", lang=lang))
            elif spec.kind in BUILTIN_TOOLS:
                out.append(f"\n## {spec.kind}\n\n" + tool_description(spec.kind, lang=lang))
    for m in msgs:
        # The official template drops messages with empty content; so do we, to stay identical.
        if m.content:
            out.append(f"<|{m.role}|>{m.metadata}\n{m.content}")
    if gen:
        out.append(ASSISTANT)
    return "".join(out)


def _render_glm45(msgs: list[Message], specs: list[ToolSpec], gen: bool, lang: str) -> str:
    from prompts import prompt_text

    out = ["[gMASK]<sop>"]
    if specs:
        listing = "\n".join(json.dumps(_glm45_tool(s), ensure_ascii=False) for s in specs)
        out.append("<|system|>\n" + prompt_text("tools_xml", lang=lang).replace("{tools}", listing))
    for group in _groups(msgs):
        role = group[0].role
        if role == "assistant":
            out.append(ASSISTANT + render_turn(_turn_from_messages(group), fmt="glm45"))
        elif role == "observation":
            out.append("<|observation|>" + "".join(f"\n<tool_response>\n{m.content}\n</tool_response>" for m in group))
        else:
            out.extend(f"<|{m.role}|>\n{m.content}" for m in group)
    if gen:
        out.append(ASSISTANT)
    return "".join(out)


def _glm45_tool(spec: ToolSpec) -> dict[str, Any]:
    if spec.kind == "function":
        return spec.to_openai()
    from prompts import tool_description

    key = _BUILTIN_ARG.get(spec.kind, "text")
    params = {"type": "object", "properties": {key: {"type": "string"}}, "required": [key]}
    desc = tool_description(spec.kind, lang="en") if spec.kind in BUILTIN_TOOLS else spec.description
    return {"type": "function", "function": {"name": spec.name, "description": desc, "parameters": params}}


def _groups(msgs: list[Message]) -> list[list[Message]]:
    """Runs of consecutive assistant (or observation) messages; other messages stand alone."""
    groups: list[list[Message]] = []
    for m in msgs:
        if groups and m.role in ("assistant", "observation") and groups[-1][0].role == m.role:
            groups[-1].append(m)
        else:
            groups.append([m])
    return groups


def _turn_from_messages(group: list[Message]) -> AssistantTurn:
    texts = [m.content for m in group if not m.metadata and m.content]
    calls = tuple(ToolCall(m.metadata, _history_arguments(m)) for m in group if m.metadata)
    return AssistantTurn(text="\n".join(texts), tool_calls=calls)


def _history_arguments(m: Message) -> dict[str, Any] | str:
    if m.content.lstrip().startswith("<arg_key>"):
        # A GLM-4.5 call kept as the model wrote it (ToolCall.raw): values stay verbatim text.
        args, _, error = read_xml_arguments(m.metadata, m.content, _TEXT_SPEC)
        if error is None:
            return args
    if m.metadata in BUILTIN_TOOLS:
        return m.content
    try:
        args = json.loads(m.content) if m.content.strip() else {}
    except ValueError:
        return m.content
    return args if isinstance(args, dict) else m.content


def _render_template(
    msgs: list[Message], specs: list[ToolSpec], tokenizer: Any, fmt: str, gen: bool
) -> str:
    openai_tools = [s.to_openai() for s in specs]
    if fmt == "glm45":
        dicts = _openai_messages(msgs)
    else:
        dicts = [m.to_dict() | {"metadata": m.metadata} for m in msgs]
        if openai_tools:
            # GLM-4-9B-Chat's template reads tools from a message; it renders them before it.
            if not dicts:
                dicts = [{"role": "system", "content": "", "metadata": ""}]
            dicts[0] = dicts[0] | {"tools": openai_tools}
    return tokenizer.apply_chat_template(
        dicts, tools=openai_tools or None, tokenize=False, add_generation_prompt=gen
    )


def _openai_messages(msgs: list[Message]) -> list[dict[str, Any]]:
    """Messages in the OpenAI shape GLM-4.5's template reads (`tool_calls`, role "tool")."""
    out: list[dict[str, Any]] = []
    for group in _groups(msgs):
        role = group[0].role
        if role == "assistant":
            turn = _turn_from_messages(group)
            calls = [
                {"type": "function", "function": {"name": c.name, "arguments": _glm45_arguments(c)}}
                for c in turn.tool_calls
            ]
            out.append({"role": "assistant", "content": turn.text} | ({"tool_calls": calls} if calls else {}))
        elif role == "observation":
            out.extend({"role": "tool", "content": m.content} for m in group)
        else:
            out.extend({"role": m.role, "content": m.content} for m in group)
    return out


def _glm45_arguments(call: ToolCall) -> dict[str, Any]:
    if isinstance(call.arguments, dict):
        return call.arguments
    return {_BUILTIN_ARG.get(call.name, "text"): call.arguments}


def render_ids(
    messages: Sequence[Message | dict[str, Any]],
    tools: Sequence[ToolSpec | dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    fmt: Format = "glm4",
    add_generation_prompt: bool = True,
    lang: str = "zh",
) -> list[int]:
    """The prompt as token ids: markers are special ids; text inside content is always text.

    Equals `tokenizer.encode(render(...))` unless some content contains a marker look-alike
    such as `<|user|>`, which here stays text instead of becoming a role token.

        >>> render_ids([Message("user", "你好")], [], tok)  # doctest: +SKIP
        [151331, 151333, 151336, 198, 109377, 151337]
    """
    table: list[str] = []
    specials = _special_ids(tokenizer)
    pattern = _specials_pattern(specials)
    msgs = [_as_message(m) for m in messages]
    msgs = [Message(m.role, _escape(m.content, pattern, table), _escape(m.metadata, pattern, table)) for m in msgs]
    specs = [_escape_obj(s, pattern, table) for s in _as_specs(tools)]
    text = render(msgs, specs, tokenizer=tokenizer, fmt=fmt, add_generation_prompt=add_generation_prompt, lang=lang)
    ids: list[int] = []
    pos = 0
    for m in pattern.finditer(text) if pattern else ():
        ids.extend(_encode_text(tokenizer, _unescape(text[pos : m.start()], table)))
        ids.append(specials[m.group()])
        pos = m.end()
    ids.extend(_encode_text(tokenizer, _unescape(text[pos:], table)))
    return ids


# Content that looks like a marker is swapped for a private-use placeholder while the template
# runs, so that only the template's own markers become special ids.
_PH_OPEN, _PH_CLOSE = "\U000f0000", "\U000f0001"
_PH = re.compile(f"{_PH_OPEN}(\\d+){_PH_CLOSE}")


def _special_ids(tokenizer: Any) -> dict[str, int]:
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    specials = {t.content: i for i, t in decoder.items() if getattr(t, "special", False)}
    if not specials:
        for t in getattr(tokenizer, "all_special_tokens", []):
            specials[t] = tokenizer.convert_tokens_to_ids(t)
    return specials


def _specials_pattern(specials: dict[str, int]) -> re.Pattern[str] | None:
    if not specials:
        return None
    return re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))


def _escape(s: str, pattern: re.Pattern[str] | None, table: list[str]) -> str:
    if pattern is None:
        return s

    def swap(m: re.Match[str]) -> str:
        table.append(m.group())
        return f"{_PH_OPEN}{len(table) - 1}{_PH_CLOSE}"

    return pattern.sub(swap, s)


def _escape_obj(obj: Any, pattern: re.Pattern[str] | None, table: list[str]) -> Any:
    if isinstance(obj, str):
        return _escape(obj, pattern, table)
    if isinstance(obj, ToolSpec):
        return ToolSpec(
            _escape(obj.name, pattern, table),
            _escape(obj.description, pattern, table),
            _escape_obj(obj.parameters, pattern, table),
            obj.kind,
        )
    if isinstance(obj, dict):
        return {_escape_obj(k, pattern, table): _escape_obj(v, pattern, table) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_escape_obj(v, pattern, table) for v in obj]
    return obj


def _unescape(s: str, table: list[str]) -> str:
    if not table:
        return s
    return _PH.sub(lambda m: table[int(m.group(1))] if int(m.group(1)) < len(table) else m.group(), s)


def _encode_text(tokenizer: Any, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))


def render_turn(turn: AssistantTurn, *, fmt: Format = "glm4") -> str:
    """What the model writes for `turn` after `<|assistant|>` (without the stop token).

    `parse(render_turn(t), fmt=fmt)` gives back `t` (text, calls and reasoning).

        >>> render_turn(AssistantTurn(tool_calls=(ToolCall("get_weather", {"city": "北京"}),)))
        'get_weather\\n{"city": "北京"}'
    """
    _check_fmt(fmt)
    if fmt == "glm45":
        parts = [f"{_THINK}{turn.reasoning}{_THINK_END}"] if turn.reasoning else []
        parts += [turn.text] if turn.text else []
        parts += [_render_xml_call(c) for c in turn.tool_calls]
        return "".join("\n" + p for p in parts)
    segments = ["\n" + turn.text] if turn.text else []
    segments += [f"{c.name}\n{_call_text(c)}" for c in turn.tool_calls]
    return ASSISTANT.join(segments)


def _render_xml_call(call: ToolCall) -> str:
    args = _glm45_arguments(call)
    pairs = "".join(
        f"<arg_key>{k}</arg_key>\n<arg_value>{v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}</arg_value>\n"
        for k, v in args.items()
    )
    return f"{_CALL}{call.name}\n{pairs}{_CALL_END}"


# -- parsing: segments --------------------------------------------------------------------------


@dataclass
class _Seg:
    kind: Literal["text", "call", "think"]
    body: str = ""
    name: str = ""
    closed: bool = True
    repair: str | None = None


def _cut_at_stop(text: str) -> str:
    cut = min((i for i in (text.find(s) for s in STOP_MARKERS) if i >= 0), default=len(text))
    return text[:cut]


def _segments(text: str, fmt: str, final: bool) -> list[_Seg]:
    text = _cut_at_stop(text)
    return _segments_glm45(text, final) if fmt == "glm45" else _segments_glm4(text, final)


def _segments_glm4(text: str, final: bool) -> list[_Seg]:
    segs: list[_Seg] = []
    parts = text.split(ASSISTANT)
    for i, part in enumerate(parts):
        open_end = not final and i == len(parts) - 1
        head, nl, body = part.partition("\n")
        name = head.strip()
        if not name:
            if nl or not open_end:
                segs.append(_Seg("text", body))
        elif _NAME.fullmatch(name):
            if nl or not open_end:
                segs.append(_Seg("call", body, name=name))
        else:
            # No name could look like this, so the model began its answer without the newline.
            segs.append(_Seg("text", part, repair="the answer did not start with a newline; read it as text"))
    return segs


def _segments_glm45(text: str, final: bool) -> list[_Seg]:
    # A stray <|assistant|> inside the reply is dropped from what it separates, but the markers are
    # found with it still there: "<think<|assistant|>>" is text, as it was while it streamed (the
    # stream had shown "<think" before the ">" came), not a think block that only its removal makes.
    segs: list[_Seg] = []
    pos = 0
    opener = re.compile(re.escape(_THINK) + "|" + re.escape(_CALL))
    while pos <= len(text):
        m = opener.search(text, pos)
        if m is None:
            segs.extend(_text_segs(text[pos:]))
            break
        segs.extend(_text_segs(text[pos : m.start()]))
        closer = _THINK_END if m.group() == _THINK else _CALL_END
        j = text.find(closer, m.end())
        body, closed = (text[m.end() :], False) if j < 0 else (text[m.end() : j], True)
        pos = len(text) + 1 if j < 0 else j + len(closer)
        body = body.replace(ASSISTANT, "")
        if m.group() == _THINK:
            segs.append(_Seg("think", body, closed=closed))
            continue
        name_end = _xml_name_end(body)
        if name_end < 0 and not closed and not final:
            continue  # the name is still arriving
        name_end = len(body) if name_end < 0 else name_end
        segs.append(_Seg("call", body[name_end:], name=body[:name_end].strip(), closed=closed))
    return segs


def _text_segs(text: str) -> list[_Seg]:
    # A stray </think> (no <think> before it) separates text; a prompt that ends inside a think
    # block should feed "<think>" first, since a streamed reply cannot be re-read afterwards.
    return [_Seg("text", piece.replace(ASSISTANT, "")) for piece in text.split(_THINK_END)]


def _xml_name_end(body: str) -> int:
    ends = [i for i in (body.find("\n"), body.find("<"), body.find("{")) if i >= 0]
    return min(ends, default=-1)


def _visible_text(segs: list[_Seg]) -> str:
    return "\n".join(t for t in (s.body.strip() for s in segs if s.kind == "text") if t)


# -- parsing: turns ---------------------------------------------------------------------------


def call_name(spec: ToolSpec) -> str:
    """The name the model writes to call `spec`: a function's own name; a built-in's kind (the
    template declares and calls the browser as `simple_browser`, whatever it is registered as)."""
    return spec.name if spec.kind == "function" else spec.kind


def parse(text: str, *, fmt: Format = "glm4", tools: Sequence[ToolSpec | dict[str, Any]] = ()) -> AssistantTurn:
    """Parse what the model wrote after `<|assistant|>` into an AssistantTurn; never raises on bad text.

    Text after a stop marker (`<|observation|>`, `<|user|>`, `<|endoftext|>`) is ignored. With
    `tools` given, a call to any other name is an error listing the available tools.

        >>> parse("python\\n```python\\nprint(1)\\n```").tool_calls[0].arguments
        'print(1)'
        >>> parse('get_weather\\n{"city": ').error[:40]
        'the arguments of `get_weather` end befor'
    """
    _check_fmt(fmt)
    # Built-ins are declared (and so called) by their kind: the template writes `## python`.
    specs = {call_name(s): s for s in _as_specs(tools)}
    try:
        return _turn(_segments(text if isinstance(text, str) else str(text), fmt, True), fmt, specs)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError, MemoryError) as e:
        # A last line of defence: one odd reply must never take a session down. Tests check
        # that this never fires (the message names it) on hundreds of thousands of replies.
        return AssistantTurn(error=f"{_INTERNAL} ({type(e).__name__}: {e}); please answer again")


def _turn(segs: list[_Seg], fmt: str, specs: dict[str, ToolSpec]) -> AssistantTurn:
    calls: list[ToolCall] = []
    errors: list[str] = []
    for s in segs:
        if s.kind != "call":
            continue
        call, error = _read_call(s, fmt, specs)
        if call is not None:
            calls.append(call)
        if error:
            errors.append(error)
    text = _visible_text(segs)
    reasoning = "\n".join(t for t in (s.body.strip() for s in segs if s.kind == "think") if t)
    if not text and not calls and not errors:
        errors.append(
            "the reply is empty: answer on the line after a newline, or call a tool by writing its name first"
        )
    return AssistantTurn(
        text=text,
        tool_calls=tuple(calls),
        error="\n".join(errors) or None,
        reasoning=reasoning,
        repairs=tuple(s.repair for s in segs if s.repair and s.body.strip()),
    )


def _read_call(seg: _Seg, fmt: str, specs: dict[str, ToolSpec]) -> tuple[ToolCall | None, str | None]:
    name = seg.name
    if not name:
        return None, "a tool call has an empty name: write the tool's name right after <tool_call>"
    spec = specs.get(name)
    if specs and spec is None:
        known = ", ".join(f"`{n}`" for n in specs)
        return None, f"there is no tool named `{_clip(name, 60)}`; the available tools are {known}"
    kind = spec.kind if spec else (name if name in BUILTIN_TOOLS else "function")
    if fmt == "glm45":
        if not seg.closed:
            return None, f"the call to `{name}` was cut off before {_CALL_END}; write the whole call again"
        # A built-in's argument is text (code, commands, a prompt), whatever it looks like.
        args, repair, error = read_xml_arguments(name, seg.body, spec if kind == "function" else _TEXT_SPEC)
        if error:
            return None, error
        if kind == "function":
            return ToolCall(name, args, raw=seg.body, repair=repair), None
        if len(args) != 1 or not isinstance(next(iter(args.values())), str):
            key = _BUILTIN_ARG.get(kind, "text")
            return None, f"`{name}` takes one text argument, `{key}`"
        return _read_builtin(name, kind, next(iter(args.values())), raw=seg.body)
    if kind != "function":
        return _read_builtin(name, kind, seg.body, raw=seg.body)
    args, repair, error = read_json_arguments(name, seg.body)
    if error:
        return None, error
    return ToolCall(name, args, raw=seg.body, repair=repair), None


def _read_builtin(name: str, kind: str, body: str, raw: str) -> tuple[ToolCall | None, str | None]:
    if kind == "python":
        code, repair = strip_code_fence(body)
        if not code.strip():
            return None, "`python` was called without code: write the code on the lines after `python`"
        return ToolCall(name, code, raw=raw, repair=repair), None
    text = body.strip()
    if kind == "simple_browser":
        try:
            parse_browser_commands(text)
        except BrowserCommandError as e:
            return None, str(e)
        return ToolCall(name, text, raw=raw), None
    if not text:
        return None, f"`{name}` was called with nothing after its name: write its input on the next line"
    return ToolCall(name, text, raw=raw), None


_TEXT_SPEC = ToolSpec("text", parameters={"type": "object", "additionalProperties": {"type": "string"}})


# -- streaming --------------------------------------------------------------------------------


class StreamParser:
    """Parse a reply while it streams: text deltas and call starts as soon as they are known.

    Feed decoded text (special tokens kept, e.g. "<|assistant|>"). Call `flush()` at the end for
    the last events, and `finish()` for the turn, which equals `parse()` of everything fed.

        >>> p = StreamParser()
        >>> p.feed("\\nHel") + p.feed("lo<|user|>")
        [TextDelta(text='Hel', type='text_delta'), TextDelta(text='lo', type='text_delta')]
        >>> p.finish().text
        'Hello'
    """

    def __init__(self, *, fmt: Format = "glm4", tools: Sequence[ToolSpec | dict[str, Any]] = ()) -> None:
        _check_fmt(fmt)
        self.fmt = fmt
        self.tools = _as_specs(tools)
        self._buf: list[str] = []
        self._size = 0
        self._emitted = ""
        self._calls = 0
        self._stopped = False

    @property
    def text(self) -> str:
        """Everything fed so far."""
        return "".join(self._buf)

    def feed(self, delta: str) -> list[StreamEvent]:
        if not delta or self._stopped:
            return []
        self._buf.append(delta)
        return self._events(final=False)

    def flush(self) -> list[StreamEvent]:
        """The events that only the end of the reply decides (held-back text, a trailing call)."""
        return self._events(final=True)

    def finish(self) -> AssistantTurn:
        return parse(self.text, fmt=self.fmt, tools=self.tools)

    def _events(self, final: bool) -> list[StreamEvent]:
        text = self.text
        self._buf = [text]
        cut = _cut_at_stop(text)
        if len(cut) < len(text):
            self._stopped = True  # nothing after a stop marker belongs to this turn
            final = True
        if not final:
            cut = cut[: len(cut) - _partial_marker(cut, _MARKERS[self.fmt])]
        segs = _segments(cut, self.fmt, final)
        events: list[StreamEvent] = []
        visible = _visible_text(segs)
        if visible.startswith(self._emitted) and len(visible) > len(self._emitted):
            events.append(TextDelta(visible[len(self._emitted) :]))
            self._emitted = visible
        for s in [s for s in segs if s.kind == "call"][self._calls :]:
            events.append(ToolCallStarted(s.name, self._calls))
            self._calls += 1
        return events


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[:n] + "..."


def _partial_marker(text: str, markers: Iterable[str]) -> int:
    """Length of the longest end of `text` that could still grow into a marker (all start with "<")."""
    markers = tuple(markers)
    window = max(len(m) for m in markers) - 1
    i = text.find("<", max(0, len(text) - window))
    while i >= 0:
        tail = text[i:]
        if any(len(tail) < len(m) and m.startswith(tail) for m in markers):
            return len(tail)
        i = text.find("<", i + 1)
    return 0
