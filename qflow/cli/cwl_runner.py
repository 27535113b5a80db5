"""``qflow-cwl-runner``: a ``cwl-runner``-compatible entry point (cwltool's options).

It accepts every cwltool option plus ``--deployment FILE`` (default: the embedded local
deployment) and ``--qflow-report FILE``; ``--provenance DIR`` writes qflow's Workflow Run
RO-Crate (docs/provenance.md) instead of cwltool's CWLProv research object. So
``cwltest --tool qflow-cwl-runner`` runs the CWL conformance suite through qflow's engine and
connectors.
"""

from __future__ import annotations

import argparse
import logging
import sys

from qflow.cli.run import BadArguments, check_provenance
from qflow.deployment import DeploymentError, embedded_default, load_deployment


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="qflow: %(levelname)s: %(message)s")
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--deployment")
    own.add_argument("--qflow-report")
    own.add_argument("--provenance")
    ours, cwltool_argv = own.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        deployment = load_deployment(ours.deployment) if ours.deployment else embedded_default()
        if ours.provenance:
            check_provenance(ours.provenance)
    except (DeploymentError, BadArguments) as exc:
        print(f"qflow-cwl-runner: error: {exc}", file=sys.stderr)
        return 2

    from qflow.engine.runner import run_cwl

    return run_cwl(
        cwltool_argv,
        deployment,
        report_path=ours.qflow_report,
        bad_input_exit=False,
        provenance=ours.provenance,
    ).exit_code


if __name__ == "__main__":
    sys.exit(main())
