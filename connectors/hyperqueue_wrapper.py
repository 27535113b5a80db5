"""The HyperQueue task of a qflow step: run the step's command as its control directory says.

Run by a HyperQueue worker as ``python -I -S wrapper.py CONTROL_DIR``: the connector copies
this file into each job's control directory (``wrapper.py``), which the worker must see anyway
(``spec.json`` is there), so a remote worker needs nothing installed but a Python 3.8+.
Standard library only, no site-packages and **no qflow import**: it must start fast and
anywhere. hyperqueue_task.py documents the control directory (``spec.json`` in; ``pid``,
``started``, ``exit`` out; ``cancel`` obeyed) and what this program does with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, BinaryIO

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""What HyperQueue (or a stopping worker) sends the task: end the command's group."""


def put(control: str, name: str, data: dict[str, Any]) -> None:
    """Write ``data`` as the JSON file ``name`` of ``control``, atomically (rename)."""
    tmp = os.path.join(control, name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, os.path.join(control, name))


def killpg(pgid: int, sig: int) -> None:
    """Signal the command's process group; already gone (or not ours) is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def start_command(spec: dict[str, Any], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start the step's command in a session of its own, with its redirections.

    Output without a file of its own is appended to the control directory's capture file.
    The files are closed here once the child holds them; OSError when it cannot start.
    """
    files: list[BinaryIO] = []

    def out(path: str | None) -> BinaryIO:
        f = open(path or spec["capture"], "wb" if path else "ab")  # noqa: SIM115 - closed below
        files.append(f)
        return f

    try:
        stdin: Any = subprocess.DEVNULL
        if spec["stdin"]:
            stdin = open(spec["stdin"], "rb")  # noqa: SIM115 - closed below
            files.append(stdin)
        stdout = out(spec["stdout"])
        stderr = out(spec["stderr"])
        return subprocess.Popen(
            spec["command"],
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=spec["cwd"],
            close_fds=True,
            start_new_session=True,
        )
    finally:
        for f in files:
            f.close()


def fork_guardian(read_end: int, write_end: int, pgid: int, grace: float) -> int:
    """Fork a process that ends the command's group if the wrapper dies without a word.

    The guardian lives in a session of its own and ignores the signals HyperQueue sends, and
    waits on a pipe: the wrapper writes one byte when the command ended; end of file without
    it (the wrapper was killed) makes the guardian SIGTERM the group, then SIGKILL it after
    ``grace`` seconds. Returns the guardian's pid (in the wrapper).
    """
    guardian = os.fork()
    if guardian != 0:
        return guardian
    try:
        os.close(write_end)
        os.setsid()
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        while True:
            try:
                data = os.read(read_end, 1)
                break
            except InterruptedError:
                continue
        if not data:
            killpg(pgid, signal.SIGTERM)
            end = time.monotonic() + grace
            while time.monotonic() < end:
                try:
                    os.killpg(pgid, 0)
                except OSError:
                    break
                time.sleep(0.05)
            killpg(pgid, signal.SIGKILL)
    finally:
        os._exit(0)


def supervise(
    child: subprocess.Popen[bytes],
    spec: dict[str, Any],
    started: float,
    cancel_file: str,
    stop: list[int],
) -> tuple[int, str | None]:
    """Wait for the command; every ``poll`` seconds check for a signal, ``cancel`` and the
    time limit, and end its group (SIGTERM, SIGKILL ``grace`` seconds later) on the first.

    Returns the command's exit status (negative for a signal) and why it was ended, if it
    was: ``signal``, ``cancelled`` or ``timeout``.
    """
    limit = spec["time_limit"]
    deadline = started + limit if limit else None
    reason: str | None = None
    kill_at = 0.0
    while True:
        try:
            return child.wait(timeout=spec["poll"]), reason
        except subprocess.TimeoutExpired:
            pass
        if reason is None:
            if stop:
                reason = "signal"
            elif os.path.exists(cancel_file):
                reason = "cancelled"
            elif deadline is not None and time.time() >= deadline:
                reason = "timeout"
            if reason is not None:
                killpg(child.pid, signal.SIGTERM)
                kill_at = time.monotonic() + spec["grace"]
        elif time.monotonic() >= kill_at:
            killpg(child.pid, signal.SIGKILL)


def exit_status(rc: int) -> int:
    """The wrapper's own exit status for the command's: 128 + N for a signal N."""
    return rc if 0 <= rc < 256 else (128 - rc if rc < 0 else 1)


def main(argv: list[str]) -> int:
    """Run the step of the control directory ``argv[0]``; the wrapper's exit status."""
    control = argv[0]
    with open(os.path.join(control, "spec.json")) as f:
        spec = json.load(f)
    host = socket.gethostname()
    stop: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stop.append(signum)

    for sig in HANDLED_SIGNALS:
        signal.signal(sig, on_signal)
    put(control, "pid", {"host": host, "pid": os.getpid()})
    cancel_file = os.path.join(control, "cancel")
    if os.path.exists(cancel_file) or stop:
        import shutil  # only here: it costs start-up time

        shutil.rmtree(control, ignore_errors=True)  # nobody waits for it any more
        return 1
    env = {k: v for k, v in os.environ.items() if k.startswith("HQ_") and k != "HQ_ACCESS_KEY"}
    env.update(spec["env"])
    try:
        read_end, write_end = os.pipe()
        child = start_command(spec, env)
    except OSError as exc:
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        put(control, "exit", {"exit_code": code, "reason": None, "started": None,
                              "ended": time.time(), "host": host,
                              "error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
        return code
    started = time.time()
    guardian = fork_guardian(read_end, write_end, child.pid, spec["grace"])
    os.close(read_end)
    put(control, "started", {"time": started, "pgid": child.pid, "host": host})
    rc, reason = supervise(child, spec, started, cancel_file, stop)
    ended = time.time()
    if reason is not None:
        killpg(child.pid, signal.SIGKILL)
    put(control, "exit", {"exit_code": rc, "reason": reason, "started": started, "ended": ended,
                          "host": host, "error": None,
                          "signal": stop[0] if stop else None})  # fmt: skip
    os.write(write_end, b"x")
    os.close(write_end)
    os.waitpid(guardian, 0)
    return exit_status(rc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
