"""`--provenance DIR`: the Workflow Run RO-Crate of a run, read back with ro-crate-py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from rocrate.rocrate import ROCrate

from conftest import DATA
from qflow.cli import cwl_runner
from qflow.cli.main import main as qflow_main

WORKFLOW = DATA / "provenance" / "main.cwl"
PROFILES = {
    "https://w3id.org/ro/wfrun/process/0.5",
    "https://w3id.org/ro/wfrun/workflow/0.5",
    "https://w3id.org/ro/wfrun/provenance/0.5",
    "https://w3id.org/workflowhub/workflow-ro-crate/1.0",
}


def ids(value: Any) -> list[str]:
    """The @ids a property of a read-back entity points to (one or a list; an IRI that is
    no entity of the crate reads back as a plain string or {"@id": ...})."""
    items = value if isinstance(value, list) else [value]
    return [i if isinstance(i, str) else i["@id"] if isinstance(i, dict) else i.id for i in items]


def types(entity: Any) -> set[str]:
    kind = entity.type
    return set(kind if isinstance(kind, list) else [kind])


def actions(crate: ROCrate, kind: str) -> list[Any]:
    return [e for e in crate.get_entities() if kind in types(e)]


def step_actions(crate: ROCrate) -> list[Any]:
    return [a for a in actions(crate, "CreateAction") if a.get("stepPath")]


def workflow_run(crate: ROCrate) -> Any:
    (run,) = [a for a in actions(crate, "CreateAction") if not a.get("stepPath")]
    return run


def test_crate_of_a_small_run_reads_back_and_links_every_action(tmp_path: Path, capfd):
    text = tmp_path / "in.txt"
    text.write_text("hello crate\n")
    crate_dir = tmp_path / "crate"
    code = qflow_main([
        "run", str(WORKFLOW), "--quiet", "--outdir", str(tmp_path / "out"),
        "--provenance", str(crate_dir), "--", "--text", str(text),
    ])  # fmt: skip
    captured = capfd.readouterr()
    assert code == 0, captured.err[-2000:]
    out = json.loads(captured.out)
    report = json.loads((tmp_path / "out" / "qflow-report.json").read_text())
    crate = ROCrate(crate_dir)

    # the profiles, and the workflow as the main entity with its steps and tools
    assert {p.id for p in crate.root_dataset["conformsTo"]} == PROFILES
    assert "https://w3id.org/ro/crate/1.1" in ids(crate.metadata["conformsTo"])
    main = crate.mainEntity
    assert main.id == "workflow/main.cwl"
    assert {"File", "ComputationalWorkflow", "HowTo"} <= types(main)
    assert (crate_dir / main.id).read_bytes() == WORKFLOW.read_bytes()
    steps = {s["name"]: s for s in main["step"]}
    assert set(steps) == {"/upper", "/count"}
    for name, step in steps.items():
        tool = step["workExample"]
        assert tool.id == f"workflow{name}.cwl" and tool.id in ids(main["hasPart"])
        assert (crate_dir / tool.id).read_bytes() == (
            DATA / "provenance" / tool.id[9:]
        ).read_bytes()

    # the run: inputs as object, outputs (with checksums matching the copied bytes) as result
    run = workflow_run(crate)
    assert run["instrument"] is main
    assert ids(run["actionStatus"])[0].endswith("CompletedActionStatus")
    assert run.id in ids(crate.root_dataset["mentions"])
    given = {e["exampleOfWork"]["name"]: e for e in run["object"] if e.get("exampleOfWork")}
    assert (crate_dir / given["text"].id).read_text() == "hello crate\n"
    assert given["suffix"]["value"] == "!"  # the workflow's default, filled in by cwltool
    produced = {e["exampleOfWork"]["name"]: e for e in run["result"]}
    shout = produced["shout"]
    data = (crate_dir / shout.id).read_bytes()
    assert data == b"HELLO CRATE\n!\n"
    assert shout["sha256"] == hashlib.sha256(data).hexdigest()
    assert (
        f"sha1${shout['sha1']}"
        == out["shout"]["checksum"]
        == f"sha1${hashlib.sha1(data).hexdigest()}"
    )
    assert produced["size"]["value"] == str(len(data)) == str(out["size"])

    # one CreateAction per record of the report, each tied to its step by a ControlAction
    records = {(r["step"], r["external_id"], r["location"]) for r in report["steps"]}
    executions = step_actions(crate)
    assert {(a["stepPath"], a["externalId"], a["location"]["name"]) for a in executions} == records
    controls = actions(crate, "ControlAction")
    assert len(controls) == len(executions) == 2
    for control in controls:
        execution, howto = control["object"], control["instrument"]
        assert howto is steps[execution["stepPath"]]
        assert execution["instrument"] is howto["workExample"]
        assert ids(execution["actionStatus"])[0].endswith("CompletedActionStatus")
        assert execution["location"]["connector"] == execution["connector"] == "local"
        assert execution["startTime"] <= execution["endTime"]
        assert "containerImage" in execution.properties()  # the hook, empty without containers
    (organize,) = actions(crate, "OrganizeAction")
    assert organize["result"] is run and organize["instrument"]["name"] == "qflow"
    assert set(ids(organize["object"])) == {c.id for c in controls}
    trace = crate.dereference("qflow-report.json")
    assert trace["about"] is run
    assert json.loads((crate_dir / "qflow-report.json").read_text())["steps"] == report["steps"]


def test_a_failed_run_of_the_cwl_runner_still_gets_its_crate_saying_so(tmp_path: Path):
    crate_dir = tmp_path / "crate"
    code = cwl_runner.main(["--quiet", "--provenance", str(crate_dir), "--outdir",
                            str(tmp_path / "out"), str(DATA / "fail.cwl")])  # fmt: skip
    assert code == 1
    crate = ROCrate(crate_dir)
    run = workflow_run(crate)
    assert ids(run["actionStatus"])[0].endswith("FailedActionStatus")
    assert run["stepStatus"] == "failed"
    (execution,) = step_actions(crate)  # a bare tool: its one step is /fail
    assert execution["stepPath"] == "/fail" and execution["instrument"] is crate.mainEntity
    assert ids(execution["actionStatus"])[0].endswith("FailedActionStatus")
    assert execution["error"]


def test_an_unusable_provenance_directory_is_refused_before_anything_runs(tmp_path: Path, capfd):
    full = tmp_path / "full"
    full.mkdir()
    (full / "earlier").write_text("kept")
    run = ["run", str(DATA / "fail.cwl"), "--outdir", str(tmp_path / "out"), "--provenance"]
    assert qflow_main([*run, str(full)]) == 2
    err = capfd.readouterr().err
    assert f"--provenance {full} exists and is not empty" in err and "Fix:" in err
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was created
    assert [p.name for p in full.iterdir()] == ["earlier"]

    assert qflow_main([*run, str(full / "earlier" / "crate")]) == 2
    err = capfd.readouterr().err
    assert "cannot be created" in err and "Fix:" in err

    assert cwl_runner.main(["--provenance", str(full), str(DATA / "fail.cwl")]) == 2
    assert "exists and is not empty" in capfd.readouterr().err
