"""Reading a deployment: a file, YAML text, or the embedded default (every step here).

File-level problems (missing, a directory, unreadable, not UTF-8, not YAML) are reported as
``FILE[:LINE:COLUMN]: what. Fix: how`` like the parser's.
"""

from __future__ import annotations

from pathlib import Path

from ruamel.yaml import YAML, YAMLError

from qflow.deployment.model import EMBEDDED_SOURCE, Deployment, DeploymentError
from qflow.deployment.parser import DeploymentParser

EMBEDDED_DEFAULT = Path(__file__).parent.with_name("local.yml")
"""qflow/local.yml (package data), next to this package."""


def load_deployment(path: str | Path) -> Deployment:
    """Read and validate a deployment file (messages name it as given)."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise DeploymentError(
            [
                f"{source}: no such deployment file. Fix: check the path, or leave the "
                f"deployment out to use the embedded default (every step on this host)"
            ]
        ) from None
    except IsADirectoryError:
        inside = Path(path) / "deployment.yml"
        fix = f"give the file: {inside}" if inside.is_file() else "give the .yml file in it"
        raise DeploymentError(
            [f"{source}: is a directory, not a deployment file. Fix: {fix}"]
        ) from None
    except OSError as exc:
        raise DeploymentError(
            [
                f"{source}: cannot read the deployment file ({exc.strerror}). "
                "Fix: check its permissions (e.g. chmod u+r)"
            ]
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DeploymentError([_encoding_error_message(raw, exc, source)]) from None
    return parse_deployment(text, source)


def parse_deployment(text: str, source: str) -> Deployment:
    """Validate deployment YAML; ``source`` is the file name used in messages."""
    try:
        data = YAML(typ="rt").load(text)
    except YAMLError as exc:
        raise DeploymentError([_yaml_error_message(exc, source)]) from None
    return DeploymentParser(source).parse(data)


def embedded_default() -> Deployment:
    """The deployment used when none is given: every step on this host (``local.yml``)."""
    return parse_deployment(EMBEDDED_DEFAULT.read_text(encoding="utf-8"), EMBEDDED_SOURCE)


def _yaml_error_message(exc: YAMLError, source: str) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    if mark is None:
        return f"{source}: YAML syntax error: {problem}. Fix: correct the YAML syntax"
    line, column = mark.line + 1, mark.column + 1
    what = f"{problem} ({context})" if context else problem
    fix = "correct the YAML syntax there (indent with spaces, quote values containing ': ')"
    if "duplicate key" in problem:
        fix = "keep only one of the duplicate keys"
    return f"{source}:{line}:{column}: YAML syntax error: {what}. Fix: {fix}"


def _encoding_error_message(raw: bytes, exc: UnicodeDecodeError, source: str) -> str:
    """Where the first byte that is not UTF-8 is, so the file can be fixed in an editor."""
    line_start = raw.rfind(b"\n", 0, exc.start) + 1
    line = raw.count(b"\n", 0, exc.start) + 1
    column = len(raw[line_start : exc.start].decode("utf-8")) + 1  # valid up to exc.start
    return (
        f"{source}:{line}:{column}: byte 0x{raw[exc.start]:02x} is not UTF-8 text. "
        "Fix: save the file as UTF-8 (or remove the character there)"
    )
