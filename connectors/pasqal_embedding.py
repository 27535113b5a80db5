"""A MIS-shaped QUBO as atoms: conflicting variables within the blockade radius, others out.

A small search for 2-D positions (random restarts of a smooth penalty minimisation, seeded,
so it is reproducible) with every conflict pair at distance <= 1 and every other pair at
>= 1.25 (relative units), then scaled to the device's minimum atom distance. Graphs that are
not such unit-disk graphs in the plane (e.g. a star with 6 or more leaves) are refused.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

from qflow.connectors.qubo import Qubo
from qflow.connectors.task_errors import TaskRefused

EDGE = 1.0
"""Longest conflict edge, in relative units."""
NON_EDGE = 1.25
"""Shortest distance between non-conflicting atoms: the blockade radius lies in between."""
SEARCH_TARGET = 1.6
"""The search aims at this gap (more contrast), and accepts anything above NON_EDGE."""
MIN_GAP = 0.7
"""Shortest distance between any two atoms, relative."""


class EmbeddingError(TaskRefused):
    """The conflict graph cannot be laid out as atoms (not a unit-disk graph, too large...)."""


@dataclasses.dataclass(frozen=True)
class Embedding:
    coords: tuple[tuple[float, float], ...]
    """Atom positions in µm, centred on the origin; atom i is variable i."""
    blockade_radius: float
    """µm; conflicting atoms are closer, the others farther."""
    omega: float
    """Peak Rabi frequency in rad/µs that gives this blockade radius."""


def layout_graph(
    n: int, edges: Sequence[tuple[int, int]], seed: int = 0, restarts: int = 25
) -> list[tuple[float, float]]:
    """Relative 2-D positions: edges <= EDGE, non-edges >= NON_EDGE, all pairs >= MIN_GAP."""
    import numpy as np
    from scipy.optimize import minimize

    if n == 1:
        return [(0.0, 0.0)]
    pairs = list(itertools.combinations(range(n), 2))
    wanted = {(min(e), max(e)) for e in edges}
    first = np.array([p[0] for p in pairs])
    second = np.array([p[1] for p in pairs])
    is_edge = np.array([p in wanted for p in pairs])

    def distances(flat: Any) -> Any:
        x = flat.reshape(n, 2)
        return np.linalg.norm(x[first] - x[second], axis=1)

    def loss(flat: Any) -> float:
        d = distances(flat)
        return float(
            np.sum(np.maximum(d[is_edge] - EDGE, 0) ** 2)
            + np.sum(np.maximum(SEARCH_TARGET - d[~is_edge], 0) ** 2)
            + np.sum(np.maximum(MIN_GAP - d, 0) ** 2)
        )

    def acceptable(flat: Any) -> bool:
        d = distances(flat)
        return bool(
            np.all(d[is_edge] <= EDGE + 1e-6)
            and np.all(d[~is_edge] >= NON_EDGE)
            and np.all(d >= MIN_GAP - 1e-6)
        )

    rng = np.random.default_rng(seed)
    spread = math.sqrt(n)
    for _ in range(restarts):  # usually the first one succeeds
        result = minimize(loss, rng.uniform(-spread, spread, 2 * n), method="L-BFGS-B")
        if acceptable(result.x):
            x = result.x.reshape(n, 2)
            return [(float(a), float(b)) for a, b in x - x.mean(axis=0)]
    raise EmbeddingError(
        f"the conflict graph ({n} variables, {len(wanted)} conflicts) cannot be laid out as "
        "atoms: no placement found with every conflicting pair inside the blockade radius and "
        "every other pair outside it (it is not a unit-disk graph in the plane, e.g. a star "
        "with 6 or more leaves). Fix: solve it on another location"
    )


def embed(qubo: Qubo, device: Any, seed: int = 0) -> Embedding:
    """Atom positions and Rabi frequency for ``qubo``'s conflict graph on ``device``."""
    import numpy as np

    n = qubo.num_variables
    edges = qubo.conflict_edges()
    rel = np.array(layout_graph(n, edges, seed=seed))
    pairs = list(itertools.combinations(range(n), 2))
    wanted = set(edges)
    dist = {p: float(np.linalg.norm(rel[p[0]] - rel[p[1]])) for p in pairs}
    longest_edge = max([dist[p] for p in pairs if p in wanted], default=EDGE)
    shortest_other = min([dist[p] for p in pairs if p not in wanted], default=2 * NON_EDGE)
    shortest = min(dist.values(), default=EDGE)
    radius_rel = math.sqrt(longest_edge * shortest_other)  # the middle, geometrically
    channel = device.channels["rydberg_global"]
    min_distance = float(device.min_atom_distance or 4.0)
    scale = min_distance / shortest
    max_amp = channel.max_amp or 4 * math.pi
    # blockade radius R = (C6 / Ω)^(1/6): a larger register needs a weaker Ω, never above max
    omega = device.interaction_coeff / (scale * radius_rel) ** 6
    if omega > 0.95 * max_amp:
        omega = 0.95 * max_amp
        scale = device.rydberg_blockade_radius(omega) / radius_rel
    coords = rel * scale
    reach = float(np.linalg.norm(coords, axis=1).max()) if n else 0.0
    limit = device.max_radial_distance
    if limit is not None and reach > limit:
        raise EmbeddingError(
            f"the atom layout needs a radius of {reach:.1f} µm, {device.name} allows {limit} µm"
        )
    return Embedding(
        coords=tuple((float(a), float(b)) for a, b in coords),
        blockade_radius=scale * radius_rel,
        omega=float(omega),
    )


def check_mis_shape(qubo: Qubo) -> None:
    """Refuse a QUBO with a negative quadratic term: only conflict penalties become atoms."""
    negative = [(i, j) for i, j, v in qubo.terms if i != j and v < 0]
    if negative:
        i, j = negative[0]
        raise TaskRefused(
            f"the QUBO is not MIS-shaped: quadratic term ({i}, {j}) is negative; this QPU takes "
            "QUBOs whose quadratic terms are positive conflict penalties. Fix: solve it on "
            "another location"
        )
