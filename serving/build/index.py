"""A ScaNN index over the catalogue's embeddings (through scann_ops_pybind, from serving/scann_lib.py, which
switches on the SIMD kernels the CPU can run; see also env/scann_shim.py)."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable

import numpy as np

from collabfeat import examples, feature_model, progress, storage, topk
from collabfeat.catalogue import read_labels
from collabfeat.config import Config, IndexConfig
from serving import store
from serving.scann_lib import KERNELS, scann_ops_pybind

# Below this many items a tree gains nothing: search all of them, exactly scored. Up to
# BRUTE_FORCE_UP_TO items exact brute force is timed against the other configurations too.
BRUTE_FORCE_BELOW = 2000
BRUTE_FORCE_UP_TO = 100_000


def build(embeddings: np.ndarray, cfg: IndexConfig, queries: np.ndarray | None = None):
    """embeddings: L2-normalised float32 [n, d]; dot product = cosine similarity.
    -> (searcher, settings): the ScaNN searcher and how it is to be searched (see `choose`)."""
    db = np.ascontiguousarray(embeddings, dtype=np.float32)
    if queries is None:
        queries = db[topk.sample(len(db), TUNING_QUERIES, 1)]
    return choose(db, np.ascontiguousarray(queries, dtype=np.float32), cfg)


# Search settings are tuned on this many catalogue items as queries (another seeded sample than the
# one the Indexer reports recall on), and must reach index.min_recall plus this margin on them.
TUNING_QUERIES = 1000
TUNING_MARGIN = 0.01


def _timed_search(searcher, queries: np.ndarray, k: int, **knobs) -> tuple[np.ndarray, float]:
    """Found rows, and the best of 3 timings in milliseconds per query."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        found, _ = searcher.search_batched(queries, final_num_neighbors=k, **knobs)
        best = min(best, time.perf_counter() - start)
    return found, 1000 * best / max(1, len(queries))


def _families(n: int, k: int, cfg: IndexConfig) -> list[tuple[str, dict, Callable, list[dict]]]:
    """(kind, what it is built with, its builder, the search settings to try, cheapest first per
    re-scored length) for each ScaNN configuration worth building for n items; index.kind picks one.
    "auto" tries the trees, with exact scoring in the leaves searched (tree_bf, as faiss's IVF-Flat
    does) and with anisotropic hashing and exact re-scoring (tree_ah); int8 brute force and hashing
    of every item (ah) never won on the real catalogue embeddings at 6k, 60k or 10^6 items
    (bench ann), so they are built only when index.kind asks for them."""
    want = cfg.kind
    steps = [cfg.reorder] if cfg.reorder else reorders(k)
    most = max(cfg.reorder, 4 * k, 400)
    tree = want == "auto" and n >= BRUTE_FORCE_BELOW
    # leaves_to_search given is a share of one tree: then the sqrt(n) tree alone, unless leaves is given too
    leaf_counts = [cfg.leaves] if cfg.leaves else tree_leaves(n)[: 1 if cfg.leaves_to_search else None]

    def searched(leaves: int) -> list[int]:
        return [cfg.leaves_to_search] if cfg.leaves_to_search else _leaf_steps(leaves)

    out: list[tuple[str, dict, Callable, list[dict]]] = []
    if want == "int8":
        out.append(("int8", {}, lambda db: int8_searcher(db, k, most), [{"reorder": max(k, r)} for r in steps]))
    if want == "ah":
        out.append(("ah", {}, lambda db: ah_searcher(db, k, most), [{"reorder": max(k, r)} for r in steps]))
    if want == "tree_bf" or tree:
        for leaves in leaf_counts:
            out.append(
                (
                    "tree_bf",
                    {"leaves": leaves},
                    lambda db, leaves=leaves: tree_bf_searcher(db, k, leaves),
                    [{"reorder": k, "leaves_to_search": t} for t in searched(leaves)],
                )
            )
    if want == "tree_ah" or tree:
        for leaves in leaf_counts:
            out.append(
                (
                    "tree_ah",
                    {"leaves": leaves},
                    lambda db, leaves=leaves: tree_searcher(db, k, leaves, most),
                    [{"reorder": max(k, r), "leaves_to_search": t} for r in steps for t in searched(leaves)],
                )
            )
    return out


def choose(db: np.ndarray, queries: np.ndarray, cfg: IndexConfig):
    """ScaNN's configuration picked by the catalogue's size and its search knobs tuned by measurement.

    Brute force (exact) for catalogues below BRUTE_FORCE_BELOW. Beyond, every configuration of
    `_families` is built and searched with the fewest leaves and the shortest re-scored list that reach
    index.min_recall (+ TUNING_MARGIN) on the tuning queries: trees of about sqrt(n) and 2 sqrt(n)
    leaves (see tree_leaves), scored exactly in the leaves searched or by anisotropic hashing with
    exact re-scoring; the fastest setting that reaches the recall is taken. Up to
    BRUTE_FORCE_UP_TO items exact brute force is timed as well and taken when it is faster; if nothing
    reaches the recall, brute force is taken: exact, slower. index.kind picks one configuration, and
    settings given in the config (leaves, leaves_to_search, reorder) are used as given."""
    n = len(db)
    k = min(cfg.num_neighbors, n)
    target = min(1.0, cfg.min_recall + TUNING_MARGIN)
    exact = exact_top_k(db, queries, k)[0]

    def brute_force():
        searcher = brute_force_searcher(db, k)
        found, ms = _timed_search(searcher, queries, k)
        return searcher, {"kind": "brute_force", "tuning_recall": recall(found, exact, k), "ms_per_query": ms}

    if cfg.kind == "brute_force" or (cfg.kind == "auto" and n < BRUTE_FORCE_BELOW):
        why = (
            "set by index.kind"
            if cfg.kind == "brute_force"
            else f"{n} items < {BRUTE_FORCE_BELOW}: a tree gains nothing"
        )
        searcher, settings = brute_force()
        return searcher, {**settings, "why": why}
    brute = brute_force() if cfg.kind == "auto" and n <= BRUTE_FORCE_UP_TO else None
    fixed = bool(cfg.reorder and (cfg.leaves_to_search or cfg.kind in ("int8", "ah")))
    tried: list[dict] = []
    best = None
    families = _families(n, k, cfg)
    for kind, built_with, build_searcher, settings in families:
        searcher = build_searcher(db)
        stop_at = None  # a re-scored length at which some leaves_to_search already reached the recall
        for knobs in settings:
            if stop_at is not None and knobs.get("reorder") == stop_at:
                continue  # more leaves only cost more at this re-scored length
            found, ms = _timed_search(
                searcher,
                queries,
                k,
                pre_reorder_num_neighbors=knobs["reorder"],
                leaves_to_search=knobs.get("leaves_to_search"),
            )
            r = recall(found, exact, k)
            tried.append({"kind": kind, **built_with, **knobs, "tuning_recall": r, "ms_per_query": ms})
            if r >= target or fixed:
                if best is None or ms < best[1]["ms_per_query"]:
                    best = (searcher, tried[-1])
                if not kind.startswith("tree"):
                    break  # a longer re-scored list only costs more
                stop_at = knobs["reorder"]
    if best and (brute is None or best[1]["ms_per_query"] <= brute[1]["ms_per_query"]):
        chosen = best[1]
        why = (
            f"{n} items: {chosen['kind']}"
            + (f" over {chosen['leaves']} leaves" if "leaves" in chosen else "")
            + f", the fastest of {len(tried)} search settings of {len(families)} configurations tried that "
            f"reached recall@{k} {target:.3f} on {len(queries)} tuning queries, "
            f"at {chosen['ms_per_query']:.4f} ms/query"
        )
        if brute is not None:
            why += f"; brute force took {brute[1]['ms_per_query']:.4f}"
        return best[0], {**chosen, "why": why, "tried": tried}
    brute = brute or brute_force()
    why = (
        (
            f"brute force answered in {brute[1]['ms_per_query']:.4f} ms/query, the fastest other setting that "
            f"reached recall@{k} {target:.3f} in {best[1]['ms_per_query']:.4f}"
        )
        if best
        else f"no setting of {len(tried)} tried reached recall@{k} {target:.3f}: exact search instead"
    )
    return brute[0], {**brute[1], "why": why, "tried": tried}


def default_leaves(n: int) -> int:
    return max(2, int(math.sqrt(n)))


MIN_LEAF_ITEMS = 10  # a tree whose leaves average fewer items than this is not one worth having


def tree_leaves(n: int) -> list[int]:
    """The trees tried for n items: about sqrt(n) and 2 sqrt(n) leaves (the finer one, with fewer
    items scored a query, was ScaNN's fastest at recall 0.95 at 6k and 60k items in bench ann), the
    finer one only while its leaves average at least 10 items."""
    root = default_leaves(n)
    return [root, 2 * root] if 2 * root * MIN_LEAF_ITEMS <= n else [root]


def min_partition(n: int, leaves: int) -> int:
    """ScaNN's min_partition_size for a tree of `leaves` over n items: its default (50) where leaves
    average 400 items or more, less below, so that k-means keeps the small leaves that make a tree
    worth having at a few thousand items (with 50 it re-seeds every leaf under 50 items, and a
    154-leaf tree over 6,000 items searched no fewer items than a 77-leaf one)."""
    return max(1, min(50, n // leaves // 8))


def brute_force_searcher(db: np.ndarray, k: int):
    return scann_ops_pybind.builder(db, k, "dot_product").score_brute_force().build()


def tree_searcher(db: np.ndarray, k: int, leaves: int, max_reorder: int):
    """A tree over `leaves` leaves with anisotropic hashing (2 dims a subspace) and exact re-scoring of
    up to `max_reorder` candidates; leaves_to_search and the re-scored length are chosen per search."""
    return (
        _tree(db, k, leaves, spherical=False)
        .score_ah(_ah_dims(db), anisotropic_quantization_threshold=0.2)
        .reorder(max_reorder)
        .build()
    )


def tree_bf_searcher(db: np.ndarray, k: int, leaves: int):
    """A spherical k-means tree over `leaves` leaves, the items in the leaves searched scored exactly
    (faiss's IVF-Flat, in ScaNN); leaves_to_search is chosen per search."""
    return _tree(db, k, leaves, spherical=True).score_brute_force().build()


def _tree(db: np.ndarray, k: int, leaves: int, spherical: bool):
    """A ScaNN builder with its tree over `leaves` leaves set (k-means on up to 250k items)."""
    return scann_ops_pybind.builder(db, k, "dot_product").tree(
        num_leaves=leaves,
        num_leaves_to_search=max(1, leaves // 3),
        training_sample_size=min(len(db), 250_000),
        min_partition_size=min_partition(len(db), leaves),
        spherical=spherical,
    )


def ah_searcher(db: np.ndarray, k: int, max_reorder: int):
    """Anisotropic hashing over every item (no tree), then exact re-scoring of up to `max_reorder`."""
    return (
        scann_ops_pybind.builder(db, k, "dot_product")
        .score_ah(_ah_dims(db), anisotropic_quantization_threshold=0.2, training_sample_size=min(len(db), 250_000))
        .reorder(max_reorder)
        .build()
    )


def int8_searcher(db: np.ndarray, k: int, max_reorder: int):
    """Brute force over int8-quantised embeddings, then exact re-scoring of up to `max_reorder`."""
    return scann_ops_pybind.builder(db, k, "dot_product").score_brute_force(quantize=True).reorder(max_reorder).build()


def _ah_dims(db: np.ndarray) -> int:
    return 2 if db.shape[1] % 2 == 0 else 1


def reorders(k: int) -> list[int]:
    """Lengths of the exactly re-scored list to try."""
    return sorted({k, 2 * k, 5 * k, 10 * k, 40 * k})


def _leaf_steps(leaves: int) -> list[int]:
    """Numbers of leaves to search, growing by about 1.5x from 1 to all of them."""
    steps, s = [], 1
    while s < leaves:
        steps.append(s)
        s = max(s + 1, int(s * 1.5))
    return steps + [leaves]


def exact_top_k(db: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return topk.top_k(queries, db, k)


def recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean share of each query's exact top-k that a search found."""
    return float(np.mean([len(set(a.tolist()) & set(e.tolist())) / k for a, e in zip(found, exact)]))


def recall_against_exact(searcher, db: np.ndarray, queries: np.ndarray, k: int, settings: dict) -> float:
    """Recall@k of the searcher searched with its settings, against exact search."""
    approx, _ = store.search({"searcher": searcher, "meta": settings}, queries, k)
    return recall(approx, exact_top_k(db, queries, k)[0], k)


def _umap():
    """umap, with every numba function of its own compiled once and kept in numba's on-disk cache.
    umap marks almost none of them cache=True, so each fresh process (every Indexer run) spent ~12 s
    compiling them on its first fit; from the cache that fit takes ~1 s (bench: 600 items x 32).
    env/run warms the cache when it builds the environment (warm_map_cache)."""
    import umap  # lazy: UMAP and numba compile on import, only for the map
    import umap.layouts  # lazy: UMAP and numba compile on import, only for the map
    import umap.spectral  # lazy: UMAP and numba compile on import, only for the map
    import umap.utils  # lazy: UMAP and numba compile on import, only for the map
    from numba.core.caching import NullCache  # lazy: UMAP and numba compile on import, only for the map
    from numba.core.registry import CPUDispatcher  # lazy: UMAP and numba compile on import, only for the map

    for module in (umap.umap_, umap.layouts, umap.utils, umap.distances, umap.spectral):
        for f in vars(module).values():
            if isinstance(f, CPUDispatcher) and isinstance(f._cache, NullCache):
                f.enable_caching()
    return umap


def warm_map_cache() -> None:
    """Compiles what write_map() runs into numba's cache (umap's functions; its neighbours come from
    sample_neighbours, not pynndescent)."""

    with tempfile.TemporaryDirectory() as d:
        write_map(np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32), d)


UMAP_EXACT_BELOW = 4096  # umap computes every distance itself for fewer points than this


def sample_neighbours(sample: np.ndarray, k: int) -> tuple:
    """umap's precomputed_knn for the map's sample: every point's k nearest points by cosine (itself
    first), exact, by the chunked top-k (collabfeat/topk.py), (indices, distances, None). From
    UMAP_EXACT_BELOW points on umap would search them approximately with pynndescent, whose numba
    code compiles in every process: a fresh process's fit on 20,000 points of 128 dims took 36-37 s
    that way, 12-13 s with these (4 s of it finding them). Below that: (None, None, None), and umap's
    own exact search."""
    if len(sample) < UMAP_EXACT_BELOW:
        return None, None, None
    unit = sample / np.maximum(np.linalg.norm(sample, axis=1, keepdims=True), 1e-30)

    def self_first(rows, scores):
        scores[np.arange(rows.stop - rows.start), np.arange(rows.start, rows.stop)] = np.inf

    near, sims = topk.top_k(unit, unit, k, mask=self_first)
    dist = np.maximum(1.0 - sims, 0.0).astype(np.float32)
    dist[:, 0] = 0.0
    return near, dist, None


MAP_CHUNK = 65536  # items placed on the map at a time


def write_map(embeddings: np.ndarray, directory: str, seed: int = 0, sample: int = 20000) -> None:
    """A 2-D UMAP of the embeddings (cosine), and the items snapped to a grid: `grid` lists item
    rows in row-major grid order (rows by y, each row by x), so neighbours on the map sit side by side.
    UMAP is fitted on a seeded sample of at most `sample` items; every other item is placed at the
    similarity-weighted mean of its 5 nearest sampled items (chunked: bounded memory and time)."""
    n = len(embeddings)
    if n >= 10:
        umap = _umap()
        fit = topk.sample(n, sample, seed)
        xy = np.zeros((n, 2), np.float32)
        sampled = np.asarray(embeddings[fit])
        neighbours = min(15, len(fit) - 1)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "precomputed_knn", UserWarning)  # no search index: no transform()
            xy[fit] = umap.UMAP(
                n_neighbors=neighbours,
                metric="cosine",
                random_state=seed,
                precomputed_knn=sample_neighbours(sampled, neighbours),
            ).fit_transform(sampled)
        rest = np.setdiff1d(np.arange(n), fit)
        for start in range(0, len(rest), MAP_CHUNK):  # a chunk of the other items at a time
            part = rest[start : start + MAP_CHUNK]
            near, sims = topk.top_k(np.asarray(embeddings[part]), sampled, 5)
            w = np.maximum(sims, 0) + 1e-6
            xy[part] = (xy[fit][near] * w[:, :, None]).sum(axis=1) / w.sum(axis=1, keepdims=True)
    else:
        xy = np.c_[np.arange(n), np.zeros(n)].astype(np.float32)
    cols = int(math.ceil(math.sqrt(n)))
    by_y = np.argsort(xy[:, 1], kind="stable")
    grid = np.concatenate(
        [row[np.argsort(xy[row, 0], kind="stable")] for row in np.array_split(by_y, math.ceil(n / cols))]
    )
    storage.write_json(
        os.path.join(directory, "map.json"),
        {"x": xy[:, 0].round(4).tolist(), "y": xy[:, 1].round(4).tolist(), "cols": cols, "grid": grid.tolist()},
    )


def build_index(images_uri: str, models: dict[str, str], served: str, out_uri: str, cfg: Config) -> dict:
    """The Indexer's work: embeds the whole catalogue (split "catalogue" of the ImageImport's Examples
    under images_uri) through the served feature model (models[served]) and builds a ScaNN index at
    out_uri (serving/store.py's layout); measures its recall@k against exact search on one seeded sample
    of the catalogue, after tuning its settings on another. Also writes a 2-D map of the catalogue and,
    for the explorer, the catalogue's embeddings under every other feature model, with the model.
    Returns the report (check_recall tells whether the index is good enough)."""
    ids = list(read_labels(images_uri, "catalogue"))
    batches = -(-len(ids) // examples.EMBED_BATCH)
    with tempfile.TemporaryDirectory(prefix="collabfeat-index-") as tmp:
        # The served embeddings go to disk as they come and are read back memory-mapped: at 10^6 items
        # memory holds the ScaNN index, not a second copy of the catalogue.
        store.write_npy(
            os.path.join(tmp, "served.npy"),
            feature_model.embed_batches(
                models[served],
                examples.image_batches(images_uri, "catalogue"),
                task="embedding the catalogue",
                total=batches,
            ),
        )
        emb = np.load(os.path.join(tmp, "served.npy"), mmap_mode="r")
        if len(emb) != len(ids):
            raise RuntimeError(f"the catalogue changed while it was read: {len(ids)} ids, {len(emb)} images")
        # Recall is reported on one seeded sample of the catalogue; the search settings are tuned on another.
        measured = topk.sample(len(emb), cfg.index.recall_queries, 0)
        rest = np.setdiff1d(np.arange(len(emb)), measured)
        tuning = rest[topk.sample(len(rest), TUNING_QUERIES, 1)] if len(rest) else measured
        start = time.time()
        searcher, settings = build(emb, cfg.index, emb[tuning])
        built = time.time() - start
        if settings["kind"] == "brute_force" and len(emb) > BRUTE_FORCE_UP_TO:
            progress.warn(f"Indexer: exact search over {len(emb)} items: {settings['why']}")
        queries = np.asarray(emb[measured])
        k = min(cfg.index.num_neighbors, len(emb))
        recall = recall_against_exact(searcher, emb, queries, k, settings)
        store.save_index(searcher, settings, ids, emb, out_uri, served)
        write_map(emb, out_uri, sample=cfg.index.map_sample)
        dim = int(emb.shape[1])
        del emb  # the memory map, before its file goes
    sets, reduced = [served], {}
    for name, path in sorted((n, p) for n, p in models.items() if n != served):
        # batch by batch: the rows go to disk as they come; a set of more than index.explorer_dims dims
        # is projected onto that many first (reduction(), fitted on a seeded sample of its embeddings)
        model, projection = feature_model.load_model(path), None  # loaded once for all three uses
        if not 0 < feature_model.output_dim(model) <= cfg.index.explorer_dims:
            sample = sample_embeddings(model, images_uri, len(ids), cfg.index.map_sample)
            projection = reduction(sample, cfg.index.explorer_dims)
        rows = feature_model.embed_batches(
            model,
            examples.image_batches(images_uri, "catalogue"),
            task=f"embedding the catalogue: {name}",
            total=batches,
        )
        if projection is not None:
            reduced[name] = {
                "dims": int(sample.shape[1]),
                "stored dims": int(projection["components"].shape[0]),
                "variance kept": projection["variance kept"],
                "neighbours kept@10": neighbours_kept(sample, projection),
                "sample": len(sample),
            }
            rows = (store.project(b, projection) for b in rows)
        store.write_feature_set(out_uri, name, rows, path, projection)
        sets.append(name)
    return {
        "served": served,
        "items": len(ids),
        "dim": dim,
        f"recall@{k}": recall,
        "recall_queries": len(queries),
        "map_sample": min(len(ids), cfg.index.map_sample),
        "build_seconds": built,
        "required_recall": cfg.index.min_recall,
        "tuning_queries": len(tuning),
        "settings": settings,
        "scann_kernels": sorted(name for name, on in KERNELS.items() if on) or ["baseline"],
        "feature_sets": sets,
        "reduced_sets": reduced,
    }


SAMPLE_BYTES = 256 << 20  # a feature set's sample for its reduction holds at most this much


def sample_embeddings(model, images_uri: str, n: int, size: int, seed: int = 2) -> np.ndarray:
    """A feature model's (a path or loaded) embeddings of a seeded sample of at most `size` catalogue
    images (fewer where they would pass SAMPLE_BYTES: raw pixels are 12,288 floats an image), in
    catalogue order."""
    rows = set(topk.sample(n, size, seed).tolist())
    picked = (
        [x for j, x in enumerate(b, start) if j in rows]
        for start, b in zip(range(0, n, examples.EMBED_BATCH), examples.image_batches(images_uri, "catalogue"))
    )
    out, held = [], 0
    for part in feature_model.embed_batches(model, (p for p in picked if p)):
        out.append(part)
        held += part.nbytes
        if held >= SAMPLE_BYTES:
            break
    return np.concatenate(out)


def reduction(sample: np.ndarray, dims: int, seed: int = 0) -> dict | None:
    """A projection onto the top `dims` right singular vectors of a feature set's sampled (unit-norm)
    embeddings, which keeps their dot products best in the least-squares sense; None when they have
    no more dims than that. {"components": [stored dims, d], "variance kept": the share of the
    sample's squared norm it keeps}."""
    from sklearn.utils.extmath import randomized_svd  # lazy: scikit-learn, only to reduce

    n, d = sample.shape
    if d <= dims:
        return None
    _, s, vt = randomized_svd(sample.astype(np.float64), min(dims, n), random_state=seed)
    kept = min(1.0, float((s**2).sum() / max((sample.astype(np.float64) ** 2).sum(), 1e-30)))  # 1 + rounding
    return {"components": vt.astype(np.float32), "variance kept": kept}


def neighbours_kept(sample: np.ndarray, projection: dict, queries: int = 500, k: int = 10) -> float:
    """How many of a sampled embedding's k nearest others in the sample the projection keeps, on average."""
    k = min(k, len(sample) - 1)
    if k < 1:
        return float("nan")
    rows = topk.sample(len(sample), queries, 0)
    small = store.project(sample, projection)

    def hide_self(chunk, scores):
        scores[np.arange(chunk.stop - chunk.start), rows[chunk]] = -np.inf

    full = topk.top_k(sample[rows], sample, k, mask=hide_self)[0]
    near = topk.top_k(small[rows], small, k, mask=hide_self)[0]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(full, near)]))


def check_recall(report: dict, cfg: IndexConfig) -> None:
    """RuntimeError if build_index's index finds fewer of the exact neighbours than index.min_recall."""
    [(name, recall)] = [(key, v) for key, v in report.items() if key.startswith("recall@")]
    if recall < cfg.min_recall:
        settings = {key: v for key, v in report["settings"].items() if "tried" not in key}
        raise RuntimeError(
            f"ScaNN {name} {recall:.3f} is below index.min_recall {cfg.min_recall}: with " + json.dumps(settings)
        )
