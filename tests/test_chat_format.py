"""Parsing GLM-4 replies (both formats), the browser command grammar, inputs, round trips and streaming."""

from __future__ import annotations

import importlib
import inspect
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glm_runtime.chat_format import (
    BrowserCommand,
    BrowserCommandError,
    StreamParser,
    TextDelta,
    ToolCallStarted,
    detect_format,
    messages_from_json,
    messages_from_turn,
    parse,
    parse_browser_commands,
    render,
    render_turn,
    tools_from_json,
)
from glm_runtime.messages import AssistantTurn, Message, ToolCall, ToolSpec

WEATHER = ToolSpec(
    "get_weather",
    "Current weather of a city.",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "hourly": {"type": "boolean"},
            "fields": {"type": "array", "items": {"type": "string"}},
            "zip": {"type": "string"},
        },
    },
)
TOOLS = [WEATHER, ToolSpec("python", kind="python"), ToolSpec("simple_browser", kind="simple_browser"),
         ToolSpec("cogview", kind="cogview")]


def calls(turn):
    return [(c.name, c.arguments) for c in turn.tool_calls]


# -- glm4: well-formed replies ------------------------------------------------------------------

GLM4_OK = [
    ("\n你好！有什么可以帮你？", "你好！有什么可以帮你？", []),
    ("\n  answer with spaces  \n\n", "answer with spaces", []),
    ("\nstop here<|user|>ignored", "stop here", []),
    ('get_weather\n{"city": "北京", "days": 3}', "", [("get_weather", {"city": "北京", "days": 3})]),
    ('get_weather\n{"city": "北京"}<|observation|>', "", [("get_weather", {"city": "北京"})]),
    ("python\n```python\nimport math\nprint(math.pi)\n```", "", [("python", "import math\nprint(math.pi)")]),
    ("python\nprint(1)\n", "", [("python", "print(1)")]),
    ("python\n```\nx = 1\n```<|observation|>", "", [("python", "x = 1")]),
    ('simple_browser\nsearch("GLM-4", recency_days=7)', "", [("simple_browser", 'search("GLM-4", recency_days=7)')]),
    # What the browser's own observations tell the model to write: the next piece of a long page.
    ('simple_browser\nopen_url("https://a.example/x", page=2)', "",
     [("simple_browser", 'open_url("https://a.example/x", page=2)')]),
    ("simple_browser\nmclick(3)", "", [("simple_browser", "mclick(3)")]),
    ("cogview\nA cat on the moon, oil painting.", "", [("cogview", "A cat on the moon, oil painting.")]),
    ("<|assistant|>\nleading marker is dropped", "leading marker is dropped", []),
    (
        '\n我先查一下。<|assistant|>get_weather\n{"city": "上海"}<|assistant|>python\nprint(2)<|observation|>',
        "我先查一下。",
        [("get_weather", {"city": "上海"}), ("python", "print(2)")],
    ),
    ("\nfirst part<|assistant|>\nsecond part", "first part\nsecond part", []),
]


@pytest.mark.parametrize(("reply", "text", "expected"), GLM4_OK)
def test_glm4_replies(reply, text, expected):
    turn = parse(reply, tools=TOOLS)
    assert turn.error is None and turn.repairs == ()
    assert turn.text == text and calls(turn) == expected
    assert parse(reply) == turn  # without a tool list, built-in names are still known


def test_glm4_call_keeps_raw_text():
    (call,) = parse("python\n```python\nprint(1)\n```").tool_calls
    assert call.raw == "```python\nprint(1)\n```" and call.repair is None and call.is_builtin


# -- glm4: malformed replies ----------------------------------------------------------------------

GLM4_ERRORS = [
    ('get_weather\n{"city": 北京}', "not valid JSON"),
    ('get_weather\n{"city": "北', "cut off"),
    ('get_weather\n{"city": "北京", "days": [1, 2', "cut off"),
    ('get_weather\nSure! {"city": "北京"}', "text before it"),
    ('get_weather\n{"city": "北京"} hope this helps', "text after it"),
    ('get_weather\n["北京"]', "must be one JSON object"),
    ('get_wether\n{"city": "北京"}', "no tool named `get_wether`; the available tools are `get_weather`"),
    ("python\n", "without code"),
    ("python\n```python\n```", "without code"),
    ("cogview\n   ", "nothing after its name"),
    ("simple_browser\nsearch(北京)", "literals"),
    ("simple_browser\nbrowse('x')", "no function 'browse'"),
    ("simple_browser\nmclick([])", "non-empty list of integer"),
    ("simple_browser\nopen_url('https://a.example/', page=0)", "page must be an integer >= 1"),
    ("", "the reply is empty"),
    ("\n   \n", "the reply is empty"),
    ("<|observation|>", "the reply is empty"),
]


@pytest.mark.parametrize(("reply", "message"), GLM4_ERRORS)
def test_glm4_malformed_replies_are_errors_not_exceptions(reply, message):
    turn = parse(reply, tools=TOOLS)
    assert turn.error is not None and message in turn.error
    assert not turn.is_final


def test_an_error_keeps_the_good_calls():
    turn = parse('get_weather\n{"city": "A"}<|assistant|>get_weather\n{oops}', tools=TOOLS)
    assert calls(turn) == [("get_weather", {"city": "A"})] and "not valid JSON" in turn.error


GLM4_REPAIRS = [
    ('get_weather\n```json\n{"city": "北京"}\n```', {"city": "北京"}, "code fence"),
    ("get_weather\n{'city': '北京', 'hourly': True}", {"city": "北京", "hourly": True}, "Python-style"),
    ("get_weather\n", {}, "read them as {}"),
]


@pytest.mark.parametrize(("reply", "arguments", "repair"), GLM4_REPAIRS)
def test_glm4_unambiguous_repairs_are_recorded(reply, arguments, repair):
    turn = parse(reply, tools=TOOLS)
    assert turn.error is None and calls(turn) == [("get_weather", arguments)]
    assert repair in turn.tool_calls[0].repair


@pytest.mark.parametrize("reply", ["The answer is 42.", "好的", "42"])
def test_answer_without_leading_newline_is_repaired_and_recorded(reply):
    turn = parse(reply, tools=TOOLS)
    assert turn.text == reply and turn.error is None
    assert "newline" in turn.repairs[0]


def test_builtins_are_called_by_their_kind():
    tools = [ToolSpec("my_browser", kind="simple_browser")]
    assert "## simple_browser" in render([Message("user", "q")], tools)
    assert calls(parse('simple_browser\nsearch("q")', tools=tools)) == [("simple_browser", 'search("q")')]


def test_unknown_names_pass_without_a_tool_list():
    assert calls(parse('lookup.v2\n{"q": 1}')) == [("lookup.v2", {"q": 1})]


# -- glm45 --------------------------------------------------------------------------------------


def test_glm45_reasoning_text_and_typed_calls():
    reply = (
        "\n<think>The user wants weather.</think>\nLet me check.\n"
        "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>北京</arg_value>\n"
        "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n<arg_key>hourly</arg_key>\n<arg_value>false</arg_value>\n"
        '<arg_key>fields</arg_key>\n<arg_value>["temp", "wind"]</arg_value>\n'
        "<arg_key>zip</arg_key>\n<arg_value>100000</arg_value>\n</tool_call>"
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value> 上海 </arg_value></tool_call><|observation|>"
    )
    turn = parse(reply, fmt="glm45", tools=TOOLS)
    assert turn.error is None
    assert turn.reasoning == "The user wants weather." and turn.text == "Let me check."
    assert calls(turn) == [
        ("get_weather", {"city": "北京", "days": 3, "hourly": False, "fields": ["temp", "wind"], "zip": "100000"}),
        ("get_weather", {"city": " 上海 "}),
    ]


def test_glm45_untyped_values_are_read_as_json_when_they_can_be():
    turn = parse("<tool_call>f<arg_key>n</arg_key><arg_value>7</arg_value><arg_key>s</arg_key><arg_value>hi</arg_value></tool_call>", fmt="glm45")
    assert calls(turn) == [("f", {"n": 7, "s": "hi"})]


def test_glm45_reply_that_starts_inside_the_think_block():
    # The caller whose prompt opened the think block feeds "<think>" first.
    turn = parse("<think>" + "still thinking</think>\nDone.", fmt="glm45")
    assert turn.reasoning == "still thinking" and turn.text == "Done."
    # Without it, a stray </think> only separates text: streamed text cannot be taken back.
    assert parse("still thinking</think>\nDone.", fmt="glm45").text == "still thinking\nDone."


def test_glm45_builtin_python():
    turn = parse("<tool_call>python\n<arg_key>code</arg_key>\n<arg_value>```python\nprint(1)\n```</arg_value>\n</tool_call>", fmt="glm45")
    assert calls(turn) == [("python", "print(1)")]


GLM45_ERRORS = [
    ("<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>北", "cut off before </tool_call>"),
    ("<tool_call>\n<arg_key>city</arg_key><arg_value>x</arg_value></tool_call>", "empty name"),
    ("<tool_call>nope<arg_key>a</arg_key><arg_value>1</arg_value></tool_call>", "no tool named `nope`"),
    ("<tool_call>get_weather\ncity=北京</tool_call>", "unexpected text"),
    ("<tool_call>get_weather<arg_key>city</arg_key><arg_value>a</arg_value><arg_key>city</arg_key><arg_value>b</arg_value></tool_call>", "given twice"),
    ("<tool_call>python<arg_key>a</arg_key><arg_value>1</arg_value><arg_key>b</arg_key><arg_value>2</arg_value></tool_call>", "one text argument"),
    ("<think>only thoughts</think>", "the reply is empty"),
]


@pytest.mark.parametrize(("reply", "message"), GLM45_ERRORS)
def test_glm45_malformed_replies(reply, message):
    turn = parse(reply, fmt="glm45", tools=TOOLS)
    assert turn.error is not None and message in turn.error


def test_glm45_json_body_is_repaired():
    turn = parse('<tool_call>get_weather\n{"city": "北京"}\n</tool_call>', fmt="glm45", tools=TOOLS)
    assert calls(turn) == [("get_weather", {"city": "北京"})] and "JSON arguments" in turn.tool_calls[0].repair


# -- simple_browser grammar ---------------------------------------------------------------------


def test_browser_commands():
    text = 'search("北京 天气", recency_days=3)\nmclick(ids=[1, 4])\nopen_url("https://example.com/a?b=c")\nsearch(\'x\')'
    assert parse_browser_commands(text) == [
        BrowserCommand("search", query="北京 天气", recency_days=3),
        BrowserCommand("mclick", ids=(1, 4)),
        BrowserCommand("open_url", url="https://example.com/a?b=c"),
        BrowserCommand("search", query="x"),
    ]
    assert parse_browser_commands("```\nmclick([2])\n```") == [BrowserCommand("mclick", ids=(2,))]
    assert parse_browser_commands("mclick(3)\nmclick([5, 5, 1])") == [BrowserCommand("mclick", ids=(3,)),
                                                                    BrowserCommand("mclick", ids=(5, 1))]
    assert parse_browser_commands('open_url("https://a.example/", page=2)\nopen_url(url="https://b.example/")') == [
        BrowserCommand("open_url", url="https://a.example/", page=2),
        BrowserCommand("open_url", url="https://b.example/"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no command"),
        ("search(", "could not read"),
        ("x = 1", "expects function calls"),
        ("os.system('rm -rf /')", "expects function calls"),
        ("__import__('os')", "no function '__import__'"),
        ("search(q)", "literals"),
        ("search('a', 'b', 'c')", "at most 2"),
        ("search('a', days=1)", "no parameter 'days'"),
        ("search('a', query='b')", "twice"),
        ("search('')", "non-empty query"),
        ("search('a', recency_days=-1)", "recency_days must be a whole number of days >= 1"),
        ("search('a', recency_days=True)", "recency_days must be"),
        ("search('a', recency_days=0)", "recency_days must be"),
        ("mclick(-2)", "integer result ids"),
        ("mclick(ids=1.5)", "integer result ids"),
        ("open_url('https://a.example/', page=0)", "page must be an integer >= 1"),
        ("open_url('https://a.example/', 2, 3)", "at most 2"),
        ("open_url('https://a.example/', pages=2)", "no parameter 'pages'"),
        ("# nothing but a comment", "no command"),
        ("mclick([1, 'two'])", "integer"),
        ("open_url(42)", "URL string"),
        ("search('a')\0", "could not read"),
    ],
)
def test_browser_command_errors(text, message):
    with pytest.raises(BrowserCommandError, match=message):
        parse_browser_commands(text)


# -- inputs ---------------------------------------------------------------------------------------


def test_messages_and_tools_from_json():
    msgs = messages_from_json(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "print(1)", "metadata": "python"},
         {"role": "tool", "content": "1"}, {"role": "assistant", "content": None}]
    )
    assert msgs == [Message("user", "hi"), Message("assistant", "print(1)", "python"),
                    Message("observation", "1"), Message("assistant", "")]
    tools = tools_from_json([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
                             {"type": "python"}, {"name": "g", "description": "bare"}])
    assert [(t.name, t.kind) for t in tools] == [("f", "function"), ("python", "python"), ("g", "function")]


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"role": "user"}, "JSON list"),
        ([{"role": "robot", "content": "x"}], "message 0 has role 'robot'"),
        (["hi"], "message 0 must be an object"),
        ([{"role": "user", "content": 3}], "content must be a string"),
        ([{"role": "assistant", "content": "x", "metadata": 1}], "metadata must be a string"),
    ],
)
def test_bad_messages_json(obj, message):
    with pytest.raises(ValueError, match=message):
        messages_from_json(obj)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({}, "JSON list"),
        ([{"type": "retrieval"}], "tool 0 has type 'retrieval'"),
        ([{"type": "function", "function": {"description": "x"}}], "non-empty string name"),
        ([{"type": "function", "function": {"name": "f", "parameters": []}}], "parameters must be"),
        ([3], "tool 0 must be an object"),
    ],
)
def test_bad_tools_json(obj, message):
    with pytest.raises(ValueError, match=message):
        tools_from_json(obj)


def test_unknown_format_is_a_caller_error():
    with pytest.raises(ValueError, match="unknown chat format"):
        parse("\nhi", fmt="glm5")


# -- detect_format --------------------------------------------------------------------------------


def test_detect_format(glm4_dir, glm4_tokenizer, tmp_path):
    assert detect_format(glm4_dir) == "glm4"
    assert detect_format(str(glm4_dir)) == "glm4"
    assert detect_format(glm4_tokenizer) == "glm4"
    assert detect_format({"model_type": "glm"}) == "glm4"
    assert detect_format({"model_type": "glm4_moe"}) == "glm45"
    assert detect_format("{{ '<tool_call>' + tc.name }}<arg_key>") == "glm45"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "glm4_moe"}))
    assert detect_format(tmp_path) == "glm45"
    jinja = tmp_path / "j"
    jinja.mkdir()
    (jinja / "chat_template.jinja").write_text("<arg_key>{{ k }}</arg_key>")
    assert detect_format(jinja) == "glm45"


# -- rendering: glm45 and history -----------------------------------------------------------------


def test_glm45_builtin_render():
    messages = [
        Message("system", "Be brief."), Message("user", "weather?"),
        Message("assistant", "Checking."), Message("assistant", '{"city": "北京"}', "get_weather"),
        Message("observation", "sunny"), Message("assistant", "Sunny."),
    ]
    text = render(messages, [WEATHER], fmt="glm45", lang="en")
    assert text.startswith("[gMASK]<sop><|system|>\n# Tools\n")
    assert json.dumps(WEATHER.to_openai(), ensure_ascii=False) in text
    assert (
        "<|system|>\nBe brief.<|user|>\nweather?<|assistant|>\nChecking.\n<tool_call>get_weather\n"
        "<arg_key>city</arg_key>\n<arg_value>北京</arg_value>\n</tool_call>"
        "<|observation|>\n<tool_response>\nsunny\n</tool_response><|assistant|>\nSunny.<|assistant|>"
    ) in text


def test_glm45_template_gets_openai_shaped_messages():
    jinja2 = pytest.importorskip("jinja2")

    class TemplateTokenizer:  # only the seam render() uses: chat_template + apply_chat_template
        chat_template = (
            "{% for m in messages %}[{{ m.role }}:{{ m.content }}"
            "{% for tc in m.tool_calls or [] %}|{{ tc.function.name }}{{ tc.function.arguments | tojson }}{% endfor %}]"
            "{% endfor %}{{ tools | length }}"
        )

        def apply_chat_template(self, messages, tools=None, tokenize=False, add_generation_prompt=True):
            return jinja2.Environment().from_string(self.chat_template).render(messages=messages, tools=tools or [])

    messages = [Message("user", "q"), Message("assistant", '{"city": "x"}', "get_weather"), Message("observation", "ok")]
    text = render(messages, [WEATHER], tokenizer=TemplateTokenizer(), fmt="glm45")
    assert text == '[user:q][assistant:|get_weather{"city": "x"}][tool:ok]1'


@pytest.mark.parametrize("fmt", ["glm4", "glm45"])
def test_calls_kept_raw_render_back_to_the_model_text(fmt):
    # The agent records a call as Message("assistant", call.raw, call.name): the prompt must hold
    # exactly what the model wrote, so the engine can reuse its KV cache.
    turn = AssistantTurn(tool_calls=(ToolCall("get_weather", {"city": "北京", "days": 3}), ToolCall("python", "print('1')")))
    reply = render_turn(turn, fmt=fmt)
    parsed = parse(reply, fmt=fmt, tools=TOOLS)
    history = [Message("assistant", c.raw, c.name) for c in parsed.tool_calls]
    assert render(history, fmt=fmt, add_generation_prompt=False) == "[gMASK]<sop><|assistant|>" + reply


def test_messages_from_turn_render_like_the_model_wrote_them():
    reply = '\nLet me look.<|assistant|>get_weather\n{"city": "北京"}'
    turn = parse(reply)
    history = [Message("user", "q"), *messages_from_turn(turn)]
    assert render(history, add_generation_prompt=False).endswith("<|assistant|>" + reply)


# -- round trips and streaming ---------------------------------------------------------------------

MARKERS = ("<|", "|>", "<think>", "</think>", "<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>",
           "<arg_value>", "</arg_value>", "[gMASK]", "<sop>")
plain = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40).filter(
    lambda s: not any(m in s for m in MARKERS)
)
stripped = plain.map(str.strip)
names = st.from_regex(r"[a-z_][a-z0-9_.]{0,15}", fullmatch=True).filter(lambda n: n not in ("python", "simple_browser", "cogview"))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False, allow_infinity=False) | plain,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(plain, inner, max_size=3),
    max_leaves=8,
)
arg_keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
browser = st.lists(
    st.one_of(
        st.builds(lambda q, d: f"search({q!r}" + (f", recency_days={d})" if d is not None else ")"),
                  stripped.filter(bool), st.none() | st.integers(1, 365)),
        st.builds(lambda ids: f"mclick({ids!r})", st.lists(st.integers(0, 50), min_size=1, max_size=5)),
        st.builds(lambda i: f"mclick({i})", st.integers(0, 50)),
        st.builds(lambda u, p: f"open_url({u!r}" + (f", page={p})" if p is not None else ")"),
                  st.from_regex(r"https://[a-z]{1,10}\.com/[a-z0-9/]{0,10}", fullmatch=True), st.none() | st.integers(1, 9)),
    ),
    min_size=1, max_size=3,
).map("\n".join)
code = stripped.filter(lambda s: s and not s.startswith("`"))


def _call(fmt):
    function = st.builds(ToolCall, names, st.dictionaries(arg_keys, json_values, max_size=4))
    builtin = st.one_of(
        st.builds(ToolCall, st.just("python"), code),
        st.builds(ToolCall, st.just("cogview"), stripped.filter(bool)),
        st.builds(ToolCall, st.just("simple_browser"), browser),
    )
    return function | builtin


@st.composite
def turns(draw, fmt):
    text = draw(stripped)
    tool_calls = tuple(draw(st.lists(_call(fmt), max_size=3)))
    reasoning = draw(stripped) if fmt == "glm45" else ""
    if not text and not tool_calls:
        text = "ok"
    return AssistantTurn(text=text, tool_calls=tool_calls, reasoning=reasoning)


def _schema_for(turn):
    """Tool specs whose schemas type every argument as generated (GLM-4.5 values are typed by them)."""
    kinds = {str: "string", bool: "boolean", int: "integer", float: "number", list: "array", dict: "object", type(None): "null"}
    specs = {}
    for c in turn.tool_calls:
        if isinstance(c.arguments, dict):
            props = {k: {"type": kinds[type(v)]} for k, v in c.arguments.items()}
            spec = specs.setdefault(c.name, ToolSpec(c.name, parameters={"type": "object", "properties": {}}))
            spec.parameters["properties"].update(props)
        else:
            specs[c.name] = ToolSpec(c.name, kind=c.name)
    return list(specs.values())


def _same(a: AssistantTurn, b: AssistantTurn) -> bool:
    return (a.text, calls(a), a.reasoning) == (b.text, calls(b), b.reasoning)


@settings(max_examples=200, deadline=None)
@given(st.data())
@pytest.mark.parametrize("fmt", ["glm4", "glm45"])
def test_round_trip(fmt, data):
    turn = data.draw(turns(fmt))
    tools = _schema_for(turn) if fmt == "glm45" else ()
    back = parse(render_turn(turn, fmt=fmt), fmt=fmt, tools=tools)
    assert back.error is None, back.error
    assert _same(back, turn)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
@pytest.mark.parametrize("fmt", ["glm4", "glm45"])
def test_streaming_agrees_with_parse(fmt, data):
    turn = data.draw(turns(fmt))
    reply = render_turn(turn, fmt=fmt) + data.draw(st.sampled_from(["", "<|observation|>", "<|user|>junk"]))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(reply)), max_size=12)))
    pieces = [reply[i:j] for i, j in zip([0, *cuts], [*cuts, len(reply)])]
    parser = StreamParser(fmt=fmt, tools=_schema_for(turn) if fmt == "glm45" else ())
    events = [e for p in pieces for e in parser.feed(p)] + parser.flush()
    final = parser.finish()
    assert final == parse(reply, fmt=fmt, tools=parser.tools)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == final.text
    assert [(e.name, e.index) for e in events if isinstance(e, ToolCallStarted)] == [
        (c.name, i) for i, c in enumerate(turn.tool_calls)
    ]


def test_stream_announces_a_call_from_its_first_line():
    parser = StreamParser()
    assert parser.feed("get_wea") == []
    assert parser.feed("ther\n{") == [ToolCallStarted("get_weather", 0)]
    assert parser.feed('"city": "x"}') == []


def test_stream_holds_back_a_partial_marker():
    parser = StreamParser()
    assert parser.feed("\nHi <|obs") == [TextDelta("Hi")]
    assert parser.feed("ervation|>more") == []
    assert parser.flush() == [] and parser.finish().text == "Hi"
    glm45 = StreamParser(fmt="glm45")
    assert glm45.feed("\nLook<tool_") == [TextDelta("Look")]
    assert glm45.feed("call>f\n") == [ToolCallStarted("f", 0)]


def test_glm45_marker_split_by_a_stray_assistant_token_stays_text_as_it_streamed():
    # found by test_chat_format_fuzz: the stream shows "<think" before the ">" after a stray
    # <|assistant|> arrives, so dropping that token must not make a think block out of it afterwards
    for reply, text in [("<think<|assistant|>>plan</thinkk", "<think>plan</thinkk"), ("a</think<|assistant|>>b", "a</think>b")]:
        parser = StreamParser(fmt="glm45")
        shown = [e.text for k in range(0, len(reply), 3) for e in parser.feed(reply[k:k + 3]) if isinstance(e, TextDelta)]
        shown += [e.text for e in parser.flush() if isinstance(e, TextDelta)]
        turn = parser.finish()
        assert "".join(shown) == turn.text == text and turn.reasoning == ""
    # a stray <|assistant|> inside a block is still dropped from it
    turn = parse("<think>pl<|assistant|>an</think>\nDone.", fmt="glm45")
    assert (turn.reasoning, turn.text) == ("plan", "Done.")


@pytest.mark.parametrize("module", ["glm_runtime.chat_format", "glm_runtime.call_arguments", "glm_runtime.browser_commands", "glm_runtime.tokenizer", "prompts"])
def test_public_api_is_declared(module):
    mod = importlib.import_module(module)
    defined_here = {
        n for n, v in vars(mod).items()
        if not n.startswith("_") and (inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ == mod.__name__
    }
    assert defined_here <= set(mod.__all__)
    assert all(hasattr(mod, n) for n in mod.__all__)


@pytest.mark.parametrize("module", ["glm_runtime.chat_format", "glm_runtime.call_arguments", "glm_runtime.browser_commands", "prompts"])
def test_docstring_examples(module):
    import doctest

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
