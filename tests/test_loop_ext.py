"""cwltool's own Loop-extension cases give the same outputs through qflow as through cwltool."""

from __future__ import annotations

import io
import json
from importlib.resources import files
from pathlib import Path

import cwltool.main
import pytest

from qflow.deployment import embedded_default
from qflow.engine.runner import run_cwl

LOOP_EXT = Path(str(files("cwltool"))) / "tests" / "loop-ext"

# (workflow, job order or None, expected to fail); the pairs cwltool's test_loop_ext.py uses
CASES = [
    ("single-var-loop.cwl", "single-var-loop-job.yml", False),
    ("single-var-loop-no-iteration.cwl", "single-var-loop-job.yml", False),
    ("two-vars-loop.cwl", "two-vars-loop-job.yml", False),
    ("two-vars-loop-2.cwl", "two-vars-loop-job.yml", False),
    ("all-output-loop.cwl", "single-var-loop-job.yml", False),
    ("all-output-loop-no-iteration.cwl", "single-var-loop-job.yml", False),
    ("value-from-loop.cwl", "two-vars-loop-job.yml", False),
    ("value-from-loop-2.cwl", None, False),
    ("value-from-loop-3.cwl", None, False),
    ("loop-inside-scatter.cwl", "loop-inside-scatter-job.yml", False),
    ("scatter-inside-loop.cwl", "loop-inside-scatter-job.yml", False),
    ("opt-var-loop.cwl", "single-var-loop-job.yml", False),
    ("loop-inside-loop.cwl", "two-vars-loop-job.yml", False),
    ("loop-inside-loop-all.cwl", "two-vars-loop-job.yml", False),
    ("multi-source-loop.cwl", "single-var-loop-job.yml", False),
    ("default-value-loop.cwl", "single-var-loop-job.yml", False),
    ("invalid-loop-when-exception.cwl", "two-vars-loop-job.yml", True),
    ("invalid-non-boolean-loopWhen.cwl", "two-vars-loop-job.yml", True),
    ("invalid-non-boolean-loopWhen2.cwl", "two-vars-loop-job.yml", True),
    ("invalid-value-from-loop-no-requirement.cwl", "two-vars-loop-job.yml", True),
    ("invalid-multi-source-loop-no-requirement.cwl", "single-var-loop-job.yml", True),
]

pytestmark = pytest.mark.skipif(
    not LOOP_EXT.is_dir(), reason="this cwltool wheel does not ship tests/loop-ext"
)


def _argv(outdir: Path, workflow: str, job: str | None) -> list[str]:
    argv = ["--enable-ext", "--quiet", "--outdir", str(outdir), str(LOOP_EXT / workflow)]
    return argv + ([str(LOOP_EXT / job)] if job else [])


def _strip_locations(value: object) -> object:
    """Output files live in different outdirs; compare everything but their location."""
    if isinstance(value, dict):
        return {k: _strip_locations(v) for k, v in value.items() if k not in ("location", "path")}
    if isinstance(value, list):
        return [_strip_locations(v) for v in value]
    return value


@pytest.mark.parametrize(("workflow", "job", "fails"), CASES, ids=[c[0] for c in CASES])
def test_same_outputs_as_cwltool(tmp_path: Path, workflow: str, job: str | None, fails: bool):
    reference = io.StringIO()
    ref_code = cwltool.main.main(_argv(tmp_path / "cwltool", workflow, job), stdout=reference)
    ours = io.StringIO()
    result = run_cwl(
        _argv(tmp_path / "qflow", workflow, job),
        embedded_default(),
        stdout=ours,
        bad_input_exit=False,
    )
    assert (ref_code != 0) == fails, "the case itself changed in this cwltool version"
    assert (result.exit_code != 0) == fails
    if not fails:
        assert _strip_locations(json.loads(ours.getvalue())) == _strip_locations(
            json.loads(reference.getvalue())
        )
