"""The command-line interface: ``qflow`` (:mod:`~qflow.cli.main`: run, resume, clean,
validate, report, connectors, the services) and ``qflow-cwl-runner``."""

from qflow.cli.main import main

__all__ = ["main"]
