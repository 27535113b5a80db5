"""CWL expressions evaluated by cwl-utils' Node.js engine, without spinning while Node works.

cwl-utils' ``NodeJSEngine.exec_js_process`` keeps Node's stdin in its ``select`` write set
after the request is written. A pipe is always writable, so ``select`` returns at once and
the evaluating thread spins, holding the GIL and a core, until Node answers; it also starts
a ``threading.Timer`` per expression for the timeout. A loop iteration evaluates about three
expressions: the spin competes with the step's own process and qflow's I/O thread on a
2-core machine. Here the request is written, then the thread sleeps in ``select`` until
Node answers or the timeout passes. Everything else (which Node, the engine scripts, how an
answer is parsed, errors, ``--js-console``) stays cwl-utils'. Upstream candidate
(docs/upstream/README.md).
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from importlib.resources import files
from typing import Any

import cwl_utils.sandboxjs
from cwl_utils.sandboxjs import NodeJSEngine, default_timeout
from schema_salad.utils import json_dumps

KILLED = -1
"""The return code cwl-utils gives a script it killed at its timeout."""
EXIT_WAIT_S = 5.0
"""How long a Node process that closed its output is given to exit."""


class WaitingNodeJSEngine(NodeJSEngine):
    """cwl-utils' Node.js engine whose evaluating thread sleeps until Node answers."""

    def exec_js_process(
        self,
        js_text: str,
        timeout: float = default_timeout,
        js_console: bool = False,
        context: str | None = None,
        force_docker_pull: bool = False,
        container_engine: str = "docker",
    ) -> tuple[int, str, str]:
        if js_console:  # a debugging aid: cwl-utils' own loop
            return super().exec_js_process(
                js_text, timeout, js_console, context, force_docker_pull, container_engine
            )
        script = "cwlNodeEngine.js" if context is None else "cwlNodeEngineWithContext.js"
        key: Any = script if context is None else (script, context)
        processes: dict[Any, subprocess.Popen[str]] = self.localdata.__dict__.setdefault(
            "procs", {}
        )
        request = json_dumps(js_text) + "\n"
        node = processes.get(key)
        if node is None or node.poll() is not None:
            code = files("cwl_utils").joinpath(script).read_text("utf-8")
            node = self.new_js_proc(
                code, force_docker_pull=force_docker_pull, container_engine=container_engine
            )
            processes[key] = node
            if context is not None:  # a new process learns the context first
                request = json_dumps(context) + "\n" + request
        return exchange(node, request.encode(), self.process_finished_str.encode(), timeout)


def exchange(
    node: subprocess.Popen[str], request: bytes, end: bytes, timeout: float
) -> tuple[int, str, str]:
    """Send ``request`` to ``node``; its return code, stdout and stderr up to the ``end``
    line each stream finishes with. The process is killed if it has not answered within
    ``timeout`` seconds (return code -1), as cwl-utils does."""
    assert node.stdin is not None and node.stdout is not None and node.stderr is not None
    stdin, stdout, stderr = node.stdin.fileno(), node.stdout.fileno(), node.stderr.fileno()
    received = {stdout: bytearray(), stderr: bytearray()}
    unsent = memoryview(request)
    deadline = time.monotonic() + timeout
    while not all(data.endswith(end) for data in received.values()):
        left = deadline - time.monotonic()
        if left <= 0:
            node.kill()
            node.wait()
            return KILLED, *_texts(received, stdout, stderr, end)
        readable, writable, _ = select.select(
            [fd for fd, data in received.items() if not data.endswith(end)],
            [stdin] if unsent else [],
            [],
            left,
        )
        if writable:
            unsent = unsent[os.write(stdin, unsent[: select.PIPE_BUF]) :]
        eof = False
        for fd in readable:
            chunk = os.read(fd, 65536)
            received[fd] += chunk
            eof = eof or not chunk
        if eof:  # Node exited without finishing its answer
            return _exit_code(node), *_texts(received, stdout, stderr, end)
    return 0, *_texts(received, stdout, stderr, end)


def _exit_code(node: subprocess.Popen[str]) -> int:
    """The exit code of a Node process that closed its output before it finished answering."""
    try:
        return node.wait(timeout=EXIT_WAIT_S) or 0
    except subprocess.TimeoutExpired:
        node.kill()
        node.wait()
        return KILLED


def _texts(received: dict[int, bytearray], stdout: int, stderr: int, end: bytes) -> tuple[str, str]:
    """Both streams without the end marker and the newline before it."""

    def text(data: bytearray) -> str:
        if data.endswith(end):
            data = data[: -len(end) - 1]
        return data.decode("utf-8")

    return text(received[stdout]), text(received[stderr])


def install() -> None:
    """Make cwl-utils evaluate every expression with the waiting engine (idempotent)."""
    if not isinstance(cwl_utils.sandboxjs.get_js_engine(), WaitingNodeJSEngine):
        cwl_utils.sandboxjs.set_js_engine(WaitingNodeJSEngine())
