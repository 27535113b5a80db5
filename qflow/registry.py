"""The connector registry: every installed connector class, by the name deployment.yml uses.

Packages register connectors (execution or quantum) in the ``qflow.connectors`` entry-point
group; the built-ins are registered the same way in qflow's own ``pyproject.toml``. An entry
point is loaded the first time its connector is asked for, then kept.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
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


@cache
def registry() -> dict[str, EntryPoint | ConnectorClass]:
    """All connectors registered under the ``qflow.connectors`` entry-point group: their entry
    points, replaced by the class once loaded (tests may register classes directly)."""
    found: dict[str, EntryPoint | ConnectorClass] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep
    return found


def connector_class(name: str) -> ConnectorClass:
    """Load the connector class (execution or quantum) registered as ``name``."""
    eps = registry()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise UnknownConnectorError(
            f"unknown connector {name!r} (installed: {known}); install the package that "
            f"provides it or fix the name"
        )
    entry = eps[name]
    loaded: object = entry if isinstance(entry, type) else entry.load()
    if not (isinstance(loaded, type) and issubclass(loaded, (Connector, QuantumConnector))):
        raise UnknownConnectorError(
            f"entry point {name!r} in group {ENTRY_POINT_GROUP} does not name a subclass of "
            f"qflow.connector.Connector or qflow.quantum.QuantumConnector"
        )
    eps[name] = loaded
    return loaded
