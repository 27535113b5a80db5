"""The threads that blocking vendor SDK calls run in, off the event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable
from typing import Any

WORKERS = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="qflow-qpu")
"""Long-lived threads for blocking SDK calls (simulations, transpiling, vendor clients).

Not ``asyncio.to_thread``: each event loop's default executor dies with the loop, and with
qrmi loaded, qiskit's allocator (mimalloc, qiskit 2.6 + qrmi 0.26) crashed the process
(SIGSEGV in ``mi_thread_init``) when a fresh thread built a circuit after earlier ones had
exited. Threads that live as long as the process avoid it.
"""


async def in_worker(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in one of the :data:`WORKERS` threads."""
    return await asyncio.get_running_loop().run_in_executor(WORKERS, functools.partial(fn, *args))
