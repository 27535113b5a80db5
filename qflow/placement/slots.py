"""Slots: how many step executions may run on each classical location at the same time.

Taken from the cwltool thread when one is free right away (no thread hop for the common
case), and waited for on the event loop otherwise; given back from either.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class SlotBoard:
    """Free slots per location, shared by every step of a run."""

    def __init__(self, capacity: dict[str, int]) -> None:
        self.capacity = dict(capacity)
        self._in_use = dict.fromkeys(capacity, 0)
        self._waiting = dict.fromkeys(capacity, 0)
        self._lock = threading.Lock()
        self._waiters: set[asyncio.Event] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop waiters live on (given-back slots wake them there)."""
        self._loop = loop

    def free(self, location: str) -> int:
        with self._lock:
            return self.capacity[location] - self._in_use[location]

    def waiting(self, location: str) -> int:
        """Executions waiting for a slot of this location (and maybe others)."""
        with self._lock:
            return self._waiting[location]

    def try_take(self, candidates: list[str]) -> str | None:
        """A slot on the first candidate that has one free now, else None (any thread)."""
        with self._lock:
            for location in candidates:
                if self._in_use[location] < self.capacity[location]:
                    self._in_use[location] += 1
                    return location
        return None

    async def take(self, candidates: list[str], timeout: float | None = None) -> str | None:
        """A slot on the first candidate that has one, waiting for whichever frees first;
        None if none did within ``timeout`` seconds (a slot is never taken and lost)."""
        event = asyncio.Event()
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        with self._lock:
            for candidate in candidates:
                self._waiting[candidate] += 1
        self._waiters.add(event)
        try:
            while (location := self.try_take(candidates)) is None:
                left = None if deadline is None else deadline - asyncio.get_running_loop().time()
                if left is not None and left <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), left)
                event.clear()
            return location
        finally:
            self._waiters.discard(event)
            with self._lock:
                for location in candidates:
                    self._waiting[location] -= 1

    def give_back(self, location: str) -> None:
        """Free a slot (any thread); waiters on the loop look again."""
        with self._lock:
            self._in_use[location] -= 1
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        for event in list(self._waiters):
            event.set()
