"""The sandbox's kernel manager, policy, probe and output buffer (adversarial tests live in
test_sandbox_adversarial.py)."""

from __future__ import annotations

import os
import threading
import time

import pytest

import sandbox
from sandbox import Capabilities, IsolationUnavailable, Kernel, OutputBuffer, Policy, probe
from sandbox.kernel import _choose_isolation
from sandbox.leftovers import snapshot, wait_for_no_leftovers

needs_sandbox = pytest.mark.skipif(not probe().strong, reason="needs bubblewrap: " + "; ".join(probe().problems))
NO_BWRAP = Capabilities(bwrap=None, bwrap_works=False, root=False, cgroup=None, landlock_abi=0, seccomp=False,
                        problems=("bubblewrap not installed",))
STRONG = Capabilities(bwrap="/usr/bin/bwrap", bwrap_works=True, root=True, cgroup=1, landlock_abi=7, seccomp=True)


def test_public_api_is_explicit():
    assert sorted(sandbox.__all__) == sorted(
        ["Capabilities", "Display", "Execution", "IsolationUnavailable", "Kernel", "KernelError", "OutputBuffer",
         "Policy", "SandboxError", "probe"])
    for name in sandbox.__all__:
        assert getattr(sandbox, name) is not None


def test_output_buffer_keeps_head_and_tail():
    buf = OutputBuffer(limit=10)
    for chunk in ("012", "3456789", "abc", "def"):
        buf.add(chunk)
    assert buf.truncated and buf.total == 16
    assert buf.text() == "01234\n[... 6 bytes omitted ...]\nbcdef"
    small = OutputBuffer(limit=100)
    small.add("hi\n")
    assert small.text() == "hi\n" and not small.truncated


def test_output_buffer_memory_stays_bounded():
    buf = OutputBuffer(limit=1000)
    for _ in range(10_000):
        buf.add("x" * 100)
    assert buf.tail_len < 1000 + 100 and buf.head_len == 500


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError):
        Policy(memory_mb=0)
    with pytest.raises(ValueError):
        Policy(isolation="docker")
    assert Policy().with_(timeout=3).timeout == 3


def test_refuses_without_strong_isolation_unless_opted_in():
    with pytest.raises(IsolationUnavailable, match="bubblewrap not installed"):
        _choose_isolation(Policy(), NO_BWRAP)
    with pytest.raises(IsolationUnavailable):
        _choose_isolation(Policy(isolation="bwrap", allow_unsafe=True), NO_BWRAP)
    with pytest.raises(IsolationUnavailable, match="allow_unsafe"):
        _choose_isolation(Policy(isolation="none"), STRONG)
    assert _choose_isolation(Policy(allow_unsafe=True), NO_BWRAP).isolation == "none"
    assert _choose_isolation(Policy(), STRONG).isolation == "bwrap"


def test_probe_reports_this_machine():
    caps = probe()
    assert caps.root == (os.geteuid() == 0)
    assert caps.strong == caps.bwrap_works
    if not caps.strong:
        assert caps.problems


@pytest.fixture
def clean():
    before = snapshot()
    yield
    wait_for_no_leftovers(*before)


@pytest.mark.sandbox
@needs_sandbox
def test_execute_collects_streams_results_displays_and_errors(tmp_path, clean):
    with Kernel(tmp_path / "w", Policy(memory_mb=512)) as k:
        r = k.execute("import sys\nprint('out')\nprint('err', file=sys.stderr)\n6 * 7")
        assert (r.status, r.stdout, r.stderr) == ("ok", "out\n", "err\n")
        assert r.displays[-1].kind == "execute_result" and r.displays[-1].data["text/plain"] == "42"
        r = k.execute("from IPython.display import display, HTML\ndisplay(HTML('<b>x</b>'))")
        assert r.displays[0].data["text/html"] == "<b>x</b>"
        r = k.execute("raise ValueError('bad input')")
        assert r.status == "error" and r.error.ename == "ValueError" and r.error.evalue == "bad input"
        assert k.execute("input()").status == "error"  # no stdin: the model cannot block on a prompt
        protections = k.protections()
        assert any(p.startswith("namespaces") for p in protections) and "network: none" in protections
        if os.geteuid() == 0:
            assert any(p.startswith("uid: ") for p in protections)


@pytest.mark.sandbox
@needs_sandbox
def test_calls_from_short_lived_threads_leave_no_open_event_loop(tmp_path, clean):
    """Each tool call runs in a thread of its own; jupyter_client's blocking calls open an event
    loop per thread. Unclosed, they piled up (two sockets each) until the garbage collector or
    interpreter exit closed them, the latter with an "Exception ignored" traceback."""
    import asyncio
    import gc

    def open_loops():
        return [o for o in gc.get_objects() if issubclass(type(o), asyncio.AbstractEventLoop) and not o.is_closed()]

    before = len(open_loops())
    with Kernel(tmp_path / "w", Policy(memory_mb=512)) as k:
        outs = []
        for i in range(4):
            t = threading.Thread(target=lambda i=i: outs.append(k.execute(f"print({i} * 2)").stdout))
            t.start()
            t.join()
        assert sorted(outs) == ["0\n", "2\n", "4\n", "6\n"]
        assert len(open_loops()) == before


@pytest.mark.sandbox
@needs_sandbox
def test_restart_loses_state_and_interrupt_works_from_another_thread(tmp_path, clean):
    with Kernel(tmp_path / "w", Policy(memory_mb=512)) as k:
        k.execute("a = 1")
        k.restart()
        assert k.execute("a").error.ename == "NameError" and k.restarts == 1
        threading.Timer(0.3, k.interrupt).start()
        t0 = time.monotonic()
        r = k.execute("import time\ntime.sleep(20)")
        assert r.error.ename == "KeyboardInterrupt" and time.monotonic() - t0 < 5
        assert k.execute("print('next cell runs')").stdout == "next cell runs\n"  # not aborted


@pytest.mark.sandbox
def test_plain_kernel_needs_the_unsafe_opt_in_and_says_so(tmp_path, clean):
    with pytest.raises(IsolationUnavailable):
        Kernel(tmp_path / "w", Policy(isolation="none"))
    with Kernel(tmp_path / "w", Policy(isolation="none", allow_unsafe=True, memory_mb=512)) as k:
        assert not k.sandboxed
        assert k.execute("import os\nprint(os.getcwd())").stdout.strip() == str((tmp_path / "w").resolve())
        assert not any(p.startswith("namespaces") for p in k.protections())
        assert any(p.startswith("rlimits") for p in k.protections())


@pytest.mark.sandbox
@needs_sandbox
def test_network_opt_in_shares_the_hosts_network(tmp_path, clean):
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    try:
        with Kernel(tmp_path / "w", Policy(memory_mb=512, network=True)) as k:
            r = k.execute(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5).close()\nprint('ok')")
            assert r.stdout == "ok\n", r
            assert "network: shared with the host (policy.network)" in k.protections()
    finally:
        srv.close()


def test_cell_collects_only_its_own_messages():
    from sandbox.execution import Cell

    def msg(parent, kind, **content):
        return {"parent_header": {"msg_id": parent}, "msg_type": kind, "content": content}

    cell = Cell("mine", output_limit=1000)
    assert not cell.add(msg("other", "stream", name="stdout", text="not mine"))
    assert not cell.add(msg("mine", "stream", name="stdout", text="a"))
    assert not cell.add(msg("mine", "stream", name="stderr", text="b"))
    assert not cell.add(msg("mine", "display_data", data={"image/png": "iVBOR"}))
    assert not cell.add(msg("mine", "error", ename="E", evalue="v", traceback=["t1", "t2"]))
    assert not cell.add(msg("other", "status", execution_state="idle"))
    assert cell.add(msg("mine", "status", execution_state="idle"))
    r = cell.result()
    assert (r.status, r.stdout, r.stderr, r.error.traceback) == ("error", "a", "b", "t1\nt2")
    assert r.displays[0].data == {"image/png": "iVBOR"}
    assert cell.result("timeout").status == "timeout"


def test_cell_drops_rich_output_over_its_size_limit():
    from sandbox.execution import Cell

    cell = Cell("m", output_limit=100, display_limit=1000)
    for size in (600, 600, 300):
        cell.add({"parent_header": {"msg_id": "m"}, "msg_type": "display_data", "content": {"data": {"image/png": "A" * size}}})
    r = cell.result()
    assert [len(d.data["image/png"]) for d in r.displays] == [600, 300]
    assert r.notes == ["1 rich output(s) dropped: over the size limit"]


@pytest.mark.sandbox
@needs_sandbox
def test_a_kernel_that_cannot_start_leaves_nothing(tmp_path, clean, monkeypatch):
    from sandbox import SandboxError

    workdir = tmp_path / "w"
    k = Kernel(workdir, Policy(start_timeout=5))
    monkeypatch.setattr("sandbox.isolation.Jail._kernel_flags", staticmethod(lambda startup: ["--no-such-flag"]))
    with pytest.raises(SandboxError, match="exited while starting"):
        k.start()
    assert not k.started and k.protections() == ["not started"]
    assert workdir.stat().st_uid == os.getuid()  # the work directory went back to its owner
