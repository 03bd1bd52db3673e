"""The `python` tool against the real sandboxed kernel: setup/call/close with a ToolContext,
then once through ToolRegistry and once through the CLI."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import pytest

from sandbox import probe
from sandbox.leftovers import snapshot, wait_for_no_leftovers
from tools.base import ToolContext
from tools.builtin.python import PythonTool, render
from sandbox import Display, Execution, KernelError

needs_sandbox = pytest.mark.skipif(not probe().strong, reason="needs bubblewrap: " + "; ".join(probe().problems))
pytestmark = [pytest.mark.sandbox, pytest.mark.slow, needs_sandbox]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    before = snapshot()
    base = tmp_path_factory.mktemp("session")
    ctx = ToolContext(workdir=base / "work", artifacts_dir=base / "artifacts")
    tool = PythonTool(timeout=20, memory_mb=512, output_chars=2000)
    tool.setup(ctx)
    yield tool, ctx
    tool.close()
    tool.close()  # safe to repeat
    wait_for_no_leftovers(*before)


def call(session, code, **ctx_changes):
    tool, ctx = session
    if ctx_changes:
        ctx = ToolContext(**{**ctx.__dict__, "cancelled": threading.Event(), **ctx_changes})
    return tool.call(code, ctx)


def test_prints_and_keeps_state(session):
    assert call(session, "print(1 + 1)").content == "2"
    call(session, "counter = 40")
    r = call(session, "counter + 2")
    assert r.content == "42" and not r.is_error and r.metadata["status"] == "ok"


def test_workdir_is_mnt_data(session):
    tool, ctx = session
    call(session, "open('/mnt/data/result.csv', 'w').write('a,b\\n1,2\\n')")
    assert (ctx.workdir / "result.csv").read_text() == "a,b\n1,2\n"
    (ctx.workdir / "input.txt").write_text("from the user")
    assert call(session, "print(open('input.txt').read())").content == "from the user"


def test_plot_png_lands_in_artifacts(session):
    tool, ctx = session
    r = call(session, "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')\nplt.show()")
    assert not r.is_error, r.content
    assert len(r.artifacts) == 1 and r.artifacts[0].parent == ctx.artifacts_dir
    assert r.artifacts[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"[image saved: {r.artifacts[0].name}]" in r.content
    assert "iVBOR" not in r.content  # the model sees a reference, never the base64


def test_error_is_ansi_free(session):
    r = call(session, "def f():\n    return 1 / 0\nf()")
    assert r.is_error and "ZeroDivisionError" in r.content and "\x1b" not in r.content


def test_syntax_error_ends_like_every_observation(session):
    # IPython ends a SyntaxError's traceback with a newline, a NameError's without one
    for code in ("print(1 + 2", "pritn(3)"):
        r = call(session, code)
        assert r.is_error and r.content == r.content.rstrip() and r.content.splitlines()[-1].endswith(
            ("SyntaxError: incomplete input", "NameError: name 'pritn' is not defined"))


def test_output_is_bounded_head_and_tail(session):
    r = call(session, "print('HEAD' + 'x' * 100000 + 'TAIL')")
    assert len(r.content) < 2200
    assert r.content.startswith("HEAD") and r.content.endswith("TAIL") and "omitted" in r.content


def test_timeout_from_deadline_interrupts_and_keeps_state(session):
    call(session, "kept = 'still here'")
    t0 = time.monotonic()
    r = call(session, "import time\nwhile True: time.sleep(0.01)", deadline=time.monotonic() + 1.0)
    assert r.is_error and r.metadata["status"] == "timeout" and not r.metadata["state_lost"]
    assert "time limit" in r.content and time.monotonic() - t0 < 5
    assert call(session, "print(kept)").content == "still here"


def test_cancellation_interrupts_promptly(session):
    tool, ctx = session
    cancelled = threading.Event()
    threading.Timer(0.5, cancelled.set).start()
    t0 = time.monotonic()
    r = call(session, "import time\ntime.sleep(30)", cancelled=cancelled)
    assert r.metadata["status"] == "cancelled" and time.monotonic() - t0 < 3


def test_kernel_death_is_reported_as_state_lost(session):
    call(session, "x = 1")
    r = call(session, "import os\nos._exit(1)")
    assert r.is_error and r.metadata["state_lost"] and "earlier state is gone" in r.content
    assert "NameError" in call(session, "x").content
    assert call(session, "print('back')").content == "back"


def test_artifacts_inside_workdir_are_not_written_through_links(tmp_path):
    """A kernel that plants a link where the next image will go cannot make the host write through it."""
    before = snapshot()
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    work = tmp_path / "work"
    ctx = ToolContext(workdir=work, artifacts_dir=work / "artifacts")
    tool = PythonTool(timeout=20)
    try:
        tool.setup(ctx)
        call((tool, ctx), f"import os\nos.makedirs('/mnt/data/artifacts', exist_ok=True)\n"
                          f"os.symlink({str(victim)!r}, '/mnt/data/artifacts/python-001.png')")
        r = call((tool, ctx), "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
        assert victim.read_text() == "untouched"
        assert r.artifacts and r.artifacts[0].name == "python-002.png" and not r.artifacts[0].is_symlink()
        call((tool, ctx), f"import shutil\nshutil.rmtree('/mnt/data/artifacts')\nos.symlink({str(tmp_path)!r}, '/mnt/data/artifacts')")
        r = call((tool, ctx), "plt.plot([1, 2])\nplt.show()")
        assert r.artifacts == [] and "could not be saved" in r.content
        assert sorted(p.name for p in tmp_path.iterdir()) == ["victim", "work"]
    finally:
        tool.close()
    wait_for_no_leftovers(*before)


def test_sessions_never_share_a_kernel_or_directory(tmp_path):
    before = snapshot()
    a, b = PythonTool(timeout=20), PythonTool(timeout=20)
    ca = ToolContext(workdir=tmp_path / "a", artifacts_dir=tmp_path / "a-art")
    cb = ToolContext(workdir=tmp_path / "b", artifacts_dir=tmp_path / "b-art")
    try:
        call((a, ca), "secret = 1\nopen('/mnt/data/mine', 'w').write('a')")
        assert "NameError" in call((b, cb), "secret").content
        assert call((b, cb), "import os\nprint(os.listdir('/mnt/data'))").content == "[]"
    finally:
        a.close()
        b.close()
    wait_for_no_leftovers(*before)


def test_through_the_registry(tmp_path):
    tools = pytest.importorskip("tools")
    if not hasattr(tools, "ToolRegistry"):
        pytest.skip("tools.ToolRegistry has not landed")
    before = snapshot()
    registry = tools.ToolRegistry(workdir=tmp_path / "work", artifacts_dir=tmp_path / "artifacts")
    try:
        registry.add_builtin("python", timeout=30, memory_mb=512)
        assert registry.call("python", "print(1+1)").content == "2"
        r = registry.call("python", "import matplotlib.pyplot as plt\nplt.plot([0, 1])\nplt.show()")
        assert r.artifacts and r.artifacts[0].exists() and r.artifacts[0].parent == tmp_path / "artifacts"
        r = registry.call("python", "while True: pass", timeout=1.0)
        assert r.is_error and "time limit" in r.content
    finally:
        registry.close()
    wait_for_no_leftovers(*before)


def test_cli_tools_call_python(tmp_path):
    exe = shutil.which("glm-agent")
    if exe is None:
        pytest.skip("glm-agent is not installed")
    before = snapshot()
    work = tmp_path / "w"
    run = lambda code: subprocess.run([exe, "tools", "call", "python", code, "--workdir", str(work)],  # noqa: E731
                                      capture_output=True, text=True, timeout=120)
    out = run("print(1+1)")
    if out.returncode != 0 and "No such command" in out.stderr:
        pytest.skip("`glm-agent tools call` has not landed")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"
    out = run("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
    assert out.returncode == 0, out.stderr
    pngs = list((work / "artifacts").glob("python-*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:4] == b"\x89PNG"
    wait_for_no_leftovers(*before)


@pytest.mark.parametrize("status", ["ok", "error"])
def test_render_is_plain_and_bounded(status):
    ex = Execution(status=status, stdout="\x1b[31mred\x1b[0m\n" + "y" * 500, displays=[Display({"text/plain": "7"})],
                   error=KernelError("E", "v", "\x1b[0;31mE\x1b[0m: v") if status == "error" else None,
                   notes=["a note"])
    text = render(ex, ["python-001.png"], 200)
    assert "\x1b" not in text and len(text) < 260 and text.startswith("red")
    assert text.endswith("[sandbox: a note]")
