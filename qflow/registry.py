"""The connector registry: every installed connector class, by the name deployment.yml uses.

Packages register connectors (execution or quantum) in the ``qflow.connectors`` entry-point
group; the built-ins are registered the same way in qflow's own ``pyproject.toml``. An entry
point is loaded the first time its connector is asked for, then kept. A built-in's name
cannot be taken by another package.

Reading every installed distribution's entry points takes ~50 ms with a few hundred packages
installed, a third of qflow's own start-up; a run that names only built-in connectors reads
qflow's own distribution alone.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, PackageNotFoundError, distribution, entry_points
from typing import TypeAlias

from qflow.connector import Connector, LocationConfig
from qflow.quantum import QuantumConnector, QuantumLocationConfig

ENTRY_POINT_GROUP = "qflow.connectors"

ConnectorClass: TypeAlias = (
    type[Connector[LocationConfig]] | type[QuantumConnector[QuantumLocationConfig]]
)
"""An execution or a quantum connector class."""


class UnknownConnectorError(LookupError):
    """Raised for a connector name that no installed package registers."""


_ENTRIES: dict[str, EntryPoint | ConnectorClass] = {}
"""The connectors found so far, by name: entry points, replaced by the class once loaded."""


@cache
def _builtins() -> dict[str, EntryPoint]:
    """qflow's own connectors: the entry points of its own distribution."""
    try:
        own = distribution("qflow").entry_points
    except PackageNotFoundError:  # qflow imported from a source tree, not installed
        return {}
    return {ep.name: ep for ep in own if ep.group == ENTRY_POINT_GROUP}


@cache
def registry() -> dict[str, EntryPoint | ConnectorClass]:
    """All connectors registered under the ``qflow.connectors`` entry-point group: their entry
    points, replaced by the class once loaded (tests may register classes directly)."""
    for ep in (*_builtins().values(), *entry_points(group=ENTRY_POINT_GROUP)):
        _ENTRIES.setdefault(ep.name, ep)
    return _ENTRIES


def connector_class(name: str) -> ConnectorClass:
    """Load the connector class (execution or quantum) registered as ``name``."""
    if name not in _ENTRIES:
        builtin = _builtins().get(name)
        if builtin is not None:
            _ENTRIES[name] = builtin
        else:
            registry()
    if name not in _ENTRIES:
        known = ", ".join(sorted(_ENTRIES)) or "none"
        raise UnknownConnectorError(
            f"unknown connector {name!r} (installed: {known}); install the package that "
            f"provides it or fix the name"
        )
    entry = _ENTRIES[name]
    loaded: object = entry if isinstance(entry, type) else entry.load()
    if not (isinstance(loaded, type) and issubclass(loaded, (Connector, QuantumConnector))):
        raise UnknownConnectorError(
            f"entry point {name!r} in group {ENTRY_POINT_GROUP} does not name a subclass of "
            f"qflow.connector.Connector or qflow.quantum.QuantumConnector"
        )
    _ENTRIES[name] = loaded
    return loaded
