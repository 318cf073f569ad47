"""Child processes for local servers: free loopback ports, start, stop, no strays left behind."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

_PR_SET_PDEATHSIG = 1
T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the kernel picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _child_setup(
    die_with_parent: bool, run_as: tuple[int, int] | None
) -> Callable[[], None] | None:
    if not die_with_parent and run_as is None:
        return None

    def setup() -> None:
        if die_with_parent:
            # Linux only: the child gets SIGTERM when the process that started it exits, so a
            # killed pytest run does not leave etcd or Redis behind.
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if run_as is not None:
            os.setgid(run_as[1])
            os.setuid(run_as[0])

    return setup


class WaitTimeout(AssertionError, TimeoutError):
    """What :func:`wait_until` raises: a failed assertion to pytest, a TimeoutError to code that
    waits for a server."""


def wait_until(
    check: Callable[[], T],
    timeout: float = 20.0,
    what: str = "condition",
    interval: float = 0.1,
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy, and return that.

    The one polling helper of the test bed and the tests. An ``AssertionError`` raised by
    ``check`` counts as "not yet" (so a check may assert its way through an object); any other
    exception ends the wait at once (a server that exited will not come up). On timeout,
    :class:`WaitTimeout` names ``what``, the last result and ``detail()`` (say a log tail).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = check()
            if result:
                return result
            last = result
        except AssertionError as exc:
            last = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    extra = f"\n{detail()}" if detail else ""
    raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what} (last: {last!r}){extra}")


class ManagedProcess:
    """One server process with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        run_as: tuple[int, int] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.run_as = run_as  # (uid, gid) to switch to before exec, e.g. for postgres under root
        self.repeat_signal = False
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, detached: bool = False) -> None:
        if self.running:
            return
        log = self.log_path.open("ab")
        if self.run_as is not None:
            os.chown(self.log_path, *self.run_as)
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                # detached servers outlive the CLI that started them (testenv up); the others die
                # with their parent
                start_new_session=detached,
                preexec_fn=_child_setup(not detached, self.run_as),  # noqa: PLW1509
            )
        finally:
            log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return f"({self.name}: no log)"
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(text[-lines:])

    def stop(self, timeout: float = 15.0, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        deadline = time.monotonic() + timeout
        sent = False
        while self.proc.poll() is None and time.monotonic() < deadline:
            # Some servers refuse a signal now and then (redis-server while it writes its first
            # append-only file): those ask for it to be repeated each second. Others take a
            # second SIGTERM as "exit now" (uvicorn), so by default it is sent once.
            if not sent or self.repeat_signal:
                self.proc.send_signal(sig)
                sent = True
            try:
                self.proc.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                continue
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.stop(timeout=5, sig=signal.SIGKILL)


def terminate_pid(pid: int, expect_in_cmdline: str, timeout: float = 15.0) -> bool:
    """Stop a process we started earlier (testenv down), if it is still the one we started."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return False
    if expect_in_cmdline not in cmdline:
        return False  # the pid was reused by something else: leave it alone
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


def _running(pid: int) -> bool:
    """Running, not a zombie (a detached server's parent is init, which reaps it late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def terminate_pids(
    procs: list[tuple[int, str]], timeout: float = 20.0, reap_wait: float = 5.0
) -> list[int]:
    """:func:`terminate_pid` for several processes at once: SIGTERM to each that is still the
    one we started, SIGKILL to those still running after ``timeout``, then wait up to
    ``reap_wait`` seconds until init has reaped them. Returns the pids that were ours."""
    ours = []
    for pid, expect in procs:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except FileNotFoundError:
            continue
        if expect in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            ours.append(pid)

    def wait(pids: list[int], seconds: float, alive: Callable[[int], bool]) -> list[int]:
        deadline = time.monotonic() + seconds
        while pids and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            pids = [pid for pid in pids if alive(pid)]
            if pids:
                time.sleep(0.05)
        return pids

    for pid in wait(ours, timeout, _running):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait(ours, reap_wait, lambda pid: Path(f"/proc/{pid}").exists())
    return ours
