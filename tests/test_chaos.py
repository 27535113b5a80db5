"""Crash consistency, chaos style: ``kill -9`` qflow at seeded random moments, resume, repeat.

Four scenarios, each a real ``qflow run`` crashed for real (SIGKILL: no cleanup of any kind):

* ``local``: tests/data/crash-points.cwl on the embedded default deployment;
* ``slurm-per-step`` and ``slurm-held``: the same workflow on the test cluster's ``compute``
  partition, one batch job per step execution / steps inside an allocation held for the run;
* ``qpu``: tests/data/chaos-qpu.cwl, a quantum-candidate step (QUBO solve) on a ``rest``
  location in front of a slow emulator process (6 s tasks) with a classical fallback, between
  mark steps.

Per scenario, an uninterrupted reference run gives the outputs and the durations. Then each
*kill point* starts the workflow in a new run directory, SIGKILLs qflow at a seeded moment,
resumes (``qflow run --resume``), sometimes SIGKILLs the resume too, until a resume completes.
A watcher follows it all: a new ``start NAME PID`` in the steps' log (tests/data/mark.cwl)
while an earlier execution of NAME still runs is a duplicate; so are two QPU tasks of the run
queued or running at once. After the final resume: the outputs equal the reference's (file
contents), and nothing of the crashed runs is left: no process (pids of the log, processes
tagged with a journalled execution id, anything started for the run), no Slurm job, no QPU
task queued or running nor one that ran to its end after a resume ended it, nothing alive in
the journal.

Kill moments: a kill point's RNG (``random.Random("SEED/scenario/k")``) draws a fraction u of
the reference run. Mostly (7 in 8) the moment is u x the reference's *work* time (its journal
session start to its exit) after the killed process's own session start, so that the noise
of interpreter start-up on a loaded machine does not push kills out of the workflow; else it
is u x the reference's start-up time after the process started (a kill before or while the
run directory is taken). A process that ends before its moment is not killed.

Modes (docs/reliability.md): by default 1 kill point per scenario (the normal suite);
``QFLOW_CHAOS_KILLS=40`` spreads 40 kill points over the scenarios. ``QFLOW_CHAOS_SEED``
sets the seed (printed). The summary line (seed, kill points, kills, leftovers, duplicates,
time, load) is printed at the end of the module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import DATA, REPO
from qflow.connectors.local import tagged_process_groups
from qflow.rundir.journal import read_journal
from qflow.testing.qpu_services import serve

SEED = int(os.environ.get("QFLOW_CHAOS_SEED", "20250611"))
TOTAL_KILL_POINTS = int(os.environ.get("QFLOW_CHAOS_KILLS", "0"))
"""0: the small default mode (one kill point per scenario)."""
SCENARIOS = ("local", "slurm-per-step", "slurm-held", "qpu")
TOKEN = "chaos-qpu-token-5d1e"
CRASH = DATA / "crash-points.cwl"
QPU_WORKFLOW = DATA / "chaos-qpu.cwl"
QUBO = DATA / "mis5.qubo.json"
STEP_ARGS = ["--long", "3", "--short", "0.5"]

STARTUP_KILL_SHARE = 1 / 8
"""Share of kills aimed at a process's start-up instead of its work."""
RESUME_KILL_P = 0.35
"""Probability that a resume is killed too (at most MAX_RESUME_KILLS per kill point)."""
MAX_RESUME_KILLS = 3 if TOTAL_KILL_POINTS > 0 else 1
PROCESS_DEADLINE_S = 300
"""A qflow process still running after this is hung (a finding, not a slow machine)."""
SETTLE_S = 5.0
"""How long something found right after the final resume may take to disappear (Slurm ends
job processes asynchronously) before it counts as a leftover."""
ACTIVE_TASK_STATES = ("queued", "running")


def _points_per_scenario() -> dict[str, int]:
    if TOTAL_KILL_POINTS <= 0:
        return dict.fromkeys(SCENARIOS, 1)
    base, extra = divmod(TOTAL_KILL_POINTS, len(SCENARIOS))
    return {name: max(1, base + (i < extra)) for i, name in enumerate(SCENARIOS)}


POINTS = _points_per_scenario()
TIMEOUT_S = 900
"""pytest-timeout per kill point: up to 1 + MAX_RESUME_KILLS resumes of a slow run."""


# -- processes -------------------------------------------------------------------------------

_BOOT = next(
    float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
    if line.startswith("btime ")
)  # fmt: skip
_TICKS = os.sysconf("SC_CLK_TCK")


def _started_at(pid: int) -> float | None:
    """When ``pid`` started (epoch seconds); None if it is gone or a zombie. With the pid it
    names one process: pids are reused (pid_max may be 32768 on a busy host)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return _BOOT + int(fields[19]) / _TICKS


def _alive(pid: int, started: float | None) -> bool:
    return started is not None and _started_at(pid) == started


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _describe_process(pid: int) -> str:
    cmdline = _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace")
    return f"pid {pid}: {cmdline.strip()[:300]}"


def _process_snapshot() -> str:
    proc = subprocess.run(["ps", "-eo", "pid,ppid,pgid,etimes,args", "--width", "250"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    return proc.stdout


@dataclasses.dataclass
class Qflow:
    """One ``qflow`` process (a run or a resume); stdout and stderr go to files (the steps it
    starts keep its stderr open: pipes would block a crash test)."""

    label: str
    proc: subprocess.Popen[bytes]
    started: float
    stdout: Path
    stderr: Path
    killed_at: float | None = None
    """Seconds after its start when it was SIGKILLed; None if it was not."""
    kill_time: float | None = None
    """Epoch time of the SIGKILL."""

    def tail(self, limit: int = 3000) -> str:
        return self.stderr.read_text(errors="replace")[-limit:]


def _start(label: str, args: list[str], env: dict[str, str], logs: Path) -> Qflow:
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / f"{label}.stdout", logs / f"{label}.stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qflow.cli", *args],
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env=env,
        )
    return Qflow(label, proc, time.monotonic(), out, err)


def _session_seen(journal: Path, pid: int) -> bool:
    """The process ``pid`` began its session in this run directory (its journal line)."""
    for line in _read(str(journal)).decode(errors="replace").splitlines():
        if f'"pid": {pid},' in line and '"op": "session"' in line:
            return True
    return False


@dataclasses.dataclass(frozen=True)
class KillPlan:
    phase: str
    """``startup`` (seconds after the process started) or ``work`` (after its session began)."""
    at: float


def _drive(run: Qflow, journal: Path, plan: KillPlan | None) -> str:
    """Wait for ``run`` to exit, or SIGKILL it at ``plan``'s moment: ``killed`` or
    ``exited``; ``hung`` if it outlived PROCESS_DEADLINE_S (it is then killed)."""
    session_at: float | None = None
    while True:
        now = time.monotonic()
        if run.proc.poll() is not None:
            return "exited"
        if now - run.started > PROCESS_DEADLINE_S:
            run.proc.kill()
            run.proc.wait()
            return "hung"
        if plan is not None:
            if plan.phase == "startup":
                due: float | None = run.started + plan.at
            else:
                if session_at is None and _session_seen(journal, run.proc.pid):
                    session_at = time.monotonic()
                due = None if session_at is None else session_at + plan.at
            if due is not None and now >= due:
                run.proc.send_signal(signal.SIGKILL)
                run.kill_time = time.time()
                code = run.proc.wait()
                if code == -signal.SIGKILL:
                    run.killed_at = time.monotonic() - run.started
                    return "killed"
                run.kill_time = None
                return "exited"  # it had ended just before
        time.sleep(0.01)


# -- the QPU -----------------------------------------------------------------------------------


def _qpu_call(url: str, path: str) -> Any:
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _qpu_tasks(url: str, since: float) -> list[dict[str, Any]]:
    return [t for t in _qpu_call(url, "/v1/tasks")["tasks"] if t["created"] >= since]


@pytest.fixture(scope="module")
def slow_qpu() -> Iterator[str]:
    """An emulator process with 6 s tasks (neutral-atom at time scale 0.05), stopped by PID."""
    args = ["qflow.emulator", "--port", "0", "--backend", "neutral-atom", "--time-scale", "0.05"]
    with serve(args, {"QFLOW_EMULATOR_TOKEN": TOKEN}, "qflow emulator listening on") as url:
        yield url


# -- the watcher -------------------------------------------------------------------------------


def _starts(log: Path) -> list[tuple[str, int]]:
    """("b", pid) per execution started (complete lines only), in order."""
    text = _read(str(log)).decode(errors="replace")
    lines = text.split("\n")[:-1]  # the last piece is unfinished (or empty)
    found = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "start" and parts[2].isdigit():
            found.append((parts[1], int(parts[2])))
    return found


class Watcher(threading.Thread):
    """Watches a kill point from its first run to its last check: every new execution in the
    steps' log while an earlier one of the same step still runs, and (QPU) two tasks of the
    run queued or running at once, is a duplicate."""

    def __init__(self, log: Path, qpu_url: str | None, since: float) -> None:
        super().__init__(daemon=True, name="chaos-watcher")
        self.log, self.qpu_url, self.since = log, qpu_url, since
        self.executions: list[tuple[str, int, float | None]] = []
        """(step, pid, its start time or None if it had ended when first seen)."""
        self.duplicates: list[str] = []
        self._pairs: set[frozenset[str]] = set()
        self._done = threading.Event()
        self._last_qpu = 0.0

    def run(self) -> None:
        while not self._done.is_set():
            self.scan()
            self._done.wait(0.01)

    def stop(self) -> None:
        if self.is_alive():
            self._done.set()
            self.join()
            self.scan()

    def scan(self) -> None:
        for name, pid in _starts(self.log)[len(self.executions) :]:
            started = _started_at(pid)
            for old_name, old_pid, old_started in self.executions:
                if old_name == name and _alive(old_pid, old_started):
                    self.duplicates.append(
                        f"step {name}: execution pid {pid} started while pid {old_pid} of an "
                        f"earlier execution still ran ({_describe_process(old_pid)})"
                    )
            self.executions.append((name, pid, started))
        if self.qpu_url and time.monotonic() - self._last_qpu > 0.1:
            self._last_qpu = time.monotonic()
            with contextlib.suppress(OSError, ValueError):
                active = [t for t in _qpu_tasks(self.qpu_url, self.since)
                          if t["state"] in ACTIVE_TASK_STATES]  # fmt: skip
                if len(active) > 1:
                    pair = frozenset(t["id"] for t in active)
                    if pair not in self._pairs:
                        self._pairs.add(pair)
                        self.duplicates.append(
                            "QPU tasks queued/running at once: "
                            + ", ".join(f"{t['id']} ({t['state']})" for t in active)
                        )


# -- scenarios ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Scenario:
    name: str
    workflow: Path
    deployment: Path | None
    inputs: list[str]
    """After ``--``, without ``--log``."""
    env: dict[str, str]
    cluster: Any = None
    qpu_url: str | None = None

    def run_args(self, rundir: Path, log: Path) -> list[str]:
        deployment = [str(self.deployment)] if self.deployment else []
        return ["run", str(self.workflow), *deployment, "--quiet", "--outdir", str(rundir),
                "--", "--log", str(log), *self.inputs]  # fmt: skip


def _slurm_deployment(directory: Path, held: bool) -> Path:
    path = directory / ("held.yml" if held else "per-step.yml")
    strategy = ", allocation: held, held_nodes: 2" if held else ""
    path.write_text(
        "version: 1\nlocations:\n"
        f"  compute: {{connector: slurm, partition: compute, slots: 3{strategy}}}\n"
        "bindings:\n  default: compute\npolicy: {history: none}\n"
    )
    return path


def _qpu_deployment(directory: Path, url: str) -> Path:
    path = directory / "qpu.yml"
    path.write_text(
        f"""version: 1
locations:
  local: {{connector: local, slots: 3}}
  qpu: {{connector: rest, url: "{url}", token: "${{env:QPU_TOKEN}}", http_retries: 1,
         backoff: 0.05, timeout: 30, max_wait: 120}}
bindings:
  default: local
  /solve: [qpu, local]
policy: {{history: none}}
"""
    )
    return path


def _scenario(name: str, request: pytest.FixtureRequest, directory: Path) -> Scenario:
    env = {**os.environ, "QPU_TOKEN": TOKEN}
    if name == "local":
        return Scenario(name, CRASH, None, STEP_ARGS, env)
    if name.startswith("slurm-"):
        cluster = request.getfixturevalue("slurm_cluster")
        env["SLURM_CONF"] = str(cluster.conf)
        deployment = _slurm_deployment(directory, held=name == "slurm-held")
        return Scenario(name, CRASH, deployment, STEP_ARGS, env, cluster=cluster)
    url = request.getfixturevalue("slow_qpu")
    inputs = ["--qubo", str(QUBO), *STEP_ARGS]
    return Scenario(name, QPU_WORKFLOW, _qpu_deployment(directory, url), inputs, env, qpu_url=url)


def _output_contents(stdout: Path) -> dict[str, Any]:
    """The workflow's outputs with every File as its contents (paths differ between runs)."""

    def contents(value: Any) -> Any:
        if isinstance(value, dict) and value.get("class") == "File":
            return Path(value["path"]).read_bytes()
        if isinstance(value, dict):
            return {k: contents(v) for k, v in value.items()}
        if isinstance(value, list):
            return [contents(v) for v in value]
        return value

    return contents(json.loads(stdout.read_text()))


@dataclasses.dataclass
class Reference:
    outputs: dict[str, Any]
    startup_s: float
    """Process start to its journal session line."""
    work_s: float
    """Journal session line to exit."""


_REFERENCES: dict[str, Reference] = {}


def _reference(scenario: Scenario, directory: Path) -> Reference:
    """The uninterrupted run of a scenario (once per module)."""
    if scenario.name in _REFERENCES:
        return _REFERENCES[scenario.name]
    rundir, log = directory / "reference", directory / "reference.log"
    run = _start("reference", scenario.run_args(rundir, log), scenario.env, directory / "logs")
    journal = rundir / ".qflow" / "journal.jsonl"
    session_at = None
    while run.proc.poll() is None:
        if session_at is None and _session_seen(journal, run.proc.pid):
            session_at = time.monotonic()
        assert time.monotonic() - run.started < PROCESS_DEADLINE_S, "the reference run hung"
        time.sleep(0.01)
    ended = time.monotonic()
    assert run.proc.returncode == 0, run.tail()
    assert session_at is not None
    reference = Reference(
        _output_contents(run.stdout), session_at - run.started, ended - session_at
    )
    print(f"chaos {scenario.name} reference: start-up {reference.startup_s:.1f} s, "
          f"work {reference.work_s:.1f} s")  # fmt: skip
    _REFERENCES[scenario.name] = reference
    return reference


# -- the checks after the final resume ---------------------------------------------------------


def _journal_entries(journal: Path) -> list[dict[str, Any]]:
    entries = []
    for line in _read(str(journal)).decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entries.append(json.loads(line))
    return entries


def _processes_of_the_run(
    rundir: Path, log: Path, sessions: set[str], since: float, scenario: Scenario, exclude: set
) -> list[str]:
    """Processes started during the kill point that belong to its run: tagged with one of its
    sessions' execution ids, naming its run directory or log, working in its run directory,
    or (Slurm) a Slurm command of the test cluster."""
    tags = [f"QFLOW_EXECUTION_ID={s}-".encode() for s in sessions]
    names = [str(rundir).encode(), str(log).encode()]
    slurm = f"SLURM_CONF={scenario.cluster.conf}".encode() if scenario.cluster else None
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        pid = int(entry.name)
        started = _started_at(pid)
        if started is None or started < since - 1:
            continue
        environ = b"\0" + _read(f"/proc/{pid}/environ")
        cmdline = _read(f"/proc/{pid}/cmdline")
        comm = _read(f"/proc/{pid}/comm").strip()
        cwd = ""
        with contextlib.suppress(OSError):
            cwd = os.readlink(f"/proc/{pid}/cwd")
        hit = any(b"\0" + tag in environ for tag in tags) or any(n in cmdline for n in names)
        hit = hit or cwd.startswith(str(rundir))
        if slurm and b"\0" + slurm + b"\0" in environ + b"\0":
            hit = hit or comm not in (b"slurmd", b"slurmctld", b"slurmstepd", b"munged")
        if hit:
            found.append(_describe_process(pid))
    return found


def _qpu_findings(
    scenario: Scenario, entries: list[dict[str, Any]], kills: dict[str, float], since: float
) -> tuple[list[str], list[str], list[str]]:
    """(leftovers, duplicates, notes) of the QPU: tasks still queued/running, tasks of a killed
    session that ran to their end after a resume recorded them ended (their results are never
    reused: a resumed run's tasks have keys of their own), tasks the journal does not know,
    and tasks of the run whose queued-to-ended spans overlap."""
    url = scenario.qpu_url
    assert url is not None
    tasks = {t["id"]: t for t in _qpu_tasks(url, since)}
    leftovers, duplicates, notes = [], [], []
    for task in tasks.values():
        if task["state"] in ACTIVE_TASK_STATES:
            leftovers.append(f"QPU task {task['id']} still {task['state']}")
    # journalled tasks: task id -> (its record's id, session); when each was recorded ended
    owner: dict[str, tuple[str, str]] = {}
    ended_line: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if entry.get("op") == "ended":
            ended_line.setdefault(entry["id"], index)
    records = {e["id"]: e for e in entries if e.get("op") == "intend" and e["kind"] == "qpu-task"}
    external = {e["id"]: e["external_id"] for e in entries
                if e.get("op") == "exists" and e["id"] in records}  # fmt: skip
    for rid, record in records.items():
        task_id = external.get(rid)
        if task_id is None:  # crashed before the QPU's answer: the key finds it
            key = record["handle"].get("idempotency_key", "")
            found = _qpu_call(url, f"/v1/tasks?idempotency_key={key}")["tasks"]
            task_id = found[0]["id"] if found else None
        if task_id is not None:
            owner[task_id] = (rid, record["id"].rsplit("-", 1)[0])
    for task_id, task in tasks.items():
        if task_id not in owner:
            leftovers.append(f"QPU task {task_id} ({task['state']}) is in no journal record")
            continue
        rid, session = owner[task_id]
        killed = kills.get(session)
        if killed is not None and task["state"] == "cancelled" and task["ended"] > killed:
            notes.append(f"task {task_id} of killed session {session} stopped by a resume")
        if killed is None or task["state"] != "completed" or task["ended"] <= killed:
            continue
        index = ended_line.get(rid)
        if index is None:
            continue  # alive in the journal: reported as such
        ender_at = max((e["at"] for e in entries[:index] if e.get("op") == "session"), default=0)
        later = [e["at"] for e in entries[index:] if "at" in e]
        bound = later[0] if later else float("inf")
        if task["ended"] <= ender_at:
            notes.append(
                f"task {task_id} of killed session {session} completed "
                f"{task['ended'] - killed:.1f} s after the kill, before any resume"
            )
        elif task["ended"] <= bound:
            notes.append(
                f"task {task_id} of killed session {session} completed while the "
                "resume was ending it"
            )
        else:
            leftovers.append(
                f"QPU task {task_id} of killed session {session} ran to completion "
                f"{task['ended'] - bound:.1f} s after the resume recorded it ended"
            )
    spans = sorted(tasks.values(), key=lambda t: t["created"])
    for i, first in enumerate(spans):
        for second in spans[i + 1 :]:
            if second["created"] < (first["ended"] or float("inf")):
                duplicates.append(
                    f"QPU tasks {first['id']} ({first['state']}) and {second['id']} "
                    f"({second['state']}) of the run overlapped"
                )
    return leftovers, duplicates, notes


def _leftovers(
    scenario: Scenario,
    rundir: Path,
    log: Path,
    watcher: Watcher,
    kills: dict[str, float],
    since: float,
    exclude: set[int],
) -> tuple[list[str], list[str], list[str]]:
    """(leftovers, QPU duplicates, notes) after the final resume."""
    journal = rundir / ".qflow" / "journal.jsonl"
    entries = _journal_entries(journal)
    sessions = {e["session"] for e in entries if e.get("op") == "session"}
    executions = [e["id"] for e in entries if e.get("op") == "intend" and e["kind"] == "execution"]
    found: list[str] = []
    found += [f"journal: {r.describe()} [{r.id}] still alive" for r in read_journal(journal).alive]
    for name, pid, started in watcher.executions:
        if _alive(pid, started):
            found.append(f"execution of step {name} still runs: {_describe_process(pid)}")
    for execution in executions:
        for group in tagged_process_groups(execution):
            found.append(f"process group {group} tagged with execution {execution}")
    found += _processes_of_the_run(rundir, log, sessions, since, scenario, exclude)
    if scenario.cluster is not None:
        found += [f"Slurm job {job} in squeue" for job in scenario.cluster.active_jobs()]
    duplicates: list[str] = []
    notes: list[str] = []
    if scenario.qpu_url:
        qpu_left, duplicates, notes = _qpu_findings(scenario, entries, kills, since)
        found += qpu_left
    return found, duplicates, notes


# -- one kill point ----------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    scenario: str
    point: int
    kills: int = 0
    leftovers: list[str] = dataclasses.field(default_factory=list)
    duplicates: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    """Resumes that failed or hung, outputs that differ."""
    notes: list[str] = dataclasses.field(default_factory=list)
    moments: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    diagnostics: str = ""
    """Journal, ps, squeue and QPU tasks when something was left."""

    @property
    def ok(self) -> bool:
        return not (self.leftovers or self.duplicates or self.problems)

    def line(self) -> str:
        return (
            f"chaos {self.scenario} #{self.point} seed {SEED}: {self.kills} kills "
            f"[{'; '.join(self.moments)}], leftovers {len(self.leftovers)}, duplicates "
            f"{len(self.duplicates)}, problems {len(self.problems)}, {self.seconds:.0f} s"
        )


RESULTS: list[Outcome] = []


def _plan(rng: random.Random, reference: Reference) -> KillPlan:
    if rng.random() < STARTUP_KILL_SHARE:
        return KillPlan("startup", rng.uniform(0, reference.startup_s))
    return KillPlan("work", rng.uniform(0, reference.work_s))


def _diagnostics(rundir: Path, scenario: Scenario) -> str:
    journal = _read(str(rundir / ".qflow" / "journal.jsonl")).decode(errors="replace")
    text = f"journal:\n{journal}\nps:\n{_process_snapshot()}"
    if scenario.cluster is not None:
        text += "squeue:\n" + scenario.cluster.run("squeue", check=False)
    if scenario.qpu_url:
        with contextlib.suppress(OSError, ValueError):
            text += f"QPU tasks: {json.dumps(_qpu_call(scenario.qpu_url, '/v1/tasks'))}\n"
    return text


def _tidy(rundir: Path, scenario: Scenario, watcher: Watcher) -> None:
    """After a failed kill point only, so that later tests start clean: what qflow should
    have ended is ended here (``qflow clean``, then by hand)."""
    subprocess.run([sys.executable, "-m", "qflow.cli", "clean", str(rundir)], env=scenario.env,
                   capture_output=True, check=False, timeout=120, cwd=REPO)  # fmt: skip
    for _, pid, started in watcher.executions:
        if _alive(pid, started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
    if scenario.cluster is not None:
        for job in scenario.cluster.active_jobs():
            scenario.cluster.run("scancel", job, check=False)


def _kill_point(scenario: Scenario, point: int, reference: Reference, directory: Path) -> Outcome:
    rng = random.Random(f"{SEED}/{scenario.name}/{point}")
    outcome = Outcome(scenario.name, point)
    rundir, log, logs = directory / "run", directory / "starts.log", directory / "logs"
    journal = rundir / ".qflow" / "journal.jsonl"
    since = time.time()
    began = time.monotonic()
    watcher = Watcher(log, scenario.qpu_url, since)
    watcher.start()
    runs: list[Qflow] = []
    final: Qflow | None = None
    try:
        args = scenario.run_args(rundir, log)
        plan: KillPlan | None = _plan(rng, reference)
        attempt = 0
        while True:
            label = "run" if attempt == 0 else f"resume{attempt}"
            run = _start(label, args, scenario.env, logs)
            runs.append(run)
            state = _drive(run, journal, plan)
            if state == "hung":
                outcome.problems.append(
                    f"{label} hung (> {PROCESS_DEADLINE_S} s)\n{run.tail()}\n"
                    + _diagnostics(rundir, scenario)
                )
                break
            if state == "killed":
                assert plan is not None and run.killed_at is not None
                outcome.kills += 1
                outcome.moments.append(f"{label} at {plan.phase}+{plan.at:.2f} s")
            else:
                code = run.proc.returncode
                if code != 0:
                    outcome.problems.append(
                        f"{label} ended with exit status {code}\n{run.tail()}\n"
                        + _diagnostics(rundir, scenario)
                    )
                    break
                final = run
                if plan is not None:
                    outcome.moments.append(f"{label} done before {plan.phase}+{plan.at:.2f} s")
                break
            attempt += 1
            time.sleep(rng.uniform(0, 2))  # crashed steps may end meanwhile, or not
            # no run record: it died before taking the directory, start it again; else resume
            if (rundir / ".qflow" / "run.json").exists():
                args = ["run", "--resume", str(rundir), "--quiet"]
            else:
                args = scenario.run_args(rundir, log)
                outcome.notes.append(f"{label}: killed before run.json, started again")
            killed_resumes = attempt - 1
            kill_again = killed_resumes < MAX_RESUME_KILLS and rng.random() < RESUME_KILL_P
            plan = _plan(rng, reference) if kill_again else None
        if final is not None:
            outputs = _output_contents(final.stdout)
            if outputs != reference.outputs:
                outcome.problems.append(
                    f"outputs differ from the uninterrupted run's: {outputs!r} != "
                    f"{reference.outputs!r}"
                )
        # what the killed sessions were, and when they were killed
        pids = {r.proc.pid: r.kill_time for r in runs if r.kill_time is not None}
        kills = {e["session"]: pids[e["pid"]] for e in _journal_entries(journal)
                 if e.get("op") == "session" and e.get("pid") in pids}  # fmt: skip
        exclude = {os.getpid()}
        checked = time.monotonic()
        first: list[str] | None = None
        while True:
            found, qpu_duplicates, notes = _leftovers(
                scenario, rundir, log, watcher, kills, since, exclude
            )
            first = found if first is None else first
            if not found or time.monotonic() > checked + SETTLE_S:
                break
            time.sleep(0.2)
        if first and not found:
            outcome.notes.append(
                f"gone {time.monotonic() - checked:.1f} s after the final process: {first}"
            )
        watcher.stop()
        outcome.leftovers += found
        if found:
            outcome.diagnostics = _diagnostics(rundir, scenario)
        outcome.duplicates += watcher.duplicates + qpu_duplicates
        outcome.notes += notes
    finally:
        watcher.stop()
        for run in runs:
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()
        outcome.seconds = time.monotonic() - began
        if not outcome.ok:
            _tidy(rundir, scenario, watcher)
    return outcome


# -- the tests ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> Iterator[None]:
    began, load = time.monotonic(), os.getloadavg()
    yield
    if not RESULTS:
        return
    per = {name: sum(1 for r in RESULTS if r.scenario == name) for name in SCENARIOS}
    survived = sum(r.kills for r in RESULTS if r.ok)
    lines = [r.line() for r in RESULTS] + [
        f"chaos summary: seed {SEED}, {len(RESULTS)} kill points "
        f"({', '.join(f'{k} {v}' for k, v in per.items())}), "
        f"{sum(r.kills for r in RESULTS)} kills ({survived} survived), "
        f"leftovers {sum(len(r.leftovers) for r in RESULTS)}, "
        f"duplicates {sum(len(r.duplicates) for r in RESULTS)}, "
        f"{time.monotonic() - began:.0f} s, load {load[0]:.1f} -> "
        f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}"
    ]
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        for line in ["", *lines]:
            if reporter is not None:
                reporter.write_line(line)
            else:
                print(line)
    if os.environ.get("QFLOW_CHAOS_REPORT"):
        with open(os.environ["QFLOW_CHAOS_REPORT"], "a", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
            for r in RESULTS:
                for kind in ("leftovers", "duplicates", "problems", "notes"):
                    for item in getattr(r, kind):
                        out.write(f"{r.scenario} #{r.point} {kind}: {item}\n")


def _params() -> list[Any]:
    params = []
    for name in SCENARIOS:
        marks = [pytest.mark.slurm] if name.startswith("slurm-") else []
        params += [
            pytest.param(name, k, id=f"{name}-{k}", marks=marks) for k in range(POINTS[name])
        ]
    return params


@pytest.mark.timeout(TIMEOUT_S)
@pytest.mark.parametrize(("scenario_name", "point"), _params())
def test_kill_9_and_resume_leaves_nothing_and_runs_nothing_twice(
    scenario_name: str,
    point: int,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
):
    base = tmp_path_factory.getbasetemp() / f"chaos-{scenario_name}"
    base.mkdir(exist_ok=True)
    scenario = _scenario(scenario_name, request, base)
    reference = _reference(scenario, base)
    outcome = _kill_point(scenario, point, reference, tmp_path_factory.mktemp(scenario_name))
    RESULTS.append(outcome)
    print(outcome.line())
    for note in outcome.notes:
        print(f"  note: {note}")
    assert outcome.problems == [], "\n".join(outcome.problems)
    assert outcome.leftovers == [], "\n".join([*outcome.leftovers, outcome.diagnostics])
    assert outcome.duplicates == [], "\n".join(outcome.duplicates)
