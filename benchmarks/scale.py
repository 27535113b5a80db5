"""Scatters of 1,000 to 100,000 trivial steps: qflow against cwltool, serial and --parallel.

Two variants of the same scatter of ``true``: ``jobfile``, the array in a YAML job file
(benchmarks/cwl/scatter-input.cwl, the job order as cwltool loads it, ruamel.yaml and all),
and ``workflow``, the array built by an ExpressionTool inside the workflow
(benchmarks/cwl/scatter.cwl). Each size runs every tool once, in the same run, on this host
(qflow on its embedded local deployment). Per run: wall time, the peak RSS of the process
(``wait4``), and the throughput over the run: steps/s over the first and the last quarter
of the completions (a rate that falls as the run goes on means per-step work that grows
with the run), and how long until the first step completed.

Targets (issue 16): the 10,000-step wall <= 12 x the 1,000-step wall, peak RSS <= 200 MB,
faster than both cwltool modes; 100,000 steps complete. A run longer than ``--timeout``
is stopped and reported as such (plain cwltool did not finish 10,000 items from a job file
in 600 s).

Run: ``python benchmarks/scale.py [--sizes 1000 10000] [--tools qflow cwltool
cwltool-parallel] [--variants jobfile workflow] [--timeout 1200]``; 100,000 steps take
qflow about 20 minutes here: ``--sizes 100000 --tools qflow``. Prints a table and writes
JSON (default benchmarks/results/scale.json): a list of
``{"variant", "steps", "tool", "status", "wall_s", "peak_rss_mb", "first_step_s",
"rate_first_quarter", "rate_last_quarter"}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKFLOWS = {
    "jobfile": HERE / "cwl" / "scatter-input.cwl",
    "workflow": HERE / "cwl" / "scatter.cwl",
}
TOOLS = ("qflow", "cwltool", "cwltool-parallel")


def job_file(steps: int, directory: Path) -> Path:
    """A YAML job order with ``items: [0 .. steps-1]``, one item per line as people write it."""
    path = directory / f"items-{steps}.yml"
    path.write_text("items:\n" + "".join(f"  - {i}\n" for i in range(steps)))
    return path


def command(tool: str, variant: str, steps: int, work: Path) -> list[str]:
    """The command line of one run; its completion times go to ``work/completions``."""
    workflow = str(WORKFLOWS[variant])
    inputs = [str(job_file(steps, work))] if variant == "jobfile" else ["--width", str(steps)]
    if tool == "qflow":
        if variant == "workflow":
            inputs = ["--", *inputs]  # workflow inputs follow qflow's own options
        return [sys.executable, "-m", "qflow.cli", "run", "--quiet", "--outdir",
                str(work / "out"), workflow, *inputs]  # fmt: skip
    parallel = ["--parallel"] if tool == "cwltool-parallel" else []
    return [sys.executable, __file__, "--cwltool-child", str(work / "completions"), "--",
            *parallel, "--outdir", str(work / "out"), workflow, *inputs]  # fmt: skip


def run_once(tool: str, variant: str, steps: int, timeout: float) -> dict[str, Any]:
    """One run: its wall time, peak RSS and completion times."""
    with tempfile.TemporaryDirectory(prefix="qflow-scale-") as tmp:
        work = Path(tmp)
        argv = command(tool, variant, steps, work)
        began = time.time()
        with open(work / "stderr", "wb") as stderr:
            proc = subprocess.Popen(
                argv, cwd=tmp, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
            )
            status, rusage = _wait(proc, timeout)
        wall = time.time() - began
        row: dict[str, Any] = {
            "variant": variant, "steps": steps, "tool": tool, "status": status,
            "wall_s": round(wall, 2), "peak_rss_mb": round(rusage.ru_maxrss / 1024, 1),
        }  # fmt: skip
        if status == "failed":
            row["stderr"] = (work / "stderr").read_text(errors="replace")[-2000:]
        row.update(throughput(completion_times(tool, work), began))
        return row


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> tuple[str, Any]:
    """``wait4`` the run (its own peak RSS); stop its process group after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        pid, code, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(code)
            return ("ok" if proc.returncode == 0 else "failed"), rusage
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            _, code, rusage = os.wait4(proc.pid, 0)
            return "timeout", rusage
        time.sleep(0.2)


def completion_times(tool: str, work: Path) -> list[float]:
    """When each step ended: qflow's report, or what the cwltool wrapper recorded."""
    if tool == "qflow":
        report = work / "out" / "qflow-report.json"
        if not report.exists():
            return []
        return sorted(s["ended"] for s in json.loads(report.read_text())["steps"] if s["ended"])
    path = work / "completions"
    return sorted(float(line) for line in path.read_text().split()) if path.exists() else []


def throughput(ends: list[float], began: float) -> dict[str, Any]:
    """Steps/s over the first and the last quarter of the completions, and the first one."""
    if len(ends) < 8:
        return {"first_step_s": None, "rate_first_quarter": None, "rate_last_quarter": None}
    quarter = len(ends) // 4

    def rate(first: int, last: int) -> float:
        span = ends[last] - ends[first]
        return round((last - first) / span, 1) if span > 0 else float("inf")

    return {
        "first_step_s": round(ends[0] - began, 2),
        "rate_first_quarter": rate(0, quarter),
        "rate_last_quarter": rate(len(ends) - 1 - quarter, len(ends) - 1),
    }


def cwltool_child(completions: str, args: list[str]) -> int:
    """Run cwltool in this process, recording when each job completed (its log says so)."""
    import cwltool.main

    with open(completions, "w") as out:

        class Completed(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "completed" in str(record.msg) and str(record.msg).startswith("[job"):
                    out.write(f"{record.created}\n")

        logging.getLogger("cwltool").addHandler(Completed(logging.INFO))
        return cwltool.main.main(args)


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'variant':9} {'steps':>7} {'tool':17} {'status':8} {'wall s':>8} {'RSS MB':>7} " \
           f"{'1st s':>6} {'rate 1st Q':>10} {'rate last Q':>11}"  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['variant']:9} {r['steps']:>7} {r['tool']:17} {r['status']:8} "
            f"{r['wall_s']:>8} {r['peak_rss_mb']:>7} {r['first_step_s'] or '-':>6} "
            f"{r['rate_first_quarter'] or '-':>10} {r['rate_last_quarter'] or '-':>11}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--cwltool-child"]:
        return cwltool_child(argv[1], argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument(
        "--variants", nargs="+", choices=sorted(WORKFLOWS), default=["jobfile", "workflow"]
    )
    parser.add_argument("--timeout", type=float, default=1200.0, help="per run, seconds")
    parser.add_argument("--json", default=str(HERE / "results" / "scale.json"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    rows = []
    for variant in args.variants:
        for steps in args.sizes:
            for tool in args.tools:
                rows.append(run_once(tool, variant, steps, args.timeout))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"load_before": load_before, "load_after": os.getloadavg(),
                               "runs": rows}, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
