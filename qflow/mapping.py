"""The mapping M of (W, L, M): which location a step execution runs on, right now.

Each step path has an ordered list of candidate locations (deployment.yml ``bindings``).
A step takes the first candidate with a free slot; when all are full it waits for the
first slot that frees up among its candidates. Slots bound concurrency per location.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class SlotBoard:
    """Free slots per location, shared by every step of a run (lives on the event loop)."""

    def __init__(self, capacity: dict[str, int]) -> None:
        self.capacity = dict(capacity)
        self.in_use = dict.fromkeys(capacity, 0)
        self._changed = asyncio.Condition()

    def free(self, location: str) -> int:
        return self.capacity[location] - self.in_use[location]

    async def acquire(self, candidates: list[str]) -> str:
        """Take a slot on the first candidate that has one, waiting if none has."""
        async with self._changed:
            while True:
                for location in candidates:
                    if self.free(location) > 0:
                        self.in_use[location] += 1
                        return location
                await self._changed.wait()

    async def release(self, location: str) -> None:
        async with self._changed:
            self.in_use[location] -= 1
            self._changed.notify_all()


class Mapper:
    """Chooses a location for each step execution from the deployment's bindings."""

    def __init__(self, candidates_of: Callable[[str], list[str]], slots: dict[str, int]) -> None:
        self._candidates_of = candidates_of
        self._slots_capacity = slots
        self._board: SlotBoard | None = None

    @property
    def board(self) -> SlotBoard:
        # created lazily so that it binds to the dispatcher's event loop
        if self._board is None:
            self._board = SlotBoard(self._slots_capacity)
        return self._board

    def candidates(self, step_path: str) -> list[str]:
        return self._candidates_of(step_path)

    async def acquire(self, candidates: list[str]) -> str:
        """A slot on the first of ``candidates`` that has one (waiting if none has)."""
        return await self.board.acquire(candidates)

    async def release(self, location: str) -> None:
        await self.board.release(location)
