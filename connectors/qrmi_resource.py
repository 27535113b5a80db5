"""Building a QRMI ``QuantumResource`` from its settings, in this process only.

``QuantumResource.from_config`` takes the settings directly. Resource types without it are
built from ``<resource>_QRMI_*`` environment variables instead: set for that call only,
under a lock, and restored, so nothing leaks into steps or other resources.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

FALLBACK_ERRORS = frozenset({"PanicException", "UnsupportedFunctionError", "NotImplementedError"})
"""Errors of ``QuantumResource.from_config`` after which the resource is built from
``<resource>_QRMI_*`` environment variables instead (set for that call only)."""

_ENV_LOCK = threading.Lock()


def open_resource(qrmi: Any, resource: str, kind: Any, settings: dict[str, str]) -> Any:
    """The ``qrmi.QuantumResource`` ``resource`` of type ``kind`` (blocking)."""
    try:
        return qrmi.QuantumResource.from_config(resource, kind, settings)
    except (qrmi.ConfigError, qrmi.EnvVarNotSetError):
        raise
    except BaseException as exc:  # a type without from_config: a Rust panic
        if type(exc).__name__ not in FALLBACK_ERRORS:
            raise
    # QRMI reads these settings from <resource>_<KEY> variables when the resource is
    # built: set them for that call only, under a lock, and restore the environment.
    names = {f"{resource}_{k}": v for k, v in settings.items()}
    with _ENV_LOCK, _environment(names):
        return qrmi.QuantumResource(resource, kind)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
