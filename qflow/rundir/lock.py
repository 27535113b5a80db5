"""One run per directory: an exclusive ``flock`` on ``RUNDIR/.qflow/lock``.

The kernel drops the lock when its process dies, ``kill -9`` included, so a crashed run never
leaves a stale lock; the file keeps the holder's PID and host for the message a second run
gets.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_NAME = "lock"


class RunDirectoryBusy(Exception):
    """Another qflow process holds the run directory; the message names it."""


def _holder_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").split()
    except OSError:
        return "another qflow process"
    if len(text) >= 2 and text[0].isdigit():
        return f"qflow process {text[0]} on {text[1]}"
    return "another qflow process"


def holder(path: Path) -> str | None:
    """Who holds the lock at ``path`` (None: nobody); reads only, creates nothing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_text(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunLock:
    """The exclusive lock of one run directory, held for a qflow process's lifetime."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunDirectoryBusy` naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirectoryBusy(_holder_text(self.path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()} {time.time():.0f}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
