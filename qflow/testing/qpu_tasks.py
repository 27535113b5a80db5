"""For tests of quantum connectors: run an async test with a bound, wait for a task's end."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

from qflow.quantum import FINAL_STATES


def aio(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test function with a 60 s bound."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 60))

    return run


async def wait(connector: Any, task_id: str) -> Any:
    """Poll a quantum connector until the task reaches a final state; its TaskInfo."""
    while (info := await connector.task_status(task_id)).state not in FINAL_STATES:
        await asyncio.sleep(0.02)
    return info
