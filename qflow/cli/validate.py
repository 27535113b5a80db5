"""``qflow validate``: load a workflow with cwltool and check it against a deployment."""

from __future__ import annotations

import logging
from pathlib import Path

from cwltool.context import LoadingContext, RuntimeContext
from cwltool.load_tool import load_tool
from cwltool.process import Process
from schema_salad.exceptions import ValidationException

from qflow.deployment import Deployment
from qflow.engine.images import container_problems
from qflow.engine.schema import install_schemas
from qflow.engine.tools import make_tool, step_paths


def load_process(workflow: str) -> Process:
    """Load and validate a CWL document the way ``qflow run`` does (extensions on)."""
    install_schemas()
    context = LoadingContext()
    context.construct_tool_object = make_tool
    return load_tool(str(Path(workflow).resolve()), context)


def validate_workflow(
    workflow: str, deployment: Deployment, runtime_context: RuntimeContext | None = None
) -> list[str]:
    """Problems that would stop a run before anything is allocated; [] when it may start.

    With containers (``runtime_context.use_container``, the default) every step's runtime
    and image are looked for, and images pulled where they may be.
    """
    if not Path(workflow).is_file():
        return [f"{workflow}: no such file. Fix: check the path of the CWL workflow"]
    cwltool_log = logging.getLogger("cwltool")
    level = cwltool_log.level
    cwltool_log.setLevel(logging.ERROR)
    try:
        process = load_process(workflow)
    except ValidationException as exc:
        return [f"{workflow}: invalid CWL:\n{exc}"]
    except Exception as exc:  # noqa: BLE001 - cwltool raises many kinds; all are bad input
        return [f"{workflow}: cannot be loaded: {exc}"]
    finally:
        cwltool_log.setLevel(level)
    problems = deployment.check_steps(step_paths(process))
    return problems or container_problems(process, deployment, runtime_context or RuntimeContext())
