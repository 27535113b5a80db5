"""The mapping M: candidates, slots, QPU leases, estimates and the decision for each step
execution (:class:`~qflow.placement.placer.Placer`)."""

from qflow.placement.model import HOST, Lease, NoPlacement, Placement
from qflow.placement.placer import Placer

__all__ = ["HOST", "Lease", "NoPlacement", "Placement", "Placer"]
