"""A sandboxed, stateful Jupyter kernel per session: start, execute, interrupt, restart, shutdown.

The model's code failing (an exception, a timeout, the kernel dying) is a result, never an
exception: `execute` returns an `Execution`. Only infrastructure failures raise
`SandboxError` (the kernel cannot start), and asking for isolation the machine cannot give
raises `IsolationUnavailable`.

    >>> with Kernel("/tmp/work", Policy(memory_mb=512)) as k:     # doctest: +SKIP
    ...     k.execute("x = 21").status
    ...     k.execute("print(x * 2)").stdout
    'ok'
    '42\\n'
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import signal
import subprocess
import threading
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path

from sandbox.cgroup import Cgroup
from sandbox.execution import Cell, Execution
from sandbox.isolation import KERNEL_RUN, Jail
from sandbox.policy import Policy
from sandbox.probe import Capabilities, probe

__all__ = ["Kernel", "SandboxError", "IsolationUnavailable"]

log = logging.getLogger(__name__)
DISK_CHECK_INTERVAL = 0.5  # seconds between work-directory size checks while a cell runs
PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


class SandboxError(RuntimeError):
    """The sandbox itself failed (the kernel would not start, a limit could not be set)."""


class IsolationUnavailable(SandboxError):
    """The policy asks for isolation this machine cannot give; pass `allow_unsafe=True` to run weaker."""


def _choose_isolation(policy: Policy, caps: Capabilities) -> Policy:
    """The isolation a kernel will get: the strongest that works, or an error saying why not."""
    wanted = policy.isolation
    if wanted == "none" and not policy.allow_unsafe:
        raise IsolationUnavailable("isolation='none' runs code unconfined: also pass allow_unsafe=True")
    if wanted in ("auto", "bwrap") and caps.strong:
        return policy.with_(isolation="bwrap")
    if wanted in ("auto", "landlock") and caps.fallback:
        return policy.with_(isolation="landlock")
    if wanted == "none" or (wanted == "auto" and policy.allow_unsafe):
        return policy.with_(isolation="none")
    raise IsolationUnavailable(
        f"isolation {wanted!r} is unavailable: " + "; ".join(caps.problems)
        + ". Install bubblewrap, or pass allow_unsafe=True to run with rlimits and cgroups only."
    )


@contextmanager
def _closing_client_loop():
    """Close the event loop that jupyter_client's blocking calls open in this thread, when done.

    Its blocking methods run coroutines on a loop that jupyter_core creates per thread (in a
    ContextVar) and never closes. A tool call runs in a thread of its own, so every call left an
    open loop and its two self-pipe sockets for the garbage collector, which at interpreter exit
    could close them in the wrong order ("Exception ignored in BaseEventLoop.__del__ ... Invalid
    file descriptor"). A loop that was already there before is left alone.
    """
    try:
        from jupyter_core.utils import _loop
    except ImportError:  # another jupyter_core: nothing known to close
        yield
        return
    before = _loop.get()
    try:
        yield
    finally:
        loop = _loop.get()
        if loop is not None and loop is not before and not loop.is_running() and not loop.is_closed():
            loop.close()
            _loop.set(before)


class _Process:
    """The launched kernel, supervised by a thread that lives exactly as long as it does.

    The launcher arms PR_SET_PDEATHSIG, which fires when the *thread* that forked it exits;
    forking from this thread (which only returns once the process is gone) makes the signal
    mean "the host died", whatever thread called `start()`.
    """

    def __init__(self, argv: list[str], fds: list[int]) -> None:
        self.exited = threading.Event()
        self.returncode: int | None = None
        self.stderr_tail: deque[bytes] = deque(maxlen=64)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(argv, fds), daemon=True, name="sandbox-kernel")
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise SandboxError(f"could not launch the kernel: {self._error}") from self._error

    def _run(self, argv: list[str], fds: list[int]) -> None:
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, pass_fds=fds, start_new_session=True, env={})
        except OSError as e:
            self._error = e
            self._started.set()
            self.exited.set()
            return
        finally:
            for fd in fds:
                os.close(fd)
        self._started.set()
        # Keep only the tail of what the kernel writes at the fd level: a flood must not fill memory.
        for line in iter(lambda: self.proc.stderr.read1(4096), b""):
            self.stderr_tail.append(line)
        self.returncode = self.proc.wait()
        self.exited.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        if not self.exited.is_set():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.exited.wait(5)
        self._thread.join(1)

    def stderr_text(self) -> str:
        return b"".join(self.stderr_tail).decode(errors="replace")[-2000:]


class Kernel:
    """One isolated kernel session with its work directory mounted at `/mnt/data`.

    A context manager; also usable with explicit `start()` and `shutdown()`. Sessions never
    share a kernel, a uid or a socket directory.
    """

    def __init__(self, workdir: str | os.PathLike, policy: Policy | None = None) -> None:
        self.caps = probe()
        self.policy = _choose_isolation(policy or Policy(), self.caps)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._jail: Jail | None = None
        self._proc: _Process | None = None
        self._cgroup: Cgroup | None = None
        self._client = None
        self._zmq = None
        self._disk_checked = 0.0
        self._lock = threading.RLock()
        self.restarts = 0

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> Kernel:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    @property
    def started(self) -> bool:
        return self._proc is not None

    @property
    def alive(self) -> bool:
        return self._proc is not None and not self._proc.exited.is_set()

    @property
    def sandboxed(self) -> bool:
        return self.policy.isolation == "bwrap"

    def protections(self) -> list[str]:
        """The protections active for this session, one line each (what `doctor` prints)."""
        if self._jail is None:
            return ["not started"]
        return self._jail.protections(self._cgroup.version if self._cgroup else None)

    @property
    def cgroup(self) -> Cgroup | None:
        """The control group of the running kernel, when the machine offers one."""
        return self._cgroup

    def pids(self) -> list[int]:
        """Host pids of the kernel's processes (its cgroup, else the launcher)."""
        if self._cgroup is not None:
            return self._cgroup.pids()
        return [self._proc.pid] if self.alive else []

    def start(self) -> Kernel:
        """Start the kernel and wait until it answers. Raises SandboxError when it cannot."""
        with self._lock, _closing_client_loop():
            first = self._jail is None
            if first:
                self._jail = Jail(self.workdir, self.policy, self.caps)
            if self._proc is None:
                try:
                    self._launch()
                except BaseException:
                    self._stop()
                    if first:  # nobody will call shutdown() on a kernel that never started
                        self._jail.release()
                        self._jail = None
                    raise
            return self

    def _launch(self) -> None:
        jail = self._jail
        run = jail.new_run_dir()
        key = secrets.token_hex(32)
        base = {"transport": "ipc", "signature_scheme": "hmac-sha256", "key": key, "kernel_name": "python3"}
        ports = {name: i + 1 for i, name in enumerate(PORTS)}
        inside = KERNEL_RUN if self.sandboxed else str(run)  # the fallbacks see host paths
        kernel_info = {**base, **ports, "ip": f"{inside}/k"}
        host_info = {**base, **ports, "ip": f"{run}/k"}
        if self.caps.cgroup is not None:
            try:
                self._cgroup = Cgroup.create(self.policy.memory_mb, self.policy.max_processes, self.policy.cpu_cores)
            except OSError as e:
                log.warning("cgroup unavailable, falling back to rlimits: %s", e)
        argv, fds = jail.command(run, kernel_info, self._cgroup.procs_files() if self._cgroup else [])
        self._proc = _Process(argv, fds)
        self._connect(host_info)
        jail.seal_run_dir(run)

    def _connect(self, info: dict) -> None:
        try:
            from jupyter_client import BlockingKernelClient
        except ImportError as e:  # pragma: no cover - a dependency of the package
            raise ImportError("the sandbox needs jupyter_client and ipykernel: pip install jupyter_client ipykernel") from e
        import zmq

        # A context of its own: the kernel's sockets appear a moment after launch, and the default
        # 100 ms reconnect interval would add most of that to every start; never touch the shared one.
        self._zmq = zmq.Context()
        self._zmq.setsockopt(zmq.RECONNECT_IVL, 5)
        self._zmq.setsockopt(zmq.LINGER, 0)
        client = BlockingKernelClient(context=self._zmq)
        client.load_connection_info(info)
        client.session.key = info["key"].encode()
        client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=True)
        self._client = client
        deadline = time.monotonic() + self.policy.start_timeout
        replied = False
        msg_id = client.kernel_info()
        while time.monotonic() < deadline:
            if self._proc.exited.is_set():
                raise SandboxError(f"the kernel exited while starting (code {self._proc.returncode}): "
                                   f"{self._proc.stderr_text()}")
            if not replied:
                try:
                    reply = client.get_shell_msg(timeout=0.05)
                    replied = reply["parent_header"].get("msg_id") == msg_id
                except queue.Empty:
                    pass
                continue
            # The shell answered; wait until iopub delivers too, so no output of cell one is lost.
            try:
                client.get_iopub_msg(timeout=0.05)
                self._drain()
                return
            except queue.Empty:
                msg_id = client.kernel_info()
                replied = False
        raise SandboxError(f"the kernel did not answer within {self.policy.start_timeout} s: "
                           f"{self._proc.stderr_text()}")

    def _drain(self) -> None:
        for get in (self._client.get_iopub_msg, self._client.get_shell_msg, self._client.get_control_msg):
            while True:
                try:
                    get(timeout=0)
                except queue.Empty:
                    break

    def _await_reply(self, msg_id: str, timeout: float = 1.0) -> None:
        # The execute_reply comes just before the idle status; take it so replies never pile up.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._proc.exited.is_set():
            try:
                if self._client.get_shell_msg(timeout=0.02)["parent_header"].get("msg_id") == msg_id:
                    return
            except queue.Empty:
                continue

    def _stop(self) -> None:
        if self._client is not None:
            self._client.stop_channels()
            self._client = None
        if self._zmq is not None:
            self._zmq.destroy(linger=0)
            self._zmq = None
        if self._proc is not None:
            self._proc.kill()
            self._proc = None
        if self._cgroup is not None:
            try:
                self._cgroup.destroy()
            except OSError as e:  # keep shutting down: the uid and the work directory must still go back
                log.warning("could not remove cgroup %s: %s", self._cgroup.dirs, e)
            self._cgroup = None

    def restart(self) -> None:
        """Kill the kernel and everything it started, then start a fresh one (state is lost)."""
        with self._lock:
            self._stop()
            self.restarts += 1
            self.start()

    def shutdown(self) -> None:
        """Kill the kernel, its children and its cgroup; return the uid and the work directory."""
        with self._lock, _closing_client_loop():
            self._stop()
            if self._jail is not None:
                self._jail.release()
                self._jail = None

    def interrupt(self) -> None:
        """Ask the kernel to raise KeyboardInterrupt in the running cell (message mode, so only
        the kernel's own process group is signalled, never bubblewrap)."""
        if self._client is not None and self.alive:
            msg = self._client.session.msg("interrupt_request", {})
            self._client.control_channel.send(msg)

    # ----------------------------------------------------------------- execution
    def execute(self, code: str, timeout: float | None = None, cancelled: threading.Event | None = None) -> Execution:
        """Run one cell. Never raises for what the code does; see `Execution.status`."""
        with self._lock, _closing_client_loop():
            if not self.alive:
                state_lost = self.started
                self.restart() if self.started else self.start()
                if state_lost:
                    result = self._run(code, timeout, cancelled)
                    result.state_lost = True
                    result.notes.insert(0, "the kernel had died and was restarted: earlier state is gone")
                    return result
            return self._run(code, timeout, cancelled)

    def _run(self, code: str, timeout: float | None, cancelled: threading.Event | None) -> Execution:
        policy = self.policy
        t0 = time.monotonic()
        deadline = t0 + (policy.timeout if timeout is None else timeout)
        msg_id = self._client.execute(code, silent=False, store_history=True, allow_stdin=False, stop_on_error=False)
        cell = Cell(msg_id, policy.output_limit)
        stop_reason, stopped_at = None, 0.0
        while True:
            if self._proc.exited.is_set():
                return self._died(cell, t0)
            now = time.monotonic()
            if stop_reason is None:
                stop_reason = self._should_stop(cell, deadline, cancelled)
                if stop_reason:
                    stopped_at = now
                    self.interrupt()
            elif now - stopped_at > policy.interrupt_grace:
                return self._restart_after(stop_reason, cell, t0)
            try:
                if cell.add(self._client.get_iopub_msg(timeout=0.02)):
                    break
            except queue.Empty:
                continue
        self._await_reply(msg_id)
        self._drain()
        result = cell.result(stop_reason, duration=time.monotonic() - t0)
        if stop_reason is not None:
            result.notes.append(self._stop_note(stop_reason) + "; the kernel was interrupted, its state is kept")
        result.notes.extend(self._disk_notes())
        return result

    def _should_stop(self, cell: Cell, deadline: float, cancelled: threading.Event | None) -> str | None:
        if cancelled is not None and cancelled.is_set():
            return "cancelled"
        now = time.monotonic()
        if now > deadline:
            return "timeout"
        if cell.output_bytes > self.policy.output_limit * self.policy.flood_factor:
            return "flood"
        if now - self._disk_checked > DISK_CHECK_INTERVAL:  # a walk of the tree: not on every poll
            self._disk_checked = now
            if self._workdir_bytes() > self.policy.disk_mb << 20:
                return "disk"
        return None

    def _stop_note(self, reason: str) -> str:
        return {
            "timeout": "the cell ran past its time limit",
            "cancelled": "the cell was cancelled",
            "flood": f"the cell wrote more than {self.policy.output_limit * self.policy.flood_factor} bytes of output",
            "disk": f"the work directory went past its {self.policy.disk_mb} MiB quota",
        }[reason]

    def _died(self, cell: Cell, t0: float) -> Execution:
        oom = self._cgroup is not None and self._cgroup.oom_killed()
        why = (f"the kernel was killed: it went past the memory limit of {self.policy.memory_mb} MiB" if oom
               else f"the kernel process exited (code {self._proc.returncode})")
        self.restart()
        return cell.result("died", state_lost=True, duration=time.monotonic() - t0,
                           notes=[why + "; it was restarted and earlier state is gone"])

    def _restart_after(self, reason: str, cell: Cell, t0: float) -> Execution:
        self.restart()
        note = (self._stop_note(reason) + f"; it ignored the interrupt for {self.policy.interrupt_grace:g} s, "
                "so the kernel was restarted and earlier state is gone")
        return cell.result(reason, state_lost=True, duration=time.monotonic() - t0, notes=[note])

    def _workdir_bytes(self) -> int:
        used = 0
        for dirpath, _, filenames in os.walk(self.workdir, followlinks=False):
            for name in filenames:
                try:
                    used += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
                except OSError:
                    pass
        return used

    def _disk_notes(self) -> list[str]:
        used = self._workdir_bytes()
        if used > self.policy.disk_mb << 20:
            return [f"the work directory holds {used >> 20} MiB, over the {self.policy.disk_mb} MiB quota: "
                    "delete files; writes may fail"]
        return []
