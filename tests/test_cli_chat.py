"""The CLI: settings layering, `chat` with slash commands, `run`, `sessions` (against a loopback
OpenAI-compatible server, so no model loads here; tests/test_e2e.py runs the local engine).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.cli.settings import load_settings
from agent.errors import UserError
from tests.test_agent_backends import _call, _Server, _text

runner = CliRunner()


def test_settings_layers_defaults_file_env_flags(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text('model = "from-file"\nmax_steps = 7\nenable = ["python"]\nconfirm = "deny"\n')
    env = {"GLM_AGENT_MAX_STEPS": "8", "GLM_AGENT_ALLOW_PRIVATE_NETWORK": "yes"}
    s = load_settings({}, config=cfg, environ=env)
    assert (s.model, s.max_steps, s.enable, s.confirm, s.allow_private_network) == ("from-file", 8, ["python"],
                                                                                     "deny", True)
    s = load_settings({"max_steps": 9, "enable": "python,cogview", "model": None}, config=cfg, environ=env)
    assert (s.model, s.max_steps, s.enable) == ("from-file", 9, ["python", "cogview"])
    assert load_settings({}, environ={}).max_steps == 20
    assert load_settings({}, environ={"GLM_AGENT_CONFIG": str(cfg)}).model == "from-file"


@pytest.mark.parametrize("content,env,match", [
    ("nonsense = 1\n", {}, "unknown keys"),
    ("max_steps = [\n", {}, "not valid TOML"),
    ("", {"GLM_AGENT_MAX_STEPS": "many"}, "max_steps"),
    ('confirm = "maybe"\n', {}, "confirm"),
])
def test_bad_settings_are_user_errors(tmp_path, content, env, match):
    cfg = tmp_path / "c.toml"
    cfg.write_text(content)
    with pytest.raises(UserError, match=match):
        load_settings({}, config=cfg, environ=env)


@pytest.fixture
def server():
    s = _Server([])
    yield s
    s.close()


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.fixture
def tools_file(tmp_path):
    p = tmp_path / "my_tools.py"
    p.write_text("from tools import tool\n\n@tool\ndef add(a: int, b: int) -> int:\n"
                 "    '''Add two integers.'''\n    return a + b\n")
    return p


def test_chat_with_slash_commands(server, tmp_path, tools_file):
    server.replies = [_call("add", '{"a": 2, "b": 3}'), _text("It is ", "5."), _text("Fresh start.")]
    transcript = tmp_path / "t.json"
    stdin = f"/tools\n/help\nwhat is 2+3?\n/save {transcript}\n/reset\nhello again\n/bogus\n/exit\n"
    res = runner.invoke(app, ["chat", "--backend-url", server.url, "--enable", "none", "--tools", str(tools_file),
                              "--sessions-dir", str(tmp_path / "s")], input=stdin)
    assert res.exit_code == 0, res.output
    out = res.output
    assert "add" in out and "Add two integers" in out  # /tools
    assert "/reset" in out  # /help
    assert "It is 5." in out and "Fresh start." in out
    assert "unknown command /bogus" in out
    saved = json.loads(transcript.read_text())
    assert [m["role"] for m in saved] == ["system", "user", "assistant", "observation", "assistant"]
    # after /reset the model saw only the new question
    assert [m["content"] for m in server.requests[2]["messages"]][1:] == ["hello again"]


def test_run_plain_and_json(server, tmp_path, tools_file):
    server.replies = [_text("Hi", " there.")]
    res = runner.invoke(app, ["run", "hello", "--backend-url", server.url, "--enable", "none",
                              "--sessions-dir", str(tmp_path / "s")])
    assert res.exit_code == 0 and "Hi there." in res.stdout
    server.replies = [_call("add", '{"a": 1}'), _call("add", '{"a": 1, "b": 1}'), _text("2")]
    res = runner.invoke(app, ["run", "1+1", "--json", "--backend-url", server.url, "--enable", "none",
                              "--tools", str(tools_file), "--sessions-dir", str(tmp_path / "s")])
    assert res.exit_code == 0
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert [e["type"] for e in events if e["type"] in ("tool_call", "tool_result")] == ["tool_call", "tool_result"] * 2
    assert events[-1]["type"] == "final_answer" and events[-1]["text"] == "2"


def test_run_json_last_event_is_the_error_when_the_model_gives_up(server, tmp_path, tools_file):
    server.replies = [_call("add", '{"a": 1, "b": 1}')] * 3
    res = runner.invoke(app, ["run", "loop", "--json", "--backend-url", server.url, "--enable", "none",
                              "--tools", str(tools_file), "--max-steps", "1", "--sessions-dir", str(tmp_path / "s")])
    assert res.exit_code == 1
    last = json.loads(res.stdout.splitlines()[-1])
    assert last["type"] == "error" and last["kind"] == "budget"


def test_run_with_an_unknown_builtin_is_a_clear_error(server, tmp_path):
    res = runner.invoke(app, ["run", "x", "--json", "--backend-url", server.url, "--enable", "pyton",
                              "--sessions-dir", str(tmp_path / "s")])
    assert res.exit_code == 2
    last = json.loads(res.stdout.splitlines()[-1])
    assert last["type"] == "error" and "python" in last["message"]
    assert not list((tmp_path / "s").iterdir())  # no empty session left behind


def test_sessions_list_show_resume(server, tmp_path):
    sessions = str(tmp_path / "s")
    server.replies = [_text("first answer"), _text("second answer")]
    assert runner.invoke(app, ["run", "first question", "--backend-url", server.url, "--enable", "none",
                               "--sessions-dir", sessions]).exit_code == 0
    listed = runner.invoke(app, ["sessions", "list", "--sessions-dir", sessions], env={"COLUMNS": "200"})
    sid = listed.output.split("│")[1].strip() if "│" in listed.output else listed.output.split()[4]
    assert "first question" in listed.output
    shown = runner.invoke(app, ["sessions", "show", sid[:12], "--sessions-dir", sessions])
    assert "first question" in shown.output and "first answer" in shown.output
    raw = runner.invoke(app, ["sessions", "show", sid, "--json", "--sessions-dir", sessions])
    assert json.loads(raw.stdout.splitlines()[-1])["type"] == "final_answer"
    res = runner.invoke(app, ["sessions", "resume", sid, "and a second?", "--json", "--backend-url", server.url,
                              "--enable", "none", "--sessions-dir", sessions])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.splitlines()[-1])["text"] == "second answer"
    assert [m["content"] for m in server.requests[1]["messages"]][1:] == ["first question", "first answer",
                                                                          "and a second?"]
    missing = runner.invoke(app, ["sessions", "show", "nope", "--sessions-dir", sessions])
    assert missing.exit_code == 2


@pytest.mark.slow
def test_ctrl_c_cancels_the_run_and_the_last_event_says_so(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    server = _Server([_text(*(["word "] * 400))], delay=0.02)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "talk", "--json", "--backend-url", server.url,
             "--enable", "none", "--sessions-dir", str(tmp_path / "s")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root,
            env=os.environ | {"PYTHONPATH": str(root)},
            # As in a terminal: a test run started in the background (`pytest &`, nohup) inherits SIGINT
            # ignored, and Python then never raises KeyboardInterrupt, which is what Ctrl-C is here.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        lines = []
        for line in proc.stdout:
            lines.append(json.loads(line))
            if lines[-1]["type"] == "token":
                proc.send_signal(signal.SIGINT)
                break
        rest, _ = proc.communicate(timeout=60)
    finally:
        server.close()
    lines += [json.loads(line) for line in rest.splitlines()]
    assert proc.returncode == 1
    assert lines[-1]["type"] == "error" and lines[-1]["kind"] == "cancelled"
    assert sum(1 for e in lines if e["type"] == "token") < 400


def test_python_limits_from_file_env_and_flags_reach_the_tool(tmp_path):
    """The python tool's sandbox limits are settings like any other, and `build_registry` passes them on."""
    from agent.cli.builder import build_registry
    from agent.session import Session

    cfg = tmp_path / "config.toml"
    cfg.write_text("python_memory_mb = 300\npython_disk_mb = 100\n")
    s = load_settings({"python_timeout": 7.5, "enable": "python"}, config=cfg,
                      environ={"GLM_AGENT_PYTHON_MAX_PROCESSES": "9"})
    assert s.python_options() == {"timeout": 7.5, "memory_mb": 300, "max_processes": 9, "disk_mb": 100}
    registry = build_registry(s, Session.create(tmp_path / "s"))
    try:
        policy = registry.get("python").policy  # built, not started: no kernel runs here
        assert (policy.timeout, policy.memory_mb, policy.max_processes, policy.disk_mb) == (7.5, 300, 9, 100)
    finally:
        registry.close()
    defaults = load_settings({}, environ={})
    assert defaults.python_options() == {}


def test_a_python_limit_that_is_not_positive_is_a_clear_error(server, tmp_path):
    res = runner.invoke(app, ["run", "x", "--json", "--backend-url", server.url, "--python-memory-mb", "0",
                              "--sessions-dir", str(tmp_path / "s")])
    assert res.exit_code == 2
    last = json.loads(res.stdout.splitlines()[-1])
    assert last["type"] == "error" and "python_memory_mb (--python-memory-mb) must be positive" in last["message"]


@pytest.mark.sandbox
@pytest.mark.slow
def test_run_python_memory_limit_binds_in_the_sandbox(server, tmp_path):
    from sandbox import probe

    if not probe().strong:
        pytest.skip("needs bubblewrap: " + "; ".join(probe().problems))
    code = "x = b'x' * (300 * 2**20)\nprint(len(x))"  # fits the default 1024 MiB
    server.replies = [_call("python", json.dumps({"code": code})), _text("too big")]
    res = runner.invoke(app, ["run", "allocate", "--json", "--backend-url", server.url, "--enable", "python",
                              "--python-memory-mb", "128", "--confirm", "auto", "--sessions-dir", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    events = [json.loads(line) for line in res.stdout.splitlines()]
    (result,) = [e for e in events if e["type"] == "tool_result"]
    assert result["is_error"] and "memory limit of 128 MiB" in result["content"], result


# -- simple_browser's search settings ------------------------------------------------------------


def test_search_settings_from_file_env_and_flags_reach_the_browser(tmp_path):
    from agent.cli.builder import build_registry
    from agent.session import Session

    cfg = tmp_path / "config.toml"
    cfg.write_text('search_backend = "brave"\nsearxng_url = "http://file.example:8888"\n')
    env = {"GLM_AGENT_SEARCH_API_KEY": "s3cr3t-key"}
    s = load_settings({"enable": "simple_browser"}, config=cfg, environ=env)
    assert (s.search_backend, s.search_api_key) == ("brave", "s3cr3t-key")
    assert "s3cr3t-key" not in repr(s)  # the key is never shown
    registry = build_registry(s, Session.create(tmp_path / "a"))
    try:
        backend = registry.get("simple_browser").search_backend  # built, not started: no Chromium here
        assert (backend.name, backend.api_key) == ("brave", "s3cr3t-key")
    finally:
        registry.close()
    s = load_settings({"enable": "simple_browser", "search_backend": "searxng", "searxng_url": "http://127.0.0.1:9",
                       "allow_private_network": True}, config=cfg, environ=env)
    registry = build_registry(s, Session.create(tmp_path / "b"))
    try:
        tool = registry.get("simple_browser")
        assert (tool.search_backend.name, tool.search_backend.url) == ("searxng", "http://127.0.0.1:9")
        assert tool.policy.allow_private_network
    finally:
        registry.close()
    assert load_settings({}, environ={}).browser_options() == {}  # duckduckgo, public addresses only


@pytest.mark.parametrize("flags, match", [
    ({"search_backend": "bing"}, "must be one of duckduckgo, searxng, brave"),
    ({"search_backend": "searxng", "enable": "simple_browser"}, "needs --searxng-url"),
    ({"search_backend": "brave", "enable": "simple_browser"}, "GLM_AGENT_SEARCH_API_KEY"),
])
def test_bad_search_settings_are_user_errors(tmp_path, flags, match):
    from agent.cli.builder import build_registry
    from agent.session import Session

    with pytest.raises(UserError, match=match):
        build_registry(load_settings(flags, environ={}), Session.create(tmp_path / "s"))


def test_a_searxng_backend_without_its_url_is_fine_while_the_browser_is_off(tmp_path):
    from agent.cli.builder import build_registry
    from agent.session import Session

    s = load_settings({"search_backend": "searxng", "enable": "none"}, environ={})
    build_registry(s, Session.create(tmp_path / "s")).close()


def test_run_searches_with_the_searxng_server_given_on_the_command_line(server, tmp_path, monkeypatch):
    from browser_fixtures.site import Reply, Site

    asked = []

    def searxng(req):
        asked.append(req.query["q"][0])
        body = {"results": [{"url": "https://glm.example/4", "title": "GLM-4 released", "content": "In June."}]}
        return Reply(json.dumps(body).encode(), content_type="application/json")

    monkeypatch.setenv("GLM_AGENT_SEARCH_API_KEY", "s3cr3t-key")
    server.replies = [_call("simple_browser", json.dumps({"commands": 'search("glm-4 release")'})),
                      _text("In June【0†GLM-4 released】.")]
    with Site({"/search": searxng}) as site:
        res = runner.invoke(app, ["run", "when?", "--json", "--backend-url", server.url, "--enable", "simple_browser",
                                  "--search-backend", "searxng", "--searxng-url", site.url(""), "--confirm", "auto",
                                  "--sessions-dir", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    events = [json.loads(line) for line in res.stdout.splitlines()]
    (result,) = [e for e in events if e["type"] == "tool_result"]
    assert not result["is_error"] and result["content"].startswith("【0†GLM-4 released†glm.example】\nIn June.")
    assert asked == ["glm-4 release"]
    logged = "".join(p.read_text(errors="replace") for p in (tmp_path / "s").rglob("*") if p.is_file())
    assert "s3cr3t-key" not in res.output + logged
