"""The benchmarks: ANN curve arithmetic and its sweep on a small real set; the serving load loop and report."""

import json

import numpy as np
import pytest

from bench import ann


def test_frontier_keeps_the_points_nothing_beats_and_interpolates_between_them():
    pts = [
        {"recall": r, "q/s": q, "knob": str(i)}
        for i, (r, q) in enumerate(
            [(0.5, 1000), (0.8, 600), (0.7, 500), (0.9, 400), (0.95, 100), (0.93, 50), (1.0, 10)]
        )
    ]
    front = ann.frontier(pts)
    assert [(p["recall"], p["q/s"]) for p in front] == [(0.5, 1000), (0.8, 600), (0.9, 400), (0.95, 100), (1.0, 10)]
    assert ann.qps_at(front, 0.9) == 400  # on a point
    assert ann.qps_at(front, 0.85) == pytest.approx(500)  # half way from (0.8, 600) to (0.9, 400)
    assert ann.qps_at(front, 0.99) == pytest.approx(100 + 0.8 * (10 - 100))
    assert ann.qps_at(front, 0.3) == 1000  # below every point: the fastest above
    assert ann.qps_at(front[:3], 0.95) is None  # never reached
    assert [p["recall"] for p in ann.bracket(front, 0.92)] == [0.9, 0.95]  # the points qps_at reads
    assert [p["recall"] for p in ann.bracket(front, 0.95)] == [0.9, 0.95]
    assert [p["recall"] for p in ann.bracket(front, 0.3)] == [0.5] and ann.bracket(front[:3], 0.95) == []


def test_every_method_sweeps_its_knob_to_a_curve_on_a_small_set():
    db, queries = ann.synthetic(3000, d=16, clusters=30)
    results = ann.curves("small", db, queries[:200], batches=[1, 200])
    methods = {m["method"].split(" (")[0].replace("+AH", ""): m for m in results}
    assert {
        "exact numpy",
        "scann brute force",
        "scann int8 brute force",
        "scann AH",
        "scann tree27",
        "scann tree54",
        "scann tree108",
        "scann tree54+brute force",
        "scann",
        "faiss flat",
        "faiss ivf219",
        "faiss hnsw32",
    } <= set(methods)
    for exact in ("exact numpy", "scann brute force", "faiss flat"):
        assert methods[exact]["best recall"] >= 0.999, exact
    tree = methods["scann tree54"]
    assert len(tree["points"]) > 20 and tree["best recall"] >= 0.99
    assert min(p["recall"] for p in tree["points"]) < 0.9  # the sweep starts cheap
    for m in results:
        f = m["frontier"]
        assert all(a["recall"] < b["recall"] and a["q/s"] > b["q/s"] for a, b in zip(f, f[1:])), m["method"]
    best = methods["scann"]  # "scann (best per size)": the frontier of every ScaNN configuration
    for m in results:
        if m["method"].startswith("scann "):  # every configuration's point is matched or beaten on that frontier
            for p in m["points"]:
                assert any(b["recall"] >= p["recall"] and b["q/s"] >= p["q/s"] for b in best["frontier"]), m["method"]
            for r in ann.RECALLS:  # and its figure at each recall is the best configuration's own
                assert (best[f"q/s @{r}"] or 0) >= (m[f"q/s @{r}"] or 0), (m["method"], r)
    assert {p["knob"].split(":")[0] for p in best["frontier"]} <= {m["method"].split(" (")[0] for m in results}
    own = max(m["q/s @0.95"] or 0 for m in results if m["method"].startswith("scann "))
    assert best["q/s @0.95"] == own
    # the target's figures timed again, side by side (the best ScaNN one and faiss IVF's), at 1 query a call
    # and at all 200 in one
    assert [p["batch"] for p in best["paired"]] == [1, 200]
    for pair in best["paired"]:
        assert pair["faiss"] == methods["faiss ivf219"]["method"]
        assert pair["scann"] in {m["method"] for m in results if m["q/s @0.95"] == own}
        assert pair["rounds"] == 9 and pair["ratio min"] <= pair["ratio median"] <= pair["ratio max"]
        assert pair["scann q/s median"] > 0 and pair["faiss q/s median"] > 0
    one, bulk = best["paired"]
    assert one["faiss q/s median"] < bulk["faiss q/s median"]  # a call a query costs faiss more than one call
    cost = best["cost"]  # where a query's time goes at each side's cheapest setting
    assert cost["faiss"]["index"] == pair["faiss"] and cost["faiss"]["lists"] == 219
    assert cost["faiss"]["setting"] == "1" and cost["faiss"]["items a list"] == 3000 // 219
    for side in cost.values():
        assert side["search us"] > 0
        if side["lists"]:  # a tree: its search split into scoring the centroids, one average leaf and the rest
            assert side["centroids us"] > 0 and side["one list us"] > 0
            assert side["rest us"] == pytest.approx(side["search us"] - side["centroids us"] - side["one list us"])
    [verdict] = ann.target(results)
    assert verdict.startswith("small: ScaNN >= faiss IVF at recall 0.95 ") and "median of 9 paired rounds" in verdict
    assert ("NOT met" not in verdict) == (min(one["ratio median"], bulk["ratio median"]) >= 1)  # met only at both


@pytest.mark.parametrize("batches", ["abc", "1,x", "0,256", ","])
def test_ann_names_a_bad_batches_flag(batches):
    with pytest.raises(SystemExit, match=r"bench ann: --batches must be positive numbers of queries a call"):
        ann.run(["--batches", batches])


def test_catalogue_sizes_come_from_the_real_embeddings_replicated_with_noise():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(500, 8)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    small, _, _ = ann.at_size(base, 200, 10)
    assert len(small) == len(np.unique(small, axis=0)) == 200 and np.isin(small, base).all()
    big, queries, sigma = ann.at_size(base, 1700, 50)
    assert big.shape == (1700, 8) and np.allclose(np.linalg.norm(big, axis=1), 1, atol=1e-5)
    assert np.array_equal(big[:500], base)  # every real embedding once, then noisy copies of them in turn
    source = base[np.arange(500, 1700) % 500]
    own = np.sum(big[500:] * source, axis=1)
    assert 0 < sigma < 1 and np.all(own < 1 - 1e-6)  # moved, and still nearer its source than most
    assert np.median(own) > np.quantile(big[500:] @ base.T, 0.99)
    assert not (queries[:, None, :] == big[None]).all(axis=2).any()  # queries are not in the data


def test_serving_report_takes_medians_and_names_every_missed_target(monkeypatch, tmp_path):
    from bench import common, serving

    monkeypatch.setattr(common, "RESULTS", str(tmp_path))

    def runs(*qps, p99=10.0):
        return [
            {"requests": 100, "failures": 0, "first failure": "", "p50 ms": 1.0, "p99 ms": p99, "q/s": q} for q in qps
        ]

    plan = {
        "version": "/x/1",
        "signatures": ["serving_default", "similar_by_id"],
        "concurrency": [4],
        "seconds": 1,
        "repeats": 3,
    }
    out = {
        "no-op": {"no-op@4": runs(900, 1000, 5000)},  # median 1000
        "in-process": {"serving_default@4": runs(100, 1000, 1000), "similar_by_id@4": runs(1, 1, 1)},
        "grpc": {"serving_default@4": runs(850, 800, 10, p99=25.0), "similar_by_id@4": runs(650, 690, 700)},
        "swap": {
            "requests": 50,
            "failures": 1,
            "first failure": "UNAVAILABLE: x",
            "seconds": 1.0,
            "versions": {"1": 50},
        },
    }
    result = serving.report(out, plan, [])
    rows = {r["signature"]: r for r in result["rows"]}
    assert rows["serving_default"]["q/s ratio"] == pytest.approx(0.8)  # 800 / 1000: met
    assert rows["serving_default"]["p99 ratio"] == pytest.approx(2.5)  # 25 / 10: missed
    assert rows["similar_by_id"]["vs no-op q/s"] == pytest.approx(0.69)  # 690 / 1000: missed
    assert len(result["misses"]) == 3
    assert "p99 2.50x" in result["misses"][0] and "0.69x the no-op floor" in result["misses"][1]
    assert "hot swap: 1 failed" in result["misses"][2]


def test_serving_load_counts_answers_and_failures():
    from bench import serving

    def call(_, j):
        if j % 4 == 3:
            raise RuntimeError("every fourth")

    r = serving.load(call, concurrency=2, seconds=0.3)
    assert r["requests"] > 10 and 0 < r["failures"] < r["requests"]  # thread 1 fails every other call
    assert "every fourth" in r["first failure"] and r["q/s"] == pytest.approx(r["requests"] / r["seconds"])


def test_scale_compares_the_engines_per_component_at_the_same_size():
    from bench import scale

    def run(engine, rate, until="mf", multiple=4):
        return {
            "until": until,
            "multiple": multiple,
            "engine": engine,
            "components": [
                {"component": "LogTransform", "state": "complete", "n": 1000, "n/s": rate, "peak_rss_mb": 10},
                {"component": "MFTrainer", "state": "failed", "n": 500, "n/s": None, "peak_rss_mb": 5},
            ],
        }

    rows = scale.engine_ratios(
        [
            run("direct", 200.0),
            run("portable", 150.0),
            run("direct", 9.0, until="push"),
            run("direct", 1.0, multiple=16),
        ]
    )
    assert rows == [
        {
            "size": "x4",
            "component": "LogTransform",
            "n": 1000,
            "n/s direct": 200.0,
            "n/s portable": 150.0,
            "portable / direct": 0.75,
            "peak_rss_mb direct": 10,
            "peak_rss_mb portable": 10,
        }
    ]


def test_quality_over_seeds_takes_means_and_ranges_and_checks_margins_against_the_range():
    """bench quality --seeds' summary on three hand-made runs: means and ranges per cell, a target
    on the means, and whether each margin exceeds the seeds' range of both values."""
    from bench.quality import over_seeds

    def run(collab, random, pixels):
        table = {
            "regression": {"precision@10": collab},
            "random": {"precision@10": random},
            "pixels": {"precision@10": pixels},
        }
        return {
            "metric": "precision@10",
            "served": "regression",
            "facets": {"transfer": {"table": table, "chance": 0.1}},
        }

    s = over_seeds([run(0.30, 0.20, 0.29), run(0.34, 0.22, 0.27), run(0.32, 0.21, 0.31)])
    cell = s["facets"]["transfer"]["table"]["served"]
    assert cell == pytest.approx({"precision@10": 0.32, "min": 0.30, "max": 0.34, "range": 0.04})
    by = {c["target"]: c for c in s["targets"]}
    # random: margin 0.32 - 0.21 = 0.11 > max(0.04, 0.02); pixels: 0.32 - 0.29 = 0.03 < 0.04 (pixels' range)
    assert by["transfer: served >= random"]["met"] and by["transfer: served >= random"]["exceeds_range"]
    assert by["transfer: served >= pixels"]["met"] and not by["transfer: served >= pixels"]["exceeds_range"]
    assert by["transfer: served >= pixels"]["margin"] == pytest.approx(0.03)
    assert (s["targets_met"], s["targets_beyond_range"]) == (2, 1)
    # A target with an offset or a ratio: the margin is over what it needs, not over the other's value.
    cat = [run(0.30, 0.20, 0.29), run(0.34, 0.22, 0.27), run(0.32, 0.21, 0.31)]
    for r, imagenet in zip(cat, (0.38, 0.40, 0.39)):
        table = {**r["facets"]["transfer"]["table"], "imagenet": {"precision@10": imagenet}}
        r["facets"] = {"category": {"table": table, "chance": 0.1}}
    by = {c["target"]: c for c in over_seeds(cat)["targets"]}
    ratio = by["category: served >= 0.8 x imagenet"]
    assert ratio["met"] and ratio["margin"] == pytest.approx(0.32 - 0.8 * 0.39, abs=1e-4)
    offset = by["category: served >= random + 0.05"]
    assert offset["met"] and offset["margin"] == pytest.approx(0.32 - 0.21 - 0.05, abs=1e-4)


def test_the_behance_settings_are_a_valid_config_of_the_papers_size():
    """bench scale --behance: the paper's 309K users x 423K items, about 10^8 rows, the behaviour path alone."""
    from bench import scale
    from collabfeat import config as config_lib

    cfg = config_lib.load(overrides=scale.behance(1.0))
    sim = cfg.simulator
    assert sim.n_users >= 300_000 and sim.n_items >= 420_000 and sim.augment and not cfg.runner.catalogue
    assert 0.85e8 <= sim.n_users * sim.mean_views_per_user <= 1e8  # with appreciations and comments: ~10^8 rows
    tenth = config_lib.load(overrides=scale.behance(0.1)).simulator
    assert tenth.n_users == sim.n_users // 10 and tenth.n_items == sim.n_items
    assert scale.size_of({"multiple": 16}) == "x16" and scale.size_of({"size": "behance"}) == "behance"


def test_scale_add_keeps_the_other_sizes_with_their_dates(tmp_path, monkeypatch):
    """bench scale --add: the saved runs of other sizes stay, with the file's date when they had none."""
    from bench import scale

    monkeypatch.setattr(scale, "RESULTS", str(tmp_path))
    assert scale.kept("scale_behance", set()) == []
    runs = [
        {"size": "x16", "until": "mf", "engine": "direct", "seconds": 1},
        {"size": "behance-0.1", "until": "mf", "seconds": 2, "date": "2026-12-05"},
        {"size": "behance", "until": "mf", "engine": "direct", "seconds": 3},
    ]
    (tmp_path / "scale_behance.json").write_text(json.dumps({"date": "2026-12-01", "machine": "m", "runs": runs}))
    kept = scale.kept("scale_behance", {("behance", "mf", "direct")})
    assert [(r["size"], r["date"]) for r in kept] == [("x16", "2026-12-01"), ("behance-0.1", "2026-12-05")]
    assert all(r["machine"] == "m" for r in kept)


def test_ann_keeps_the_sizes_it_does_not_measure_again_and_reads_their_figures_afresh(tmp_path):
    def rows(name, scann_pts, ivf_pts):
        mk = lambda pts: [{"knob": str(i), "recall": r, "q/s": q} for i, (r, q) in enumerate(pts)]  # noqa: E731
        return [
            {"data": name, "method": "scann tree10+brute force (leaves_to_search)", "points": mk(scann_pts)},
            {"data": name, "method": "faiss ivf40 (nprobe)", "points": mk(ivf_pts)},
            {"data": name, "method": "scann (best per size)", "points": [], "q/s @0.95": 1.0, "paired": pair}
            | {"cost": {"scann": {"search us": 8.0}, "faiss": {"search us": 6.0}}},
        ]

    pair = {"batch": 1, "scann": "scann tree10+brute force (x)", "faiss": "faiss ivf40 (nprobe)", "rounds": 9}
    pair |= {"scann q/s median": 36.0, "faiss q/s median": 30.0}
    pair |= {"ratio median": 1.2, "ratio min": 1.1, "ratio max": 1.3}
    pair = [pair, pair | {"batch": 1000, "ratio median": 1.05}]

    old = {
        "date": "2026-12-01",
        "machine": "2 cores, 24 GB",
        "base": [100, 8],
        "sets": [{"data": f"catalogue {n}x8", "items": n, "real": 100, "noise sigma": 0.01} for n in (600, 6000)],
        "rows": rows("catalogue 600x8", [(0.9, 400), (1.0, 200)], [(0.9, 300), (1.0, 100)])
        + rows("catalogue 6000x8", [(0.9, 40), (1.0, 20)], [(0.9, 30), (1.0, 10)]),
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(old))
    got, sets = ann.kept_sizes(str(path), [600], [100, 8])
    assert [s["data"] for s in sets] == ["catalogue 6000x8"] and sets[0]["date"] == "2026-12-01"
    best = [m for m in got if m["method"] == "scann (best per size)"]
    assert len(best) == 1 and best[0]["q/s @0.95"] == pytest.approx(30)  # read again from the points: (40+20)/2
    assert best[0]["paired"] == pair and best[0]["cost"]["scann"] == {"search us": 8.0}  # its re-timings are kept
    assert {m["data"] for m in got} == {"catalogue 6000x8"}
    assert ann.kept_sizes(str(path), [600], [50, 8]) == ([], [])  # other embeddings: nothing kept
    [verdict] = ann.target(got)
    assert "met" in verdict and "NOT" not in verdict and "1: 36 against 30 q/s, 1.200x" in verdict
    assert "1000: 36 against 30 q/s, 1.050x" in verdict
    best[0]["paired"][1]["ratio median"] = 0.99  # missed at one number of queries a call: not met
    [verdict] = ann.target(got)
    assert "NOT met" in verdict and "0.990x" in verdict


def test_itemside_names_a_step_it_does_not_have():
    from bench import itemside

    with pytest.raises(SystemExit, match=r"no step\(s\) \['pushh'\]"):
        itemside.run(["--steps", "indexer,pushh"])
