"""clagg.py's scalable algorithms (the papers' 80 000 points) against the textbook ones.

The references are sklearn's DBSCAN, AgglomerativeClustering(linkage="single") and
silhouette_score, and scipy's minimum spanning tree of the full distance matrix: each
straightforward and O(N^2) in memory, so compared on a few hundred points, with the
Delaunay path (2 and 3 features) and the Prim path (1 and 5 features) both exercised.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import cdist
from sklearn.cluster import DBSCAN, AgglomerativeClustering
from sklearn.metrics import silhouette_score
from test_clagg import clagg

DIMS = (1, 2, 3, 5)


def _blobs(n: int, dims: int, seed: int) -> np.ndarray:
    return clagg.generate_points(n_samples=n, centers=5, n_features=dims, random_state=seed)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renaming the labels: the label pairs are a one-to-one map."""
    pairs = len(np.unique(np.stack([a, b], axis=1), axis=0))
    return pairs == len(np.unique(a)) == len(np.unique(b))


def _grid_with_copies() -> np.ndarray:
    """Integer grid (many distances exactly 1, 2, sqrt 2: ties) with a third of it twice."""
    grid = np.array([[x, y] for x in range(12) for y in range(9)], dtype=np.float64)
    grid = grid[(grid[:, 0] != 5) & ((grid[:, 0] + grid[:, 1]) % 7 != 0)]  # two parts, holes
    return np.concatenate([grid, grid[::3]])


@pytest.mark.parametrize("dims", DIMS)
def test_mst_has_the_minimum_total_length_and_spans_the_points(dims: int):
    for points in (_blobs(150, dims, seed=dims), np.round(_blobs(150, dims, seed=9), 0)):
        i, j, squared = clagg.euclidean_mst(points)
        n = len(points)
        assert len(i) == n - 1 and len(np.unique(clagg.components(n, i, j))) == 1
        assert np.allclose(squared, ((points[i] - points[j]) ** 2).sum(axis=1))
        # copies add 0-length edges only; scipy's dense MST takes 0 as "no edge", so the
        # reference is the tree of the distinct points
        distinct = np.unique(points, axis=0)
        reference = minimum_spanning_tree(cdist(distinct, distinct)).sum()
        assert np.sqrt(squared).sum() == pytest.approx(reference, rel=1e-12)


def test_mst_of_points_on_a_line_and_of_a_single_point():
    line = np.array([[t, 2 * t] for t in (3.0, 0.0, 1.0, 7.0, 1.0)])  # flat: qhull refuses
    i, j, squared = clagg.euclidean_mst(line)
    assert sorted(np.sqrt(squared / 5).tolist()) == [0.0, 1.0, 2.0, 4.0]
    assert len(clagg.euclidean_mst(line[:1])[0]) == 0


@pytest.mark.parametrize("dims", DIMS)
def test_dbscan_gives_sklearns_labels(dims: int):
    for seed in range(2):
        points = _blobs(300, dims, seed)
        for eps in (0.4, 0.9, 2.0, 4.5):
            expected = DBSCAN(eps=eps, min_samples=10).fit_predict(points)
            assert np.array_equal(clagg.dbscan(points, eps, 10), expected), (seed, eps)


def test_dbscan_with_ties_at_eps_copies_and_border_points():
    points = _grid_with_copies()
    for eps, min_samples in ((1.0, 5), (1.0, 7), (np.sqrt(2), 9), (0.5, 2), (0.5, 3)):
        expected = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(points)
        got = clagg.dbscan(points, eps, min_samples)
        assert np.array_equal(got, expected), (eps, min_samples)
    # nothing is core: all noise
    assert (clagg.dbscan(points, 0.5, 50) == -1).all()


def test_a_border_point_between_two_clusters_joins_the_first_found():
    # two dense clusters (5 points each within 0.1) and point 10 midway, 1 from both;
    # with eps 1 and min_samples 5 it is a border point of both: sklearn gives it cluster 0,
    # the one holding the lowest-indexed core point (here listed second)
    left = [[-1.0 - 0.02 * k, 0.0] for k in range(5)]
    right = [[1.0 + 0.02 * k, 0.0] for k in range(5)]
    points = np.array(right + left + [[0.0, 0.0]])
    labels = clagg.dbscan(points, 1.0, 5)
    assert labels.tolist() == [0] * 5 + [1] * 5 + [0]
    assert np.array_equal(labels, DBSCAN(eps=1.0, min_samples=5).fit_predict(points))


@pytest.mark.parametrize("dims", DIMS)
def test_single_linkage_gives_sklearns_partition(dims: int):
    for seed in range(2):
        points = _blobs(250, dims, seed)
        for k in (2, 5, 9):
            labels = clagg.single_linkage(points, k)
            expected = AgglomerativeClustering(n_clusters=k, linkage="single").fit_predict(points)
            assert len(np.unique(labels)) == k
            assert _same_partition(labels, expected), (seed, k)


def test_single_linkage_with_copies_and_ties_below_the_cut():
    # the grid's two parts are 2 apart, every other MST edge is 0 or 1 long: the cut to 2
    # clusters is unique although most edges tie
    points = _grid_with_copies()
    labels = clagg.single_linkage(points, 2)
    assert np.array_equal(labels == labels[0], points[:, 0] < 5)
    expected = AgglomerativeClustering(n_clusters=2, linkage="single").fit_predict(points)
    assert _same_partition(labels, expected)
    # more clusters than distinct points: copies are split too, as sklearn does
    assert len(np.unique(clagg.single_linkage(np.array([[0.0], [0.0], [1.0]]), 3))) == 3


@pytest.mark.parametrize("dims", DIMS)
def test_exact_silhouette_matches_sklearn_over_several_tiles(dims: int):
    points = _blobs(230, dims, seed=dims)
    labels = clagg.run_kmeans(points, seed=dims)
    labels[:3] = 99  # a small cluster, sorted last
    labels[7] = -1  # a label like any other here, as in sklearn
    expected = silhouette_score(points, labels)
    for tile, workers in ((17, 1), (64, 2), (512, 0)):
        got = clagg.exact_silhouette(points, labels, tile=tile, workers=workers)
        assert got == pytest.approx(expected, abs=1e-9), (tile, workers)


def test_exact_silhouette_with_a_singleton_and_copies():
    # a point alone in its cluster scores 0; copies make some distances 0
    points = np.concatenate([_grid_with_copies(), [[40.0, 40.0]]])
    labels = (points[:, 0] >= 5).astype(np.int64)
    labels[-1] = 2
    expected = silhouette_score(points, labels)
    assert clagg.exact_silhouette(points, labels, tile=10) == pytest.approx(expected, abs=1e-9)


def test_sampled_silhouette_scores_sklearns_sample():
    points = _blobs(400, 2, seed=4)
    labels = clagg.run_kmeans(points, seed=1)
    expected = silhouette_score(points, labels, sample_size=150, random_state=5)
    assert clagg.silhouette(points, labels, sample=150, random_state=5) == pytest.approx(
        expected, abs=1e-9
    )
    assert clagg.silhouette(points, labels, sample=0) == pytest.approx(
        silhouette_score(points, labels), abs=1e-9
    )
