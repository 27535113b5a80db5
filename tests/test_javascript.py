"""qflow's Node.js engine (qflow/engine/javascript.py): same answers and errors as cwl-utils',
a thread that sleeps while Node works, and the timeout kept."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
from cwl_utils.errors import JavascriptException
from cwl_utils.sandboxjs import NodeJSEngine

from qflow.engine.javascript import KILLED, WaitingNodeJSEngine, exchange

END = b"r1cepzbhUTxtykz5XTC4\n"
BUSY_HALF_SECOND = (
    "(function () { var t = Date.now(); while (Date.now() - t < 500) {} return 42; })()"
)


def in_fresh_thread(call):
    """``call()`` on a thread of its own (the engines keep one Node process per thread),
    its result and the CPU time that thread used."""
    result: dict = {}

    def body() -> None:
        start = time.thread_time()
        try:
            result["value"] = call()
        except Exception as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc
        result["cpu_s"] = time.thread_time() - start

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    return result


@pytest.mark.parametrize(
    "script",
    [
        "(1 + 2)",
        '({"a": [1, 2.5, null, "x"], "b": {"c": true}})',
        "(function () { var s = 0; for (var i = 0; i < 10; i++) { s += i; } return s; })()",
        '("\u00e9 \u2603 " + "\\n")',
    ],
)
def test_answers_equal_cwl_utils(script: str) -> None:
    ours = in_fresh_thread(lambda: WaitingNodeJSEngine().eval(script))
    theirs = in_fresh_thread(lambda: NodeJSEngine().eval(script))
    assert "error" not in ours and "error" not in theirs
    assert ours["value"] == theirs["value"]


def test_a_script_error_is_cwl_utils_error() -> None:
    ours = in_fresh_thread(lambda: WaitingNodeJSEngine().eval("(undefinedName + 1)"))
    theirs = in_fresh_thread(lambda: NodeJSEngine().eval("(undefinedName + 1)"))
    for result in (ours, theirs):
        assert isinstance(result["error"], JavascriptException)
        assert "undefinedName is not defined" in str(result["error"])


def test_the_thread_sleeps_while_node_works() -> None:
    """Node busy for half a second: the waiting thread uses next to no CPU (cwl-utils' own
    loop spins through it)."""
    result = in_fresh_thread(lambda: WaitingNodeJSEngine().eval(BUSY_HALF_SECOND))
    assert result["value"] == 42
    assert result["cpu_s"] < 0.2, result


def test_a_script_past_its_timeout_is_killed() -> None:
    result = in_fresh_thread(
        lambda: WaitingNodeJSEngine().eval("(function(){while(true){}})()", timeout=1)
    )
    assert isinstance(result["error"], JavascriptException)
    assert "killed after 1 seconds" in str(result["error"])


def test_a_new_process_is_started_after_a_kill() -> None:
    def both() -> object:
        engine = WaitingNodeJSEngine()
        with pytest.raises(JavascriptException):
            engine.eval("(function(){while(true){}})()", timeout=1)
        return engine.eval("(6 * 7)")

    assert in_fresh_thread(both)["value"] == 42


def test_a_context_is_sent_once_per_process() -> None:
    """cwltool's JavaScript validation defines functions first (``context``), then calls them."""

    def twice() -> list:
        engine = WaitingNodeJSEngine()
        context = "var ob = {twice: function (x) { return 2 * x; }}; ob"
        return [engine.exec_js_process(f"twice({n})", context=context) for n in (3, 4)]

    first, second = in_fresh_thread(twice)["value"]
    assert first == (0, "6", "")
    assert second == (0, "8", "")


def shell(script: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["sh", "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_exchange_a_request_larger_than_a_pipe() -> None:
    """A request bigger than the pipe buffer is written while the answer is read."""
    marker = END.decode().strip()
    node = shell(f"head -c 300001 | wc -c; echo {marker}; echo {marker} >&2")
    request = b"x" * 300_000 + b"\n"
    code, out, err = exchange(node, request, END, timeout=20)
    node.wait()
    assert (code, out.strip(), err) == (0, "300001", "")


def test_exchange_an_engine_that_exits_without_answering() -> None:
    node = shell("read line; echo half an answer; exit 3")
    code, out, _ = exchange(node, b"1\n", END, timeout=20)
    assert code == 3
    assert out.startswith("half an answer")


def test_exchange_kills_at_the_timeout() -> None:
    node = shell("exec sleep 60")
    code, _, _ = exchange(node, b"1\n", END, timeout=0.5)
    assert code == KILLED
    assert node.poll() is not None
