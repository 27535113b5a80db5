"""Optional vendor SDKs: a connector without its extra installed says which one to install.

The check never imports the SDK (qiskit, pulser and qrmi are slow to import), so validating a
deployment stays fast; a missing module becomes a message ending in the pip command.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable, Sequence
from typing import Any

IBM_EXTRA = "ibm"
IBM_MODULES = ("qiskit", "qiskit_ibm_runtime", "qiskit_aer")
"""What the ``ibm`` extra installs: the ibm connector needs all three, qrmi's IBM task kinds
the first two."""


class MissingExtra(ImportError):
    """The connector's SDK is not installed; the message names the extra to install."""


def missing_modules(modules: Iterable[str]) -> list[str]:
    """The modules of ``modules`` that cannot be imported (checked without importing them)."""
    missing = []
    for name in modules:
        if name in sys.modules:
            if sys.modules[name] is None:  # an import that is known to fail
                missing.append(name)
            continue
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):
            missing.append(name)
    return missing


def extra_message(connector: str, extra: str, modules: Sequence[str]) -> str:
    names = ", ".join(m.replace("_", "-") for m in modules)
    return (
        f"the {connector!r} connector needs {names}, which is not installed. "
        f"Fix: pip install 'qflow[{extra}]'"
    )


def check_extra(connector: str, extra: str, modules: Sequence[str]) -> None:
    """Raise :class:`MissingExtra` (a message ending in the pip command) if a module is missing."""
    missing = missing_modules(modules)
    if missing:
        raise MissingExtra(extra_message(connector, extra, missing))


def require_extra(connector: str, extra: str, modules: Sequence[str]) -> None:
    """:func:`check_extra` for config validators: a ``ValueError`` that pydantic reports."""
    try:
        check_extra(connector, extra, modules)
    except MissingExtra as exc:
        raise ValueError(str(exc)) from None


def import_extra(module: str, connector: str, extra: str) -> Any:
    """``importlib.import_module`` that turns a failed import into :class:`MissingExtra`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(extra_message(connector, extra, [module.split(".")[0]])) from exc
