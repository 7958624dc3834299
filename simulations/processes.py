"""Child processes we own: started in their own process group, stopped by PID, never leaked."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen) -> None:
    """Block until `host:port` accepts connections; fail early if `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with code {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout:.0f}s")


def wait_for_log_line(
    path: Path, text: str, offset: int, timeout: float, process: subprocess.Popen
) -> None:
    """Block until `text` appears in `path` after byte `offset`; RuntimeError if `process`
    exits first, TimeoutError after `timeout` seconds."""
    needle = text.encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_bytes()[offset:]:
            return
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with code {process.returncode}")
        time.sleep(0.2)
    raise TimeoutError(f"{text!r} did not appear in {path} within {timeout:.0f}s")


def start_process(
    command: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start `command` in a new session (its own process group), output to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            list(command),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of `pid`, found through /proc parent links.

    Flower starts `flower-superexec` (and through it the ServerApp) in sessions of their own,
    so killing a SuperLink's process group does not reach them; their PIDs must be collected.
    """
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL `pid`, its process group (when it leads one) and every descendant, in whatever
    session."""
    tree = descendants(pid)
    _signal_group(pid, signal.SIGKILL)
    for child in [pid, *tree]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGKILL)


def wait_interruptibly(process: subprocess.Popen, timeout: float | None = None) -> int:
    """`process.wait(timeout)` in short slices, so that Ctrl-C raises KeyboardInterrupt at once.

    A blocking wait can miss SIGINT until the child exits: the kernel may deliver the signal to
    another thread (log copiers, the app registry), which does not interrupt the main thread's
    waitpid. Returns the exit code; raises subprocess.TimeoutExpired after ``timeout`` seconds.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        slice_ = 0.5 if deadline is None else min(0.5, max(0.0, deadline - time.monotonic()))
        try:
            return process.wait(timeout=slice_)
        except subprocess.TimeoutExpired:
            if deadline is not None and time.monotonic() >= deadline:
                raise


def stop_process(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it and any descendant left after `grace` s."""
    tree = descendants(process.pid)
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    # Children (e.g. flwr-simulation, Ray workers) may outlive the leader: kill them all.
    _signal_group(process.pid, signal.SIGKILL)
    for child in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@contextlib.contextmanager
def owned_processes() -> Iterator[list[subprocess.Popen]]:
    """A list to put started processes in; all are stopped on exit, also on error or Ctrl-C."""
    processes: list[subprocess.Popen] = []
    try:
        yield processes
    finally:
        for process in reversed(processes):
            stop_process(process)


def console_script(name: str) -> str:
    """The console script `name` next to this interpreter (the venv's bin), else from PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def with_scripts_on_path(env: dict[str, str]) -> dict[str, str]:
    """`env` with this interpreter's bin first on PATH (flower-superlink starts
    flower-superexec by name, so the venv's scripts must be found)."""
    return {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
