#!/usr/bin/env python3
"""Hybrid clustering aggregation: the steps of qflow's reference use case.

One self-contained script (stdlib + numpy + scipy + scikit-learn + dwave-samplers) so that
every CWL tool can stage it next to its inputs and run it with ``python3``. Only
``solve-qpu``, the quantum implementation, imports qflow: its QPU client,
``qflow.qpu_client`` (standard library only; docs/quantum-steps.md), imported where it is
used, as scipy, scikit-learn and dwave-samplers are.

Subcommands (one per workflow step)::

    generate      make_blobs points                       -> points.npy
    kmeans        k-means, k ~ U{4..10} from the seed      -> labels .npy
    dbscan        DBSCAN, eps ~ U[1.2, 4.5) (seed + 0xE4)   -> labels .npy
    hierarchical  single linkage, k ~ U{4..10} (seed + 2*0xE4) -> labels .npy
    qubo          max-weight-independent-set QUBO over all clusters -> qubo.json
    solve         simulated annealing (classical stand-in for the QPU) -> solution.json
    solve-qpu     the same QUBO as a task on the QPU qflow placed the step on -> solution.json
    silhouette    decode the solution, score it, keep the best so far -> labels + score.json

DBSCAN, single linkage and the exact silhouette are this script's own (section "scalable
algorithms"), with sklearn's results but O(N) memory, so the papers' 80 000 points fit.

Data formats (kept deliberately simple):

* points: ``.npy``, float64 array of shape (n_points, n_features).
* labels: ``.npy``, int64 array of shape (n_points,); ``-1`` means "in no cluster" (DBSCAN
  noise, or an empty consensus).  Cluster labels are 0..k-1.
* qubo.json::

      {"num_variables": n, "num_points": N, "lambda": n,
       "methods": ["kmeans", "dbscan", "hierarchical"],
       "terms": [[i, j, value], ...],          # upper triangle i <= j; i == j is linear
       "clusters": [{"index": g, "method": "kmeans", "label": l, "size": s, "weight": w}, ...],
       "edges": [[i, j], ...]}                 # pairs of clusters sharing >= 1 point

* solution.json::

      {"selected": [g, ...], "energy": e, "solver": "...", "feasible": true,
       "num_reads": r, "num_sweeps": s, "seed": seed}

* score.json (written by ``silhouette``)::

      {"score": this iteration's silhouette, "num_clusters": k,
       "best_score": best so far, "improved": bool}

DBSCAN noise: noise points (label -1) are *not* a cluster.  They belong to no DBSCAN candidate
cluster, so they create no QUBO variable and no overlap edge; if the consensus leaves them
uncovered they are assigned to the nearest selected centroid like any other uncovered point.
(The authors' C++ code turns the noise into one extra cluster; that cluster is spread over
the whole space, overlaps almost everything and only distorts the weights.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from qflow.qpu_client import QpuClient

METHODS: tuple[str, ...] = ("kmeans", "dbscan", "hierarchical")
SEED_STEP = 0xE4  # offset between the per-method random streams (authors' choice)
K_RANGE = (4, 10)  # inclusive range of k for k-means and hierarchical
EPS_RANGE = (1.2, 4.5)  # DBSCAN eps ~ U[low, high)
DBSCAN_MIN_SAMPLES = 10
KMEANS_MAX_ITER = 200
SOLVER_NAME = "dwave-samplers SimulatedAnnealingSampler"
NO_SCORE = -1.0  # silhouette reported when fewer than 2 clusters exist


# --------------------------------------------------------------------------- data and I/O


def generate_points(
    n_samples: int = 3000,
    centers: int = 8,
    n_features: int = 2,
    random_state: int = 0x1337,
    center_box: tuple[float, float] = (-20.0, 20.0),
    cluster_std: float = 1.0,
) -> np.ndarray:
    """Synthetic blobs as in the papers, scaled down so a 2-core machine copes."""
    from sklearn.datasets import make_blobs

    points, _ = make_blobs(
        n_samples=n_samples,
        centers=centers,
        n_features=n_features,
        random_state=random_state,
        center_box=center_box,
        cluster_std=cluster_std,
    )
    return np.asarray(points, dtype=np.float64)


def save_array(path: str | Path, array: np.ndarray) -> None:
    """Write an array as .npy at exactly ``path`` (np.save would append '.npy' otherwise)."""
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def load_array(path: str | Path) -> np.ndarray:
    """Read a .npy file without pickles (inputs may come from anywhere)."""
    return np.load(path, allow_pickle=False)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON with a trailing newline (easy to read in CWL loadContents and by eye)."""
    Path(path).write_text(json.dumps(obj, indent=1) + "\n")


# --------------------------------------------------------------------------- clusterings


def kmeans_params(seed: int) -> dict[str, int]:
    """k drawn from the iteration seed: the parameters vary pseudo-randomly per iteration."""
    rng = np.random.default_rng(seed)
    return {"n_clusters": int(rng.integers(K_RANGE[0], K_RANGE[1] + 1))}


def dbscan_params(seed: int) -> dict[str, float | int]:
    """eps drawn from its own stream (seed + 0xE4) so it is independent of k-means' k."""
    rng = np.random.default_rng(seed + SEED_STEP)
    return {"eps": float(rng.uniform(*EPS_RANGE)), "min_samples": DBSCAN_MIN_SAMPLES}


def hierarchical_params(seed: int) -> dict[str, int]:
    """k drawn from a third stream (seed + 2*0xE4)."""
    rng = np.random.default_rng(seed + 2 * SEED_STEP)
    return {"n_clusters": int(rng.integers(K_RANGE[0], K_RANGE[1] + 1))}


def run_kmeans(points: np.ndarray, seed: int) -> np.ndarray:
    """k-means with k from the seed; the seed also fixes the initialisation (reproducible)."""
    from sklearn.cluster import KMeans

    params = kmeans_params(seed)
    k = min(params["n_clusters"], len(points))
    model = KMeans(n_clusters=k, max_iter=KMEANS_MAX_ITER, n_init=1, random_state=seed)
    return model.fit_predict(points).astype(np.int64)


def run_dbscan(points: np.ndarray, seed: int) -> np.ndarray:
    """DBSCAN with eps from the seed; noise stays -1 (no cluster, see module docstring)."""
    params = dbscan_params(seed)
    return dbscan(points, float(params["eps"]), int(params["min_samples"]))


def run_hierarchical(points: np.ndarray, seed: int) -> np.ndarray:
    """Single-linkage agglomerative clustering cut to k clusters (k from the seed)."""
    params = hierarchical_params(seed)
    return single_linkage(points, min(params["n_clusters"], len(points)))


CLUSTERINGS = {"kmeans": run_kmeans, "dbscan": run_dbscan, "hierarchical": run_hierarchical}


# --------------------------------------------------------------------------- scalable algorithms
# The papers' 80 000 points: every pairwise structure (distance matrix, DBSCAN's stored
# neighbourhoods, ~10 000 per point at eps 4.5) is tens of GB.  These keep memory O(N) (plus
# fixed-size tiles) and give the same clusterings and score as the textbook versions.

SILHOUETTE_TILE = 192
"""Points per side of a distance tile in exact_silhouette: 192 x 192 float64 (288 KiB) and
its temporary stay in a 512 KiB L2 cache (measured: 512 runs ~3x slower at 20 000 points)."""


def euclidean_mst(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges (i, j, squared length) of a Euclidean minimum spanning tree, N - 1 of them.

    Duplicate points join their first copy with a 0-length edge; the distinct points' tree
    comes from their Delaunay triangulation (which contains a Euclidean MST) in 2 or 3
    dimensions, from Prim's algorithm otherwise.  Squared lengths are sums of squared
    coordinate differences, the quantity DBSCAN compares with eps**2.
    """
    n = len(points)
    distinct, first, inverse = np.unique(points, axis=0, return_index=True, return_inverse=True)
    i, j = _distinct_mst(distinct)
    copies = np.setdiff1d(np.arange(n), first)
    i = np.concatenate([first[i], copies])
    j = np.concatenate([first[j], first[inverse.ravel()[copies]]])
    return i, j, _squared_lengths(points, i, j)


def _squared_lengths(points: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    diff = points[i] - points[j]
    return np.einsum("ij,ij->i", diff, diff)


def _distinct_mst(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MST edges of distinct points: Delaunay + sparse MST, or Prim when qhull cannot help
    (1 or > 3 dimensions, too few or flat points, points qhull merges as coplanar)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial import Delaunay, QhullError

    n, dims = points.shape
    if not 2 <= dims <= 3 or n <= dims + 1:
        return _prim_mst(points)
    try:
        triangulation = Delaunay(points)
    except QhullError:  # all points on a line or plane
        return _prim_mst(points)
    if len(triangulation.coplanar):
        return _prim_mst(points)
    simplices = triangulation.simplices
    pairs = np.concatenate(
        [simplices[:, [a, b]] for a in range(dims + 1) for b in range(a + 1, dims + 1)]
    )
    pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    lengths = _squared_lengths(points, pairs[:, 0], pairs[:, 1])  # > 0: points are distinct
    tree = minimum_spanning_tree(coo_matrix((lengths, (pairs[:, 0], pairs[:, 1])), (n, n)))
    tree = tree.tocoo()
    return tree.row.astype(np.int64), tree.col.astype(np.int64)


def _prim_mst(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prim's algorithm with distances computed on the fly: O(N^2) time, O(N) memory."""
    n = len(points)
    nearest = np.full(n, np.inf)  # squared distance from the tree, inf once in the tree
    parent = np.zeros(n, dtype=np.int64)
    in_tree = np.zeros(n, dtype=bool)
    current = 0
    children = np.empty(n - 1, dtype=np.int64)
    for step in range(n - 1):
        in_tree[current] = True
        diff = points - points[current]
        dist = np.einsum("ij,ij->i", diff, diff)
        closer = (dist < nearest) & ~in_tree
        nearest[closer] = dist[closer]
        parent[closer] = current
        nearest[current] = np.inf
        current = int(np.argmin(nearest))
        children[step] = current
    return parent[children], children


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component label of each of n nodes joined by the edges (i, j)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def single_linkage(points: np.ndarray, n_clusters: int) -> np.ndarray:
    """Single linkage cut to n_clusters: the MST without its n_clusters - 1 longest edges.

    Ties at the cut may split differently from another implementation; both are valid.
    """
    i, j, lengths = euclidean_mst(points)
    keep = np.argsort(lengths, kind="stable")[: max(len(lengths) - (n_clusters - 1), 0)]
    return components(len(points), i[keep], j[keep])


def dbscan(points: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN with sklearn's exact labels, without storing every neighbourhood.

    Core points (>= min_samples points within eps, itself included) are counted with a
    k-d tree; clusters are the core points' components joined by MST edges <= eps (the same
    components as all core pairs within eps), numbered in order of their first point as
    sklearn does; a border point takes the lowest-numbered cluster among its core neighbours
    (the one sklearn's scan reaches first).  Only non-core points' neighbourhoods are listed,
    and each has fewer than min_samples points.
    """
    from scipy.spatial import cKDTree

    labels = np.full(len(points), -1, dtype=np.int64)
    counts = cKDTree(points).query_ball_point(points, eps, return_length=True)
    core = np.flatnonzero(counts >= min_samples)
    if not len(core):
        return labels
    i, j, lengths = euclidean_mst(points[core])
    close = lengths <= eps * eps
    component = components(len(core), i[close], j[close])
    _, first = np.unique(component, return_index=True)
    number = np.empty(len(first), dtype=np.int64)
    number[np.argsort(first)] = np.arange(len(first))
    labels[core] = number[component]
    others = np.flatnonzero(counts < min_samples)
    if not len(others):
        return labels
    neighbours = cKDTree(points[core]).query_ball_point(points[others], eps)
    sizes = np.fromiter(map(len, neighbours), dtype=np.int64, count=len(others))
    if sizes.any():
        owner = np.repeat(others, sizes)
        reached = labels[core[np.concatenate(neighbours[sizes > 0]).astype(np.int64)]]
        lowest = np.full(len(points), np.iinfo(np.int64).max)
        np.minimum.at(lowest, owner, reached)
        border = others[sizes > 0]
        labels[border] = lowest[border]
    return labels


def exact_silhouette(
    points: np.ndarray, labels: np.ndarray, tile: int = SILHOUETTE_TILE, workers: int = 0
) -> float:
    """Mean silhouette over all points, as sklearn's silhouette_score without sampling.

    Points are sorted by label and distances computed in square tiles, each pair once: a
    tile's row sums per label run go to its rows, its column sums to its columns.  Rows of
    tiles are shared among ``workers`` threads (0: the CPUs this process may use; numpy
    releases the GIL), each with its own (N, k) per-label sums, so memory is O(N k) per
    worker plus its tiles.
    """
    values, encoded = np.unique(labels, return_inverse=True)
    order = np.argsort(encoded.ravel(), kind="stable")
    x, lab = points[order], encoded.ravel()[order]
    n, k = len(x), len(values)
    runs = [_label_runs(lab[a : a + tile]) for a in range(0, n, tile)]

    def tile_rows(first_row: int, step: int) -> np.ndarray:
        sums = np.zeros((n, k))
        for row in range(first_row, len(runs), step):
            a = row * tile
            for col in range(row, len(runs)):
                c = col * tile
                dist = _distances(x[a : a + tile], x[c : c + tile])
                starts, run_labels = runs[col]
                sums[a : a + tile, run_labels] += np.add.reduceat(dist, starts, axis=1)
                if col != row:
                    starts, run_labels = runs[row]
                    sums[c : c + tile, run_labels] += np.add.reduceat(dist, starts, axis=0).T
        return sums

    workers = workers or len(os.sched_getaffinity(0))
    with ThreadPoolExecutor(workers) as pool:
        sums = sum(pool.map(tile_rows, range(workers), [workers] * workers))
    size = np.bincount(lab, minlength=k)
    rows = np.arange(n)
    own = sums[rows, lab] / np.maximum(size[lab] - 1, 1)
    mean_to = sums / size
    mean_to[rows, lab] = np.inf
    other = mean_to.min(axis=1)
    scale = np.maximum(own, other)
    score = np.divide(other - own, scale, out=np.zeros(n), where=scale > 0)
    score[size[lab] == 1] = 0.0  # a point alone in its cluster scores 0
    return float(np.mean(score))


def _label_runs(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets and labels of the runs of equal labels in a sorted label array."""
    starts = np.flatnonzero(np.concatenate([[True], lab[1:] != lab[:-1]]))
    return starts, lab[starts]


def _distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Euclidean distances between the rows of x and of y, from coordinate differences
    (no |x|^2 + |y|^2 - 2xy cancellation)."""
    dist = np.subtract.outer(x[:, 0], y[:, 0])
    dist *= dist
    for f in range(1, x.shape[1]):
        diff = np.subtract.outer(x[:, f], y[:, f])
        diff *= diff
        dist += diff
    return np.sqrt(dist, out=dist)


# --------------------------------------------------------------------------- QUBO


def enumerate_clusters(labelings: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Give every produced cluster a global index, method by method, label by label.

    Label -1 (noise) is skipped: it is not a cluster.
    """
    clusters: list[dict[str, Any]] = []
    for method, labels in labelings.items():
        values, counts = np.unique(labels[labels >= 0], return_counts=True)
        for label, size in zip(values.tolist(), counts.tolist(), strict=True):
            clusters.append(
                {"index": len(clusters), "method": method, "label": label, "size": size}
            )
    return clusters


def overlap_edges(
    labelings: Mapping[str, np.ndarray], clusters: Sequence[Mapping[str, Any]]
) -> list[tuple[int, int]]:
    """Pairs (i < j) of clusters that share at least one point.

    Clusters of one method are disjoint, so only pairs of methods are compared; for each pair
    the co-occurring (label_a, label_b) pairs are found with one np.unique over the points.
    """
    index = {(c["method"], c["label"]): c["index"] for c in clusters}
    methods = list(labelings)
    edges: set[tuple[int, int]] = set()
    for a_pos, method_a in enumerate(methods):
        for method_b in methods[a_pos + 1 :]:
            la, lb = labelings[method_a], labelings[method_b]
            both = (la >= 0) & (lb >= 0)
            pairs = np.unique(np.stack([la[both], lb[both]], axis=1), axis=0)
            for label_a, label_b in pairs.tolist():
                i, j = index[(method_a, label_a)], index[(method_b, label_b)]
                edges.add((min(i, j), max(i, j)))
    return sorted(edges)


def build_qubo(labelings: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Maximum-weight-independent-set QUBO over all clusters of all methods.

    f(x) = -sum_i w_i x_i + lambda * sum_{(i,j) in E} x_i x_j with w_i = |C_i| / max_j |C_j|
    (the largest cluster weighs 1, so the solver does not prefer many small clusters) and
    lambda = n: since every w_i <= 1 < lambda, dropping one end of a violated edge always
    lowers the energy, so every minimum is an independent set.
    """
    sizes = {len(np.asarray(v)) for v in labelings.values()}
    if len(sizes) > 1:
        raise ValueError(f"label arrays differ in length: {sorted(sizes)}")
    labelings = {m: np.asarray(v, dtype=np.int64) for m, v in labelings.items()}
    clusters = enumerate_clusters(labelings)
    n = len(clusters)
    largest = max((c["size"] for c in clusters), default=1)
    for c in clusters:
        c["weight"] = c["size"] / largest
    edges = overlap_edges(labelings, clusters)
    lam = float(n)
    terms: list[list[float | int]] = [[c["index"], c["index"], -c["weight"]] for c in clusters]
    terms += [[i, j, lam] for i, j in edges]
    return {
        "num_variables": n,
        "num_points": sizes.pop() if sizes else 0,
        "lambda": lam,
        "methods": list(labelings),
        "terms": terms,
        "clusters": clusters,
        "edges": [list(e) for e in edges],
    }


def qubo_dict(qubo: Mapping[str, Any]) -> dict[tuple[int, int], float]:
    """The JSON term list as the {(i, j): value} mapping dimod-style samplers take."""
    q: dict[tuple[int, int], float] = {}
    for i, j, value in qubo["terms"]:
        key = (int(min(i, j)), int(max(i, j)))
        q[key] = q.get(key, 0.0) + float(value)
    return q


def is_independent(qubo: Mapping[str, Any], selected: Sequence[int]) -> bool:
    """True when no two selected clusters share a point."""
    chosen = set(int(s) for s in selected)
    return not any(i in chosen and j in chosen for i, j in qubo["edges"])


# --------------------------------------------------------------------------- solver


def solve_qubo(
    qubo: Mapping[str, Any], num_reads: int = 100, num_sweeps: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Classical stand-in for the quantum step: simulated annealing on the same QUBO.

    A QPU (annealer, neutral atoms, QAOA) would take exactly this QUBO; the seed makes the
    classical run reproducible.
    """
    n = int(qubo["num_variables"])
    if n == 0:
        selected: list[int] = []
        energy = 0.0
    else:
        from dwave.samplers import SimulatedAnnealingSampler

        result = SimulatedAnnealingSampler().sample_qubo(
            qubo_dict(qubo),
            num_reads=num_reads,
            num_sweeps=num_sweeps,
            seed=seed % 2**32,
        )
        best = result.first
        selected = sorted(int(v) for v, x in best.sample.items() if x == 1)
        energy = float(best.energy)
    return {
        "selected": selected,
        "energy": energy,
        "solver": SOLVER_NAME,
        "feasible": is_independent(qubo, selected),
        "num_reads": num_reads,
        "num_sweeps": num_sweeps,
        "seed": seed,
    }


# --------------------------------------------------------------------------- decoding, score


def membership_matrix(
    qubo: Mapping[str, Any], labelings: Mapping[str, np.ndarray], selected: Sequence[int]
) -> np.ndarray:
    """Boolean (n_points, n_selected): which point lies in which selected cluster."""
    by_index = {c["index"]: c for c in qubo["clusters"]}
    columns = []
    for g in selected:
        c = by_index[int(g)]
        columns.append(np.asarray(labelings[c["method"]]) == c["label"])
    n_points = len(next(iter(labelings.values())))
    if not columns:
        return np.zeros((n_points, 0), dtype=bool)
    return np.stack(columns, axis=1)


def decode_solution(
    points: np.ndarray,
    qubo: Mapping[str, Any],
    labelings: Mapping[str, np.ndarray],
    selected: Sequence[int],
) -> np.ndarray:
    """Consensus labels 0..k-1 (k = number of selected clusters, in global-index order).

    A point in exactly one selected cluster takes it.  A point in several (impossible for an
    independent set, possible if the solver returns an infeasible sample) takes the nearest
    centroid among the clusters containing it.  An uncovered point takes the nearest centroid
    among all selected clusters.  With nothing selected every label is -1.
    """
    selected = sorted(int(s) for s in selected)
    member = membership_matrix(qubo, labelings, selected)
    if member.shape[1] == 0:
        return np.full(len(points), -1, dtype=np.int64)
    counts = member.sum(axis=0)
    centroids = (member.T.astype(np.float64) @ points) / np.maximum(counts, 1)[:, None]
    dist = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    covered = member.any(axis=1)
    # covered points may only choose among the clusters that contain them
    dist = np.where(covered[:, None] & ~member, np.inf, dist)
    return np.argmin(dist, axis=1).astype(np.int64)


def silhouette(
    points: np.ndarray, labels: np.ndarray, sample: int | None = 2000, random_state: int = 0
) -> float:
    """Silhouette score; -1 with fewer than 2 clusters.

    The exact score is O(N^2) in time; ``sample`` (None or <= 0 for exact) scores the same
    fixed random subset sklearn's ``sample_size`` with ``random_state`` would, so the sampled
    score is reproducible.
    """
    n_clusters = len(np.unique(labels[labels >= 0]))
    if n_clusters < 2 or n_clusters >= len(points):
        return NO_SCORE
    if sample and 0 < sample < len(points):
        chosen = np.random.RandomState(random_state).permutation(len(points))[:sample]
        points, labels = points[chosen], labels[chosen]
        if not 2 <= len(np.unique(labels)) < len(points):  # the sample hit a single cluster
            return NO_SCORE
    return exact_silhouette(points, labels)


def keep_best(score: float, best_score: float | None, has_best_labels: bool) -> bool:
    """Does this iteration's result replace the best so far?  Ties keep the older one."""
    return best_score is None or not has_best_labels or score > best_score


# --------------------------------------------------------------------------- CLI


def _labelings_from_args(args: argparse.Namespace) -> dict[str, np.ndarray]:
    return {m: load_array(getattr(args, m)) for m in METHODS}


def cmd_generate(args: argparse.Namespace) -> None:
    points = generate_points(
        n_samples=args.n_samples,
        centers=args.centers,
        n_features=args.n_features,
        random_state=args.random_state,
        center_box=(args.box_low, args.box_high),
        cluster_std=args.cluster_std,
    )
    save_array(args.output, points)


def cmd_cluster(args: argparse.Namespace) -> None:
    points = load_array(args.points)
    labels = CLUSTERINGS[args.command](points, args.seed)
    save_array(args.output, labels)
    found = len(np.unique(labels[labels >= 0]))
    print(f"{args.command} seed={args.seed}: {found} clusters, {int((labels < 0).sum())} noise")


def cmd_qubo(args: argparse.Namespace) -> None:
    qubo = build_qubo(_labelings_from_args(args))
    write_json(args.output, qubo)
    print(f"qubo: {qubo['num_variables']} variables, {len(qubo['edges'])} edges")


def cmd_solve(args: argparse.Namespace) -> None:
    qubo = json.loads(Path(args.qubo).read_text())
    solution = solve_qubo(qubo, args.num_reads, args.num_sweeps, args.seed)
    write_json(args.output, solution)
    print(f"solve: selected {solution['selected']} energy {solution['energy']:.6f}")


QPU_TIMEOUT_S = 270.0
"""Default of ``solve-qpu --timeout``: below solve-qpu.cwl's ToolTimeLimit (300 s), so the
client cancels its task and says why before the engine has to kill it."""


def solve_on_qpu(
    qubo: Mapping[str, Any],
    num_reads: int,
    num_sweeps: int,
    seed: int,
    client: QpuClient,
) -> dict[str, Any]:
    """The quantum implementation: the same QUBO as a ``qubo`` task on the QPU that qflow
    placed the step on, through ``client`` (qflow.qpu_client: the gateway's step API, with
    its retries, idempotency key and timeout); the solution in solve_qubo's format."""
    from qflow.qpu_client import solve_qubo as solve_qubo_on_qpu

    n = int(qubo["num_variables"])
    if n == 0:
        return solve_qubo(qubo, num_reads, num_sweeps, seed)  # nothing to ask a QPU
    result = solve_qubo_on_qpu(
        client,
        qubo["terms"],
        n,
        num_reads=num_reads,
        num_sweeps=num_sweeps,
        seed=seed % 2**32,  # as solve_qubo does: the QPU takes 0 to 2**32 - 1 only
    )
    selected = [i for i, x in enumerate(result["best_sample"]) if x]
    return {
        "selected": selected,
        "energy": float(result["best_energy"]),
        "solver": result.get("solver", "qpu"),
        "feasible": is_independent(qubo, selected),
        "num_reads": num_reads,
        "num_sweeps": num_sweeps,
        "seed": seed,
    }


def cmd_solve_qpu(args: argparse.Namespace) -> None:
    try:
        from qflow.qpu_client import QpuClient
    except ImportError as exc:
        raise SystemExit(
            f"solve-qpu needs qflow's QPU client, which {sys.executable} cannot import ({exc}): "
            "install qflow for it (standard library only: pip install --no-deps qflow)"
        ) from None
    qubo = json.loads(Path(args.qubo).read_text())
    # QFLOW_QPU_URL and QFLOW_QPU_TOKEN, set by qflow; the timeout counts from here
    client = QpuClient.from_env(timeout=args.timeout if args.timeout > 0 else None)
    solution = solve_on_qpu(qubo, args.num_reads, args.num_sweeps, args.seed, client)
    write_json(args.output, solution)
    print(f"solve-qpu: selected {solution['selected']} energy {solution['energy']:.6f}")


def cmd_silhouette(args: argparse.Namespace) -> None:
    points = load_array(args.points)
    qubo = json.loads(Path(args.qubo).read_text())
    solution = json.loads(Path(args.solution).read_text())
    labels = decode_solution(points, qubo, _labelings_from_args(args), solution["selected"])
    score = silhouette(points, labels, args.sample, args.random_state)
    save_array(args.output, labels)
    has_best = args.best_labels is not None
    improved = keep_best(score, args.best_score, has_best)
    if improved:
        shutil.copyfile(args.output, args.best_output)
        best_score = score
    else:
        shutil.copyfile(args.best_labels, args.best_output)
        best_score = float(args.best_score)
    result = {
        "score": score,
        "num_clusters": int(len(np.unique(labels[labels >= 0]))),
        "best_score": best_score,
        "improved": improved,
    }
    write_json(args.score_output, result)
    print(json.dumps(result))


def add_min_seconds(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=0.0,
        help="emulated node time: the step lasts at least this long (0: off)",
    )


def build_parser() -> argparse.ArgumentParser:
    """Argument parser; every subcommand writes to explicit output paths (CWL globs them)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="make_blobs points")
    gen.add_argument("--n-samples", type=int, default=3000)
    gen.add_argument("--centers", type=int, default=8)
    gen.add_argument("--n-features", type=int, default=2)
    gen.add_argument("--random-state", type=lambda s: int(s, 0), default=0x1337)
    gen.add_argument("--box-low", type=float, default=-20.0)
    gen.add_argument("--box-high", type=float, default=20.0)
    gen.add_argument("--cluster-std", type=float, default=1.0)
    gen.add_argument("--output", default="points.npy")
    gen.set_defaults(func=cmd_generate)

    for method in METHODS:
        p = sub.add_parser(method, help=f"{method} clustering with parameters from the seed")
        p.add_argument("--points", required=True)
        p.add_argument("--seed", type=int, required=True)
        p.add_argument("--output", default=f"{method}.npy")
        add_min_seconds(p)
        p.set_defaults(func=cmd_cluster)

    qubo = sub.add_parser("qubo", help="MWIS QUBO over the clusters of all methods")
    for method in METHODS:
        qubo.add_argument(f"--{method}", required=True)
    qubo.add_argument("--output", default="qubo.json")
    qubo.set_defaults(func=cmd_qubo)

    for name, func, help_text in (
        ("solve", cmd_solve, "simulated annealing on the QUBO (classical implementation)"),
        ("solve-qpu", cmd_solve_qpu, "the QUBO as a task on a QPU (quantum implementation)"),
    ):
        solve = sub.add_parser(name, help=help_text)
        solve.add_argument("--qubo", required=True)
        solve.add_argument("--num-reads", type=int, default=100)
        solve.add_argument("--num-sweeps", type=int, default=1000)
        solve.add_argument("--seed", type=int, default=0)
        solve.add_argument("--output", default="solution.json")
        solve.set_defaults(func=func)
        if name == "solve-qpu":
            solve.add_argument(
                "--timeout",
                type=float,
                default=QPU_TIMEOUT_S,
                help="seconds for the whole QPU exchange, then cancel the task and fail "
                "(0: no limit)",
            )

    sil = sub.add_parser("silhouette", help="consensus labels, score, best so far")
    sil.add_argument("--points", required=True)
    sil.add_argument("--qubo", required=True)
    sil.add_argument("--solution", required=True)
    for method in METHODS:
        sil.add_argument(f"--{method}", required=True)
    sil.add_argument("--sample", type=int, default=2000, help="0 = exact silhouette")
    sil.add_argument("--random-state", type=int, default=0)
    sil.add_argument("--best-score", type=float, default=None)
    sil.add_argument("--best-labels", default=None)
    sil.add_argument("--output", default="consensus.npy")
    sil.add_argument("--best-output", default="best_labels.npy")
    sil.add_argument("--score-output", default="score.json")
    add_min_seconds(sil)
    sil.set_defaults(func=cmd_silhouette)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, dispatch, exit 0 (errors raise and give a non-zero exit)."""
    started = time.monotonic()
    args = build_parser().parse_args(argv)
    args.func(args)
    pad_to_min_seconds(started, getattr(args, "min_seconds", 0.0))
    return 0


def pad_to_min_seconds(started: float, min_seconds: float) -> None:
    """Stretch a step to ``min_seconds`` after its real work (benchmarks only).

    One host cannot run the papers' 80 000-point clusterings on three nodes at once; the
    strategy benchmark emulates their node time this way, as the QPU emulator does latency.
    """
    remaining = min_seconds - (time.monotonic() - started)
    if remaining > 0:
        time.sleep(remaining)


if __name__ == "__main__":
    sys.exit(main())
