"""Credentials by reference only: ``${env:NAME}`` or ``${file:PATH}``, never inline.

deployment.yml keeps the reference; the value is read only where it is used (a connector
inside the gateway) and registered for redaction, so it can be scrubbed from any text
qflow writes (logs, errors, reports).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

REFERENCE = re.compile(r"^\$\{(env|file):([^}]+)\}$")
REDACTED = "***"

_known: set[str] = set()
_known_lock = threading.Lock()


class SecretError(ValueError):
    """A credential reference that cannot be used; the message never holds a secret."""


def check_reference(value: str) -> str:
    """Accept a well-formed, resolvable reference (checked at load, before anything runs)."""
    match = REFERENCE.match(value)
    if not match:
        raise SecretError(
            "credentials are not accepted inline. Fix: put the value in an environment "
            "variable or a file readable only by you and write ${env:NAME} or ${file:PATH}"
        )
    _read(match.group(1), match.group(2))
    return value


SecretReference = Annotated[str, AfterValidator(check_reference)]
"""A pydantic field type for credential keys in connector configs."""


def _read(kind: str, where: str) -> str:
    """The credential; an empty one is refused here, at load, not by the service mid-run."""
    if kind == "env":
        if where not in os.environ:
            raise SecretError(
                f"environment variable {where} is not set. Fix: export {where}=... before "
                "running qflow"
            )
        if not os.environ[where].strip():
            raise SecretError(
                f"environment variable {where} is empty. Fix: export {where}=<the credential> "
                "before running qflow"
            )
        return os.environ[where]
    path = Path(where).expanduser()
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise SecretError(f"credential file {path} cannot be read ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(
            f"credential file {path} is accessible by other users. Fix: chmod 600 {path}"
        )
    value = path.read_text(encoding="utf-8").strip()
    if not value:
        raise SecretError(f"credential file {path} is empty. Fix: write the credential in it")
    return value


def resolve_secret(reference: str) -> str:
    """The credential a reference points to, remembered for redaction."""
    match = REFERENCE.match(reference)
    if not match:
        raise SecretError("not a credential reference (${env:NAME} or ${file:PATH})")
    value = _read(match.group(1), match.group(2))
    register_secret(value)
    return value


def register_secret(value: str) -> None:
    """Remember a value that must never appear in anything qflow writes."""
    if len(value) >= 4:  # shorter strings would redact ordinary text
        with _known_lock:
            _known.add(value)


def redact(text: str) -> str:
    """``text`` with every known secret replaced by ``***``."""
    with _known_lock:
        secrets = sorted(_known, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Scrubs known secrets from every record a handler emits (message and arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _known:
            record.msg = redact(record.getMessage())
            record.args = None
        return True
