"""Unit tests for workflows/clustering-aggregation/clagg.py (the reference use case).

The script is not part of the qflow package, so it is imported by path.  Expected values
below are worked out by hand (or by an independent brute force), not copied from the code.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qflow.qpu_client import QpuClient
from qflow.testing.qpu_services import emulator

CLAGG_PATH = (
    Path(__file__).resolve().parents[1] / "workflows" / "clustering-aggregation" / "clagg.py"
)


def _load_clagg():
    spec = importlib.util.spec_from_file_location("clagg", CLAGG_PATH)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


clagg = _load_clagg()


# Six points, three methods, known overlaps (points are indices 0..5):
#   kmeans:        {0,1,2} {3,4,5}
#   dbscan:        {0,1}   {4,5}      points 2 and 3 are noise
#   hierarchical:  {0,1,2,3,4} {5}
SIX = {
    "kmeans": np.array([0, 0, 0, 1, 1, 1]),
    "dbscan": np.array([0, 0, -1, -1, 1, 1]),
    "hierarchical": np.array([0, 0, 0, 0, 0, 1]),
}


def _index(qubo: dict) -> dict[tuple[str, int], int]:
    return {(c["method"], c["label"]): c["index"] for c in qubo["clusters"]}


def _brute_force_min(qubo: dict) -> tuple[float, list[tuple[int, ...]]]:
    """Independent reference: evaluate f(x) for every x in {0,1}^n."""
    n = qubo["num_variables"]
    best, argbest = np.inf, []
    for bits in itertools.product((0, 1), repeat=n):
        energy = sum(v * bits[i] * bits[j] for i, j, v in qubo["terms"])
        if energy < best - 1e-12:
            best, argbest = energy, [bits]
        elif abs(energy - best) <= 1e-12:
            argbest.append(bits)
    return best, [tuple(i for i, b in enumerate(bits) if b) for bits in argbest]


def _hand_qubo(weights: list[float], edges: list[tuple[int, int]], lam: float) -> dict:
    terms = [[i, i, -w] for i, w in enumerate(weights)] + [[i, j, lam] for i, j in edges]
    return {"num_variables": len(weights), "terms": terms, "edges": [list(e) for e in edges]}


# --------------------------------------------------------------------------- QUBO


def test_qubo_clusters_sizes_and_weights():
    qubo = clagg.build_qubo(SIX)
    idx = _index(qubo)
    # 2 + 2 + 2 clusters; the dbscan noise (-1) is not a cluster
    assert qubo["num_variables"] == 6
    assert set(idx) == {
        ("kmeans", 0),
        ("kmeans", 1),
        ("dbscan", 0),
        ("dbscan", 1),
        ("hierarchical", 0),
        ("hierarchical", 1),
    }
    assert sorted(idx.values()) == list(range(6))
    sizes = {(c["method"], c["label"]): c["size"] for c in qubo["clusters"]}
    assert sizes == {
        ("kmeans", 0): 3,
        ("kmeans", 1): 3,
        ("dbscan", 0): 2,
        ("dbscan", 1): 2,
        ("hierarchical", 0): 5,
        ("hierarchical", 1): 1,
    }
    assert qubo["lambda"] == 6
    assert qubo["num_points"] == 6


def test_qubo_terms_exact():
    qubo = clagg.build_qubo(SIX)
    idx = _index(qubo)
    k0, k1 = idx["kmeans", 0], idx["kmeans", 1]
    d0, d1 = idx["dbscan", 0], idx["dbscan", 1]
    h0, h1 = idx["hierarchical", 0], idx["hierarchical", 1]
    # weights |C| / max|C| with max = 5 (hierarchical 0)
    expected = {
        (k0, k0): -3 / 5,
        (k1, k1): -3 / 5,
        (d0, d0): -2 / 5,
        (d1, d1): -2 / 5,
        (h0, h0): -1.0,
        (h1, h1): -1 / 5,
    }
    # overlaps worked out by hand; lambda = 6
    overlapping = [
        (k0, d0),  # points 0, 1
        (k0, h0),  # points 0, 1, 2
        (k1, d1),  # points 4, 5
        (k1, h0),  # points 3, 4
        (k1, h1),  # point 5
        (d0, h0),  # points 0, 1
        (d1, h0),  # point 4
        (d1, h1),  # point 5
    ]
    for i, j in overlapping:
        expected[min(i, j), max(i, j)] = 6.0
    got: dict[tuple[int, int], float] = {}
    for i, j, value in qubo["terms"]:
        assert i <= j, "terms must be upper triangular"
        assert (i, j) not in got, "each term appears once"
        got[i, j] = value
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    # explicitly absent: same-method pairs and cross-method pairs with no shared point
    for a, b in [(k0, k1), (d0, d1), (h0, h1), (k0, d1), (k0, h1), (k1, d0), (d0, h1)]:
        assert (min(a, b), max(a, b)) not in got
    assert sorted(map(tuple, qubo["edges"])) == sorted(
        (min(i, j), max(i, j)) for i, j in overlapping
    )


def test_qubo_noise_points_create_no_edges():
    # dbscan is all noise except one cluster far from the others' overlap
    labelings = {
        "kmeans": np.array([0, 0, 1, 1]),
        "dbscan": np.array([-1, -1, -1, 0]),
        "hierarchical": np.array([0, 1, 1, 1]),
    }
    qubo = clagg.build_qubo(labelings)
    idx = _index(qubo)
    assert qubo["num_variables"] == 5
    assert ("dbscan", -1) not in idx
    d0 = idx["dbscan", 0]
    # the only dbscan cluster is point 3: it overlaps kmeans 1 and hierarchical 1 only
    dbscan_edges = {tuple(e) for e in qubo["edges"] if d0 in e}
    expected = {
        tuple(sorted((d0, idx["kmeans", 1]))),
        tuple(sorted((d0, idx["hierarchical", 1]))),
    }
    assert dbscan_edges == expected


def test_qubo_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        clagg.build_qubo({"kmeans": np.array([0, 1]), "dbscan": np.array([0, 1, 1])})


def test_qubo_minimum_is_the_maximum_weight_independent_set():
    qubo = clagg.build_qubo(SIX)
    best, argmins = _brute_force_min(qubo)
    idx = _index(qubo)
    # by hand: the heaviest independent sets are {h0, h1} (1 + 0.2) and {k0, k1} (0.6 + 0.6)
    expected = {
        tuple(sorted((idx["hierarchical", 0], idx["hierarchical", 1]))),
        tuple(sorted((idx["kmeans", 0], idx["kmeans", 1]))),
    }
    assert best == pytest.approx(-1.2)
    assert set(argmins) == expected


# --------------------------------------------------------------------------- solver


def test_sa_finds_unique_mwis_on_a_path():
    # path 0-1-2-3, weights 1.0, 0.9, 0.2, 0.8: MWIS {0, 3} = 1.8 beats {1, 3} = 1.7
    qubo = _hand_qubo([1.0, 0.9, 0.2, 0.8], [(0, 1), (1, 2), (2, 3)], lam=4.0)
    solution = clagg.solve_qubo(qubo, num_reads=20, num_sweeps=200, seed=3)
    assert solution["selected"] == [0, 3]
    assert solution["energy"] == pytest.approx(-1.8)
    assert solution["feasible"] is True


def test_sa_prefers_many_leaves_over_heavy_centre():
    # star: centre 0 (weight 1) joined to 4 leaves of weight 0.3 each -> leaves win (1.2 > 1)
    qubo = _hand_qubo([1.0, 0.3, 0.3, 0.3, 0.3], [(0, k) for k in range(1, 5)], lam=5.0)
    solution = clagg.solve_qubo(qubo, num_reads=20, num_sweeps=200, seed=0)
    assert solution["selected"] == [1, 2, 3, 4]
    assert solution["energy"] == pytest.approx(-1.2)


def test_sa_reaches_brute_force_minimum_on_built_qubo():
    qubo = clagg.build_qubo(SIX)
    best, argmins = _brute_force_min(qubo)
    solution = clagg.solve_qubo(qubo, num_reads=50, num_sweeps=500, seed=11)
    assert solution["energy"] == pytest.approx(best)
    assert tuple(solution["selected"]) in argmins


def test_sa_is_deterministic_for_a_seed():
    rng = np.random.default_rng(5)
    n = 30
    weights = rng.uniform(0.1, 1.0, n).tolist()
    edges = sorted({tuple(sorted(rng.choice(n, 2, replace=False).tolist())) for _ in range(60)})
    qubo = _hand_qubo(weights, edges, lam=float(n))
    a = clagg.solve_qubo(qubo, num_reads=10, num_sweeps=50, seed=42)
    b = clagg.solve_qubo(qubo, num_reads=10, num_sweeps=50, seed=42)
    assert a == b
    # the reported energy is the QUBO energy of the reported selection
    chosen = set(a["selected"])
    energy = sum(v for i, j, v in qubo["terms"] if i in chosen and j in chosen)
    assert a["energy"] == pytest.approx(energy)


def test_solve_empty_qubo():
    solution = clagg.solve_qubo({"num_variables": 0, "terms": [], "edges": []}, seed=1)
    assert solution["selected"] == []
    assert solution["energy"] == 0.0


# --------------------------------------------------------------------------- decoding


def _line(xs: list[float]) -> np.ndarray:
    return np.array([[x, 0.0] for x in xs])


def test_decode_uncovered_points_go_to_nearest_selected_centroid():
    # dbscan clusters {0,1} at x=0,2 (centroid 1) and {2,3} at x=10,12 (centroid 11);
    # points 4 (x=3) and 5 (x=9) are noise -> uncovered
    points = _line([0, 2, 10, 12, 3, 9])
    labelings = {
        "kmeans": np.array([0, 0, 1, 1, 1, 1]),
        "dbscan": np.array([0, 0, 1, 1, -1, -1]),
        "hierarchical": np.array([0, 0, 0, 0, 0, 1]),
    }
    qubo = clagg.build_qubo(labelings)
    idx = _index(qubo)
    selected = [idx["dbscan", 1], idx["dbscan", 0]]  # order given must not matter
    labels = clagg.decode_solution(points, qubo, labelings, selected)
    # consensus label order = global-index order of the selected clusters
    assert labels.tolist() == [0, 0, 1, 1, 0, 1]


def test_decode_covered_point_keeps_its_cluster_even_if_other_centroid_is_nearer():
    # X = {0,1,2} at x=0,1,8 (centroid 3); Y = {3,4} at x=9,10 (centroid 9.5).
    # Point 2 (x=8) is nearer Y's centroid but is covered by X only: it stays in X.
    points = _line([0, 1, 8, 9, 10])
    labelings = {"kmeans": np.array([0, 0, 0, 1, 1]), "dbscan": np.array([0, 0, 0, 1, 1])}
    qubo = clagg.build_qubo(labelings)
    idx = _index(qubo)
    labels = clagg.decode_solution(points, qubo, labelings, [idx["kmeans", 0], idx["kmeans", 1]])
    assert labels.tolist() == [0, 0, 0, 1, 1]


def test_decode_point_in_two_selected_clusters_takes_nearest_containing_centroid():
    # X (kmeans 0) = {0,1,2} at x=0,1,8 (centroid 3); Y (dbscan 0) = {2,3,4} at x=8,9,10
    # (centroid 9).  Point 2 is in both (an infeasible selection): nearest is Y.
    # Point 5 (x=-5) is in neither selected cluster: nearest is X.
    points = _line([0, 1, 8, 9, 10, -5])
    labelings = {
        "kmeans": np.array([0, 0, 0, 1, 1, 1]),
        "dbscan": np.array([-1, -1, 0, 0, 0, -1]),
    }
    qubo = clagg.build_qubo(labelings)
    idx = _index(qubo)
    x, y = idx["kmeans", 0], idx["dbscan", 0]
    assert not clagg.is_independent(qubo, [x, y])
    labels = clagg.decode_solution(points, qubo, labelings, [x, y])
    lx, ly = (0, 1) if x < y else (1, 0)
    assert labels.tolist() == [lx, lx, ly, ly, ly, lx]


def test_decode_nothing_selected_gives_no_labels_and_score_minus_one():
    points = _line([0, 1, 5, 6])
    labelings = {"kmeans": np.array([0, 0, 1, 1])}
    qubo = clagg.build_qubo(labelings)
    labels = clagg.decode_solution(points, qubo, labelings, [])
    assert labels.tolist() == [-1, -1, -1, -1]
    assert clagg.silhouette(points, labels, sample=0) == -1.0


def test_single_selected_cluster_scores_minus_one():
    points = _line([0, 1, 5, 6])
    labelings = {"kmeans": np.array([0, 0, 1, 1])}
    qubo = clagg.build_qubo(labelings)
    labels = clagg.decode_solution(points, qubo, labelings, [_index(qubo)["kmeans", 0]])
    assert labels.tolist() == [0, 0, 0, 0]  # uncovered points join the only cluster
    assert clagg.silhouette(points, labels, sample=0) == -1.0


def test_silhouette_matches_hand_computation():
    # 1-D points 0, 1 | 10, 11: a = 1 for all; b = 10.5 / 9.5 (and symmetric)
    points = _line([0, 1, 10, 11])
    labels = np.array([0, 0, 1, 1])
    expected = ((10.5 - 1) / 10.5 + (9.5 - 1) / 9.5) / 2
    assert clagg.silhouette(points, labels, sample=0) == pytest.approx(expected)
    # a sample at least as large as the data is the exact score
    assert clagg.silhouette(points, labels, sample=100) == pytest.approx(expected)


def test_sampled_silhouette_is_reproducible_and_close():
    points = clagg.generate_points(n_samples=1500, centers=4, random_state=7)
    labels = clagg.run_kmeans(points, seed=0)
    exact = clagg.silhouette(points, labels, sample=0)
    s1 = clagg.silhouette(points, labels, sample=500, random_state=3)
    s2 = clagg.silhouette(points, labels, sample=500, random_state=3)
    assert s1 == s2
    assert s1 != exact  # really sampled
    assert abs(s1 - exact) < 0.05


# --------------------------------------------------------------------------- parameters


def test_parameters_drawn_in_documented_ranges():
    ks, hs, eps = set(), set(), []
    for seed in range(200):
        ks.add(clagg.kmeans_params(seed)["n_clusters"])
        hs.add(clagg.hierarchical_params(seed)["n_clusters"])
        p = clagg.dbscan_params(seed)
        assert p["min_samples"] == 10
        eps.append(p["eps"])
    assert ks == set(range(4, 11))
    assert hs == set(range(4, 11))
    assert min(eps) >= 1.2 and max(eps) < 4.5
    # the three streams differ: for some seed kmeans' k and hierarchical's k disagree
    assert any(
        clagg.kmeans_params(s)["n_clusters"] != clagg.hierarchical_params(s)["n_clusters"]
        for s in range(20)
    )


def test_clusterings_use_the_drawn_k():
    points = clagg.generate_points(n_samples=400, centers=8)
    for seed in range(3):
        k = clagg.kmeans_params(seed)["n_clusters"]
        assert len(np.unique(clagg.run_kmeans(points, seed))) == k
        h = clagg.hierarchical_params(seed)["n_clusters"]
        assert len(np.unique(clagg.run_hierarchical(points, seed))) == h


# --------------------------------------------------------------------------- CLI


def test_cli_pipeline_and_keep_best(tmp_path: Path):
    def run(*argv: str) -> None:
        assert clagg.main(list(argv)) == 0

    p = tmp_path
    run("generate", "--n-samples", "600", "--output", str(p / "points.npy"))
    points = np.load(p / "points.npy")
    assert points.shape == (600, 2)
    for method in clagg.METHODS:
        run(
            method,
            "--points",
            str(p / "points.npy"),
            "--seed",
            "0",
            "--output",
            str(p / f"{method}.npy"),
        )
    labels_args = [a for m in clagg.METHODS for a in (f"--{m}", str(p / f"{m}.npy"))]
    run("qubo", *labels_args, "--output", str(p / "qubo.json"))
    run("solve", "--qubo", str(p / "qubo.json"), "--seed", "0", "--output", str(p / "sol.json"))
    qubo = json.loads((p / "qubo.json").read_text())
    solution = json.loads((p / "sol.json").read_text())
    assert solution["feasible"] is True
    chosen = set(solution["selected"])
    energy = sum(v for i, j, v in qubo["terms"] if i in chosen and j in chosen)
    assert solution["energy"] == pytest.approx(energy)

    common = [
        "silhouette",
        "--points", str(p / "points.npy"),
        "--qubo", str(p / "qubo.json"),
        "--solution", str(p / "sol.json"),
        *labels_args,
        "--sample", "0",
    ]  # fmt: skip
    # first iteration: no previous best -> this result is the best
    run(*common, "--output", str(p / "c1.npy"), "--best-output", str(p / "b1.npy"),
        "--score-output", str(p / "s1.json"))  # fmt: skip
    s1 = json.loads((p / "s1.json").read_text())
    c1 = np.load(p / "c1.npy")
    assert s1["score"] == pytest.approx(clagg.silhouette(points, c1, sample=0))
    assert s1["num_clusters"] == len(solution["selected"])
    assert s1["improved"] is True and s1["best_score"] == s1["score"]
    assert np.array_equal(np.load(p / "b1.npy"), c1)

    # a better previous best is kept, labels and score
    fake_best = np.zeros(600, dtype=np.int64)
    np.save(p / "prev.npy", fake_best)
    run(*common, "--best-score", "2.0", "--best-labels", str(p / "prev.npy"),
        "--output", str(p / "c2.npy"), "--best-output", str(p / "b2.npy"),
        "--score-output", str(p / "s2.json"))  # fmt: skip
    s2 = json.loads((p / "s2.json").read_text())
    assert s2["improved"] is False and s2["best_score"] == 2.0
    assert s2["score"] == pytest.approx(s1["score"])
    assert np.array_equal(np.load(p / "b2.npy"), fake_best)

    # a worse previous best is replaced
    run(*common, "--best-score", "-0.5", "--best-labels", str(p / "prev.npy"),
        "--output", str(p / "c3.npy"), "--best-output", str(p / "b3.npy"),
        "--score-output", str(p / "s3.json"))  # fmt: skip
    s3 = json.loads((p / "s3.json").read_text())
    assert s3["improved"] is True and s3["best_score"] == pytest.approx(s1["score"])
    assert np.array_equal(np.load(p / "b3.npy"), c1)


@pytest.mark.parametrize(("elapsed", "minimum", "slept"), [(1.5, 4.0, 2.5), (5.0, 4.0, None),
                                                          (0.2, 0.0, None)])  # fmt: skip
def test_min_seconds_pads_only_the_remainder(monkeypatch, elapsed, minimum, slept):
    sleeps: list[float] = []
    monkeypatch.setattr(clagg.time, "monotonic", lambda: 100.0 + elapsed)
    monkeypatch.setattr(clagg.time, "sleep", sleeps.append)
    clagg.pad_to_min_seconds(100.0, minimum)
    assert sleeps == ([pytest.approx(slept)] if slept is not None else [])


def test_min_seconds_reaches_the_clustering_and_silhouette_commands():
    parser = clagg.build_parser()
    for command in ("kmeans", "dbscan", "hierarchical"):
        args = parser.parse_args([command, "--points", "p", "--seed", "1", "--min-seconds", "2.5"])
        assert args.min_seconds == 2.5
    sil = ["silhouette", "--points", "p", "--qubo", "q", "--solution", "s", "--kmeans", "k",
           "--dbscan", "d", "--hierarchical", "h"]  # fmt: skip
    assert parser.parse_args(sil).min_seconds == 0.0  # off unless asked


# --------------------------------------------------------------------------- quantum implementation


def test_solve_qpu_sends_the_qubo_to_the_qpu_and_decodes_its_answer(tmp_path: Path, monkeypatch):
    qubo = clagg.build_qubo(SIX)
    (tmp_path / "qubo.json").write_text(json.dumps(qubo))
    seed = 2**32 + 11  # the QPU takes seeds below 2**32: sent modulo, reported as given
    with emulator("clagg-qpu-token", time_scale=0) as url:
        monkeypatch.setenv("QFLOW_QPU_URL", url)
        monkeypatch.setenv("QFLOW_QPU_TOKEN", "clagg-qpu-token")
        argv = ["solve-qpu", "--qubo", str(tmp_path / "qubo.json"), "--num-reads", "50",
                "--num-sweeps", "500", "--seed", str(seed),
                "--output", str(tmp_path / "s.json")]  # fmt: skip
        assert clagg.main(argv) == 0
    solution = json.loads((tmp_path / "s.json").read_text())
    best, argbest = _brute_force_min(qubo)
    assert tuple(solution["selected"]) in argbest
    assert solution["energy"] == pytest.approx(best)
    assert solution["feasible"] is True and solution["solver"].startswith("emulator:")
    assert (solution["num_reads"], solution["num_sweeps"], solution["seed"]) == (50, 500, seed)


def test_an_empty_qubo_asks_no_qpu():
    nowhere = QpuClient("http://127.0.0.1:9", "token", attempts=1)  # nothing listens there
    empty = {"num_variables": 0, "terms": [], "edges": []}
    assert clagg.solve_on_qpu(empty, 10, 10, 1, nowhere)["selected"] == []


def test_only_the_quantum_implementation_imports_qflow(tmp_path: Path):
    """The classical subcommands run where qflow is not installed (as the script is staged)."""
    (tmp_path / "q.json").write_text(json.dumps({"num_variables": 0, "terms": [], "edges": []}))
    probe = f"""
import runpy, sys
sys.argv = ["clagg.py", "solve", "--qubo", "q.json", "--output", "s.json"]
try:
    runpy.run_path({str(CLAGG_PATH)!r}, run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
print(sorted(name for name in sys.modules if name.startswith("qflow")))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines()[-1] == "[]"
    assert json.loads((tmp_path / "s.json").read_text())["selected"] == []
