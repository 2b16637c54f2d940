"""The ANN benchmark's curve arithmetic, and its sweep on a small real set."""
import numpy as np
import pytest

from bench import ann


def test_frontier_keeps_the_points_nothing_beats_and_interpolates_between_them():
    pts = [{"recall": r, "q/s": q, "knob": str(i)} for i, (r, q) in
           enumerate([(0.5, 1000), (0.8, 600), (0.7, 500), (0.9, 400), (0.95, 100), (0.93, 50), (1.0, 10)])]
    front = ann.frontier(pts)
    assert [(p["recall"], p["q/s"]) for p in front] == [(0.5, 1000), (0.8, 600), (0.9, 400), (0.95, 100), (1.0, 10)]
    assert ann.qps_at(front, 0.9) == 400                             # on a point
    assert ann.qps_at(front, 0.85) == pytest.approx(500)             # half way from (0.8, 600) to (0.9, 400)
    assert ann.qps_at(front, 0.99) == pytest.approx(100 + 0.8 * (10 - 100))
    assert ann.qps_at(front, 0.3) == 1000                            # below every point: the fastest above
    assert ann.qps_at(front[:3], 0.95) is None                       # never reached


def test_every_method_sweeps_its_knob_to_a_curve_on_a_small_set():
    db, queries = ann.synthetic(3000, d=16, clusters=30)
    results = ann.curves("small", db, queries[:200])
    methods = {m["method"].split(" (")[0].split("+")[0]: m for m in results}
    assert {"exact numpy", "scann brute force", "faiss flat", "faiss ivf219", "faiss hnsw32"} <= set(methods)
    for exact in ("exact numpy", "scann brute force", "faiss flat"):
        assert methods[exact]["best recall"] >= 0.999, exact
    tree = next(m for m in results if m["method"].startswith("scann tree"))
    assert len(tree["points"]) > 20 and tree["best recall"] >= 0.99
    assert min(p["recall"] for p in tree["points"]) < 0.9                # the sweep starts cheap
    for m in results:
        f = m["frontier"]
        assert all(a["recall"] < b["recall"] and a["q/s"] > b["q/s"] for a, b in zip(f, f[1:])), m["method"]
