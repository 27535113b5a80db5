"""The job order checked against the workflow's inputs before anything is created.

cwltool validates the job order only when the top process builds its first job, after the
run's directories exist; qflow asks the same cwltool functions first, so a missing input, a
wrong type or an input file that does not exist is bad input (exit 2), with nothing written.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from cwltool.builder import INPUT_OBJ_VOCAB
from cwltool.context import RuntimeContext
from cwltool.errors import WorkflowException
from cwltool.process import Process, fill_in_defaults
from cwltool.utils import normalizeFilesDirs, visit_class
from schema_salad.exceptions import ValidationException
from schema_salad.validate import validate_ex

_quiet = logging.getLogger("qflow.inputs")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def job_order_problems(
    process: Process, job_order: Any, runtime_context: RuntimeContext, source: str | None
) -> list[str]:
    """What is wrong with ``job_order`` for ``process`` ([] if nothing), as messages."""
    where = source or "the workflow's inputs"
    fix = (
        f"give every required input a value of its type in {source}"
        if source
        else "give every required input on the command line: qflow run WORKFLOW -- --name value"
    )
    fs_access = runtime_context.make_fs_access(runtime_context.basedir or "")
    job = copy.deepcopy(job_order)
    try:
        fill_in_defaults(process.tool["inputs"], job, fs_access)
        normalizeFilesDirs(job)
        schema = process.names.get_name("input_record_schema", None)
        if schema is not None:
            validate_ex(schema, job, strict=False, logger=_quiet, vocab=INPUT_OBJ_VOCAB)
    except (ValidationException, WorkflowException) as exc:
        detail = " ".join(str(exc).split())
        return [f"{where}: the job order does not fit the workflow's inputs: {detail}. Fix: {fix}"]
    missing: list[str] = []

    def check(obj: dict[str, Any]) -> None:
        location = obj.get("location")
        literal = "contents" in obj or "listing" in obj
        if isinstance(location, str) and not literal and not fs_access.exists(location):
            missing.append(location)

    visit_class(job, ("File", "Directory"), check)
    return [
        f"{where}: input {location} does not exist. Fix: check the path (relative paths are "
        f"relative to {source or 'the current directory'})"
        for location in missing
    ]
