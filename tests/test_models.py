"""MF, CNN and the retrieval metrics on small data with planted structure."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from collabfeat import feature_model
from collabfeat import images as images_lib
from collabfeat.config import CNNConfig, MFConfig
from serving import store
from tests import fresh
from trainer import cnn, mf
from trainer.evaluate import retrieval_metrics


def planted(n_users=400, n_items=240, groups=4, per_user=12, seed=0):
    rng = np.random.default_rng(seed)
    ug, ig = rng.integers(groups, size=n_users), np.arange(n_items) % groups
    pairs = set()
    for u in range(n_users):
        own = np.flatnonzero(ig == ug[u])
        for i in rng.choice(own, per_user, replace=False):
            pairs.add((u, int(i)))
    pairs = np.array(sorted(pairs))
    return pairs, ug, ig


@pytest.mark.parametrize("objective,solver", [("mse", "als"), ("mse", "adam"), ("softmax", "adam")])
def test_mf_recovers_planted_groups(objective, solver):
    pairs, _, item_groups = planted()
    rng = np.random.default_rng(1)
    held = rng.random(len(pairs)) < 0.1
    tr = pairs[~held]
    cfg = MFConfig(objective=objective, solver=solver, dim=8, epochs=15, batch_size=256)
    f = mf.train(tr[:, 0], tr[:, 1], np.ones(len(tr), np.float32), 400, 240, cfg)
    assert f.losses[-1] < f.losses[0]
    # Item factors' neighbours share the planted group (chance 0.25).
    assert mf.neighbour_agreement(f.items, item_groups, 10) > 0.9
    popularity = mf.popularity(tr[:, 1], 400, 240)
    assert mf.recall_at_k(f, tr, pairs[held], 20) > 2 * mf.recall_at_k(popularity, tr, pairs[held], 20)


def _normal_equations(x, y, pairs, conf, reg):
    """Each row of x solved exactly from y: (Y'C_uY + reg I) x_u = Y'C_u p_u, with dense numpy."""
    c = np.ones((len(x), len(y)))
    p = np.zeros((len(x), len(y)))
    c[pairs[:, 0], pairs[:, 1]] = conf
    p[pairs[:, 0], pairs[:, 1]] = 1.0
    return np.stack(
        [
            np.linalg.solve(y.T @ (c[u, :, None] * y) + reg * np.eye(y.shape[1]), y.T @ (c[u] * p[u]))
            for u in range(len(x))
        ]
    )


def _als(pairs, rating, n_users, n_items, cfg, bucket_pairs=0, directory=""):
    import tensorflow as tf

    model = mf.MatrixFactorization(n_users, n_items, cfg)
    model.users(tf.zeros([1], tf.int64)), model.items(tf.zeros([1], tf.int64))
    by_user = mf.PairBuckets(np.bincount(pairs[:, 0], minlength=n_users), bucket_pairs, directory and f"{directory}/u")
    by_item = mf.PairBuckets(np.bincount(pairs[:, 1], minlength=n_items), bucket_pairs, directory and f"{directory}/i")
    conf = mf.confidence(rating, cfg)
    for part in np.array_split(np.random.default_rng(0).permutation(len(pairs)), 3):  # any order, in parts
        by_user.add(pairs[part, 0], pairs[part, 1], conf[part])
        by_item.add(pairs[part, 1], pairs[part, 0], conf[part])
    return model, mf.WeightedALS(model, by_user, by_item, cfg)


def _small_matrix(seed=3):
    rng = np.random.default_rng(seed)
    pairs = np.array(sorted({(int(u), int(i)) for u, i in zip(rng.integers(0, 27, 150), rng.integers(0, 20, 150))}))
    return pairs, rng.random(len(pairs)).astype(np.float32)


@pytest.mark.parametrize("twice", [False, True])
def test_pair_buckets_sort_by_row_then_column_and_keep_a_pair_given_twice(twice):
    """The buckets' pairs come out sorted by row, then column, with each row's range in indptr, as a
    lexsort of the triples gives them; a pair given twice stays two pairs (not summed)."""
    rng = np.random.default_rng(5)
    rows, cols = rng.integers(0, 50, 2000), rng.integers(0, 300, 2000)
    keep = np.unique(rows * 300 + cols, return_index=True)[1]
    rows, cols = rows[keep], cols[keep]
    if twice:
        rows, cols = np.r_[rows, rows[:7]], np.r_[cols, cols[:7]]
    conf = rng.random(len(rows)).astype(np.float32)
    side = mf.PairBuckets(np.bincount(rows, minlength=60))  # rows 50-59 have no pairs
    side.add(rows, cols, conf)
    [(lo, hi, c, w, indptr)] = side.buckets()
    order = np.lexsort((np.arange(len(rows)), cols, rows))
    assert (lo, hi) == (0, 60) and len(c) == len(rows)
    np.testing.assert_array_equal(np.repeat(np.arange(60), np.diff(indptr)), rows[order])
    np.testing.assert_array_equal(c, cols[order])
    np.testing.assert_array_equal(np.sort(w), np.sort(conf))  # a duplicate's two confidences may swap
    if not twice:
        np.testing.assert_array_equal(w, conf[order])
    np.testing.assert_array_equal(indptr, np.searchsorted(rows[order], np.arange(61)))


@pytest.mark.parametrize("workers,bucket_pairs", [(1, 0), (3, 0), (2, 30)])
def test_als_half_sweep_solves_the_normal_equations(workers, bucket_pairs, tmp_path):
    """With as many conjugate-gradient steps as dimensions, a half sweep is the exact weighted
    least-squares solution, checked against dense numpy: from memory and from buckets of 30 pairs
    on disk, the rows shared among 1 to 3 threads in ranges of a few pairs (a row with more pairs is
    a range of its own). Users 27-29 have no pairs."""
    n_users, n_items, dim = 30, 20, 4
    pairs, rating = _small_matrix()
    for side in "ui":
        (tmp_path / side).mkdir()
    cfg = MFConfig(dim=dim, alpha=5.0, l2=0.3, cg_steps=2 * dim)
    model, als = _als(pairs, rating, n_users, n_items, cfg, bucket_pairs, str(tmp_path) if bucket_pairs else "")
    als.workers = workers
    x, y = als.x, als.y  # the model's tables, solved in place
    expected = _normal_equations(x.copy(), y.astype(np.float64), pairs, 1 + cfg.alpha * rating, cfg.l2)
    als._half(x, y, als.user_side)
    np.testing.assert_allclose(x, expected, atol=2e-4)
    if bucket_pairs:  # buckets of consecutive rows with at most 30 pairs, rows with more alone
        b, ends = als.user_side.bounds, np.concatenate([[0], np.cumsum(np.bincount(pairs[:, 0], minlength=30))])
        sizes = ends[b[1:]] - ends[b[:-1]]
        assert len(b) > 3 and b[0] == 0 and b[-1] == 30 and all((sizes <= 30) | (np.diff(b) == 1))
        assert len(list((tmp_path / "u").glob("bucket-*-cols.npy"))) == len(b) - 1
    # The reported objective is the dense weighted loss over every (user, item), per observed pair.
    xv, yv = x.astype(np.float64), y.astype(np.float64)
    c, p = np.ones((n_users, n_items)), np.zeros((n_users, n_items))
    c[pairs[:, 0], pairs[:, 1]], p[pairs[:, 0], pairs[:, 1]] = 1 + cfg.alpha * rating, 1.0
    dense = ((c * (p - xv @ yv.T) ** 2).sum() + cfg.l2 * ((xv**2).sum() + (yv**2).sum())) / len(pairs)
    assert als.objective() == pytest.approx(dense, rel=1e-4)
    # A sweep's objective is summed while the items are solved: the same as the pass of its own, and
    # the dense loss, at the sweep's factors.
    loss = als.sweep()
    als.save()
    xv, yv = model.users.embeddings.numpy().astype(np.float64), model.items.embeddings.numpy().astype(np.float64)
    dense = ((c * (p - xv @ yv.T) ** 2).sum() + cfg.l2 * ((xv**2).sum() + (yv**2).sum())) / len(pairs)
    assert loss == pytest.approx(als.objective(), rel=1e-5) and loss == pytest.approx(dense, rel=1e-4)


def test_als_from_buckets_on_disk_equals_als_in_memory(tmp_path):
    """The same sweeps from row buckets of at most 40 pairs on disk as from memory: the same factors."""
    pairs, rating = _small_matrix(seed=5)
    for side in "ui":
        (tmp_path / side).mkdir()
    cfg = MFConfig(dim=4)
    results = []
    for bucket_pairs, directory in ((0, ""), (40, str(tmp_path))):
        model, als = _als(pairs, rating, 30, 20, cfg, bucket_pairs, directory)
        losses = [als.sweep() for _ in range(3)]
        results.append((als.x, als.y, losses))
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-5)
    np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-5)
    np.testing.assert_allclose(results[0][2], results[1][2], rtol=1e-5)
    assert results[0][2][-1] < results[0][2][0]


def test_als_names_a_pair_whose_column_is_outside_the_factors():
    """The kernel reads factors unchecked: a pair pointing past the other side's table is refused
    with a named error before any row is solved, never read out of bounds."""
    pairs, rating = _small_matrix()
    cfg = MFConfig(dim=4)
    _, als = _als(pairs, rating, 30, 20, cfg)
    before = als.x.copy()
    with pytest.raises(ValueError, match="column is outside the 19 rows"):
        als._half(als.x, als.y[:19], als.user_side)
    np.testing.assert_array_equal(als.x, before)


ALS_PEAK = """
import os, resource, sys, tempfile
sys.path.insert(0, {repo!r})
import numpy as np
from collabfeat.config import MFConfig
from trainer import mf
n, n_users, n_items, cfg = {n}, 50_000, 5_000, MFConfig(epochs=1, bucket_pairs=1 << 17)

def part(k):    # a quarter of the pairs on item 0 (a popular item: one row with n / 4 pairs)
    g = np.random.default_rng(k)
    items = np.where(g.random(n // 20) < 0.25, 0, g.integers(0, n_items, n // 20)).astype(np.int32)
    return g.integers(0, n_users, n // 20).astype(np.int32), items, mf.confidence(g.random(n // 20), cfg)

with tempfile.TemporaryDirectory() as tmp:
    uc, ic = np.zeros(n_users, np.int64), np.zeros(n_items, np.int64)
    for k in range(20):
        u, i, c = part(k)
        uc += np.bincount(u, minlength=n_users)
        ic += np.bincount(i, minlength=n_items)
    sides = [mf.PairBuckets(counts, cfg.bucket_pairs, os.path.join(tmp, name))
             for counts, name in ((uc, "u"), (ic, "i"))]
    for side in sides:
        os.makedirs(side.directory)
    for k in range(20):    # streamed in, as MFTrainer does from the TFRecords
        u, i, c = part(k)
        sides[0].add(u, i, c)
        sides[1].add(i, u, c)
    before = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    mf.fit_als(*sides, cfg)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
"""


@pytest.mark.slow
def test_als_memory_does_not_grow_with_the_pairs():
    """What one ALS sweep adds to the process's memory (peak RSS over the RSS before it, in a fresh
    interpreter) at 400,000 and 3,200,000 train pairs in row buckets of 2^17 pairs, with the same
    factor tables, a quarter of the pairs on one item (a row of n / 4 pairs, far beyond a bucket).
    The big run may add the popular item's bucket (12 bytes a pair), nothing per pair beyond.
    Measured with the per-row kernel: +93 and +106 MB; with the TF ops it replaced, which summed
    the popular row a chunk at a time: +108 and +102 MB; before that (the row and the objective
    gathered at once): +127 and +299 MB."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    grown = []
    for n in (400_000, 3_200_000):
        grown.append(fresh.last_number(ALS_PEAK.format(repo=repo, n=n)) / 2**20)
    assert grown[1] < grown[0] + 60, grown


def test_als_on_movielens_beats_popularity():
    """Real interactions (MovieLens from Debian's r-cran-dslabs): ALS's recall@20 on held-out
    ratings is well above popularity's, and its objective falls every sweep."""
    from collabfeat import movielens

    u, i, w, n_users, n_items, genres = movielens.interactions()
    assert (len(u), n_users, n_items) == (100004, 671, 9066)
    held = np.random.default_rng(0).random(len(u)) < 0.1
    tr, ev = np.c_[u[~held], i[~held]], np.c_[u[held], i[held]]
    f = mf.train(u[~held], i[~held], (w / w.max())[~held], n_users, n_items, MFConfig(epochs=8))
    assert all(b <= a + 1e-6 for a, b in zip(f.losses, f.losses[1:]))
    ours, popular = mf.recall_at_k(f, tr, ev, 20), mf.recall_at_k(mf.popularity(tr[:, 1], n_users, n_items), tr, ev, 20)
    assert ours > 1.4 * popular, (ours, popular)


def test_recall_at_k_against_a_hand_computation():
    f = mf.Factors(
        users=np.array([[1.0, 0.0], [0.0, 1.0]]),
        items=np.array([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
        losses=[],
    )
    train = np.array([[0, 0]])  # user 0 saw item 0: excluded from its ranking
    held = np.array([[0, 2], [0, 3], [1, 3]])  # user 0's top-1 is item 1: 0 hits; top-2 {1, 2}: 1 hit
    assert mf.recall_at_k(f, train, held, 1) == pytest.approx((0 / 1 + 1 / 1) / 2)
    assert mf.recall_at_k(f, train, held, 2) == pytest.approx((1 / 2 + 1 / 1) / 2)


def test_popularity_recall_equals_ranking_everyone_by_popularity_factors():
    """The one-ranking shortcut against recall_at_k of popularity factors (top_k over every item), on
    counts with many ties (ties: the lower item first in both) and users who saw the most popular items."""
    rng = np.random.default_rng(5)
    n_users, n_items = 300, 90
    counts = rng.integers(0, 6, n_items)  # about 15 items a count
    train = np.unique(
        np.c_[rng.integers(0, n_users, 3000), rng.choice(n_items, 3000, p=np.r_[[0.05] * 10, [0.5 / 80] * 80])], axis=0
    )
    held = np.unique(np.c_[rng.integers(0, n_users, 600), rng.integers(0, n_items, 600)], axis=0)
    held = held[~(held[:, None] == train[None]).all(-1).any(1)]
    for k in (1, 5, 20):
        fast = mf.popularity_recall_at_k(counts, train, held, k)
        full = mf.recall_at_k(mf.popularity_from_counts(counts, n_users), train, held, k)
        assert fast == pytest.approx(full, abs=1e-12), k
    assert np.isnan(mf.popularity_recall_at_k(counts, train, held[:0], 5))


def test_a_set_with_more_dims_than_the_explorer_keeps_is_projected_onto_its_top_singular_vectors():
    """Unit embeddings in 40 dims that lie in 6 (plus a little noise): projected onto 6 they keep
    nearly all their squared norm and their nearest neighbours, onto 2 much less; a set of no more
    dims than asked is left as it is."""
    from serving import store
    from serving.build import index

    rng = np.random.default_rng(6)
    x = rng.normal(size=(2000, 6)) @ rng.normal(size=(6, 40)) + 0.01 * rng.normal(size=(2000, 40))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    six, two = index.reduction(x, 6), index.reduction(x, 2)
    assert six["components"].shape == (6, 40) and six["variance kept"] > 0.999 > 0.9 > two["variance kept"]
    y = store.project(x, six)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(y[:50] @ y[:50].T, x[:50] @ x[:50].T, atol=0.01)
    assert index.neighbours_kept(x, six) > 0.95 > index.neighbours_kept(x, two)
    assert index.reduction(x, 40) is None and index.reduction(x, 64) is None


def stripes(n=96, size=16, seed=0):
    """Two kinds of image: a bright vertical or a bright horizontal stripe, at random places."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 40, size=(n, size, size, 3)).astype(np.uint8)
    kind = np.arange(n) % 2
    for j in range(n):
        p = rng.integers(2, size - 4)
        if kind[j]:
            x[j, :, p : p + 3] = 250
        else:
            x[j, p : p + 3, :] = 250
    return x, kind


def test_cnn_regression_learns_and_embeds_normalised():
    x, kind = stripes()
    targets = np.where(kind[:, None] == 1, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]).astype(np.float32)
    cfg = CNNConfig(image_size=16, widths=[8, 16], embedding_dim=12, epochs=10, batch_size=16, augment=False)
    net, losses = cnn.train_regression(cnn.pairs(x, targets), cfg)
    assert losses[-1] < losses[0] - 0.2  # cosine loss runs from about 0 towards -1
    emb = cnn.embed(net, x)
    assert emb.shape == (len(x), 12)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert retrieval_metrics(emb, kind, 5)["precision@5"] > 0.9


def test_an_epoch_is_bounded_by_epoch_images_and_streams_over_all_images(monkeypatch):
    """A catalogue larger than cnn.epoch_images: each epoch takes ceil(epoch_images / batch) steps
    from one stream over the data repeated, so later epochs see the images earlier ones did not."""
    import tensorflow as tf

    x, kind = stripes(n=40)
    seen, steps = [], []

    class Count(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            steps.append(0)

        def on_train_batch_end(self, batch, logs=None):
            steps[-1] += 1

    fit = tf.keras.Model.fit
    monkeypatch.setattr(
        tf.keras.Model,
        "fit",
        lambda self, *a, **k: fit(self, *a, **{**k, "callbacks": k.get("callbacks", []) + [Count()]}),
    )
    ids = tf.data.Dataset.range(40).map(lambda i: (tf.gather(x, i), i))
    cfg = CNNConfig(
        image_size=16,
        widths=[4],
        embedding_dim=4,
        epochs=4,
        batch_size=4,
        augment=False,
        epoch_images=10,
        shuffle_buffer=8,
    )
    net, losses = cnn.train_classifier(ids.map(lambda img, i: (img, i % 2)), 2, cfg)  # size known: 40
    assert steps == [3, 3, 3, 3] and len(losses) == 4  # ceil(10 / 4) steps, 4 epochs
    # Without a known size (a filtered stream), an epoch is the whole stream: 40 / 4 steps.
    steps.clear()
    cnn.train_classifier(
        ids.filter(lambda img, i: True).map(lambda img, i: (img, i % 2)), 2, CNNConfig(**{**cfg.__dict__, "epochs": 2})
    )
    assert steps == [10, 10]

    # The epochs continue one stream: 4 epochs x 12 images reach all 40 (restarting every epoch,
    # a shuffle buffer of 8 would keep drawing from the first 20 or so).
    def record(i):
        seen.append(int(i))
        return i % 2

    def tracked(img, i):
        label = tf.py_function(record, [i], tf.int64)
        label.set_shape([])
        return img, label

    cnn.train_classifier(ids.map(tracked).apply(tf.data.experimental.assert_cardinality(40)), 2, cfg)
    assert set(seen) == set(range(40))


def test_pseudo_classes_recover_separated_factors():
    rng = np.random.default_rng(0)
    centres = np.eye(4) * 5
    groups = np.repeat(np.arange(4), 30)
    factors = centres[groups] + rng.normal(0, 0.3, (120, 4))
    pc = cnn.pseudo_classes(factors, 4, seed=0)
    # The same partition up to renaming.
    assert all(len(set(pc[groups == g])) == 1 for g in range(4)) and len(set(pc)) == 4


def test_retrieval_metrics_against_a_hand_computation():
    # On a circle: a=0deg, b=10deg, c=100deg, d=180deg; labels a,c = 0 and b,d = 1.
    ang = np.radians([0, 10, 100, 180])
    feats = np.c_[np.cos(ang), np.sin(ang)]
    labels = np.array([0, 1, 0, 1])
    # Cosines give the rankings  a: b,c,d   b: a,c,d   c: d,b,a   d: c,b,a
    # precision@1: a->b, b->a, c->d, d->c are all of the other label = 0
    # AP: a: its relevant c at rank 2 -> 1/2;  b: d at rank 3 -> 1/3;  c: a at rank 3 -> 1/3;  d: b at rank 2 -> 1/2
    # precision@2: a {b,c} 1;  b {a,c} 0;  c {d,b} 0;  d {c,b} 1  -> 2/8
    m = retrieval_metrics(feats, labels, 1)
    assert m["precision@1"] == 0.0
    assert m["mAP"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 3 + 1 / 2) / 4)
    assert retrieval_metrics(feats, labels, 2)["precision@2"] == pytest.approx(2 / 8)


def test_the_blessing_measure_is_the_mean_over_the_facets_or_one_of_them():
    from trainer.evaluate import describe, overall

    tables = {
        "category": {
            "regression": {"p": 0.5, "mAP": 0.2},
            "random": {"p": 0.52, "mAP": 0.3},
            "pixels": {"p": 0.6, "mAP": 0.3},
        },
        "style": {"regression": {"p": 0.9, "mAP": 0.8}, "random": {"p": 0.7, "mAP": 0.5}},
        "transfer": {"regression": {"p": 0.2, "mAP": 0.1}, "random": {"p": 0.3, "mAP": 0.1}},
    }
    mean = overall(tables)
    assert set(mean) == {"random", "regression"}  # pixels is not on every facet
    assert mean["regression"] == pytest.approx({"p": 1.6 / 3, "mAP": 1.1 / 3})
    assert mean["random"] == pytest.approx({"p": 1.52 / 3, "mAP": 0.9 / 3})
    assert overall(tables, "style") is tables["style"]
    with pytest.raises(ValueError, match="eval.bless_on is 'colour'.*'category', 'style', 'transfer'"):
        overall(tables, "colour")
    assert describe({"category": 2000, "style": 2000}) == "the mean over category (2000 images), style (2000 images)"
    assert describe({"category": 2000, "style": 2000}, "style") == "style, 2000 images"


def test_the_served_features_are_the_best_collaborative_ones_or_the_named_ones():
    from trainer.evaluate import choose

    table = {
        "regression": {"p": 0.60},
        "imagenet_regression": {"p": 0.64},
        "supervised": {"p": 0.9},
        "random": {"p": 0.5},
    }
    assert choose(table, "p", "best", "regression") == "imagenet_regression"  # never a baseline, however good
    assert choose({**table, "imagenet_regression": {"p": 0.60}}, "p", "best", "regression") == "regression"  # a tie
    assert (
        choose({k: v for k, v in table.items() if k != "imagenet_regression"}, "p", "best", "regression")
        == "regression"
    )
    assert choose(table, "p", "regression", "regression") == "regression"
    with pytest.raises(ValueError, match="eval.serve is 'pseudo_class'.*'imagenet_regression'"):
        choose(table, "p", "pseudo_class", "regression")


@pytest.mark.slow
def test_fine_tuning_settles_the_head_on_the_frozen_network_then_trains_all_and_distillation_holds_it():
    """finetune_regression on a small "pretrained" network: the warm-up changes only the new
    layers; the fine-tuning then moves the pretrained ones too; with a heavy distillation weight,
    the pooled features stay closer to the frozen teacher's than without it."""
    from collabfeat.config import FinetuneConfig

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (128, 16, 16, 3), dtype=np.uint8)
    y = rng.normal(size=(128, 6)).astype(np.float32)
    cfg = CNNConfig(image_size=16, widths=[8, 16], embedding_dim=8, batch_size=32, shuffle_buffer=128, augment=False)

    def build():
        tf.keras.utils.set_random_seed(1)
        pre = cnn.pooled(cnn.backbone(cfg))  # the "pretrained" network: image -> pooled features,
        cnn.recalibrate(pre, tf.data.Dataset.from_tensor_slices(x), 32)  # its statistics those of these images
        inputs = tf.keras.Input((16, 16, 3))
        net = tf.keras.Model(inputs, tf.keras.layers.Dense(8, name=cnn.EMBEDDING)(pre(inputs)))
        return net, pre

    def train(tune, teacher=False):
        net, pre = build()
        before = [w.copy() for w in pre.get_weights()]
        head = net.get_layer(cnn.EMBEDDING).get_weights()[0].copy()
        t = None
        if teacher:
            t = build()[1]
            t.set_weights(before)
        net, losses = cnn.finetune_regression(cnn.pairs(x, y), cfg, tune, net, pre, t)
        if t is not None:  # the teacher stays frozen
            assert all(np.array_equal(a, b) for a, b in zip(t.get_weights(), before))
        moved = max(
            float(np.abs(a - b).max())
            for a, b in zip(pre.get_weights(), before)
            if a.shape == b.shape and a.dtype.kind == "f" and a.ndim > 1
        )  # kernels, not BN statistics
        assert not np.array_equal(net.get_layer(cnn.EMBEDDING).get_weights()[0], head)
        frozen = build()[1]
        frozen.set_weights(before)
        agree = np.mean(
            np.sum(cnn.unit(cnn.pooled(net).predict(x, verbose=0)) * cnn.unit(frozen.predict(x, verbose=0)), 1)
        )
        return losses, moved, agree

    losses, moved, _ = train(FinetuneConfig(warmup_epochs=2, epochs=0, head_learning_rate=1e-2))
    assert len(losses) == 2 and moved == 0.0
    losses, moved, free = train(FinetuneConfig(warmup_epochs=1, epochs=4, learning_rate=1e-2, head_learning_rate=1e-2))
    assert len(losses) == 5 and moved > 1e-3
    _, _, held = train(
        FinetuneConfig(warmup_epochs=1, epochs=4, learning_rate=1e-2, head_learning_rate=1e-2, distill=50.0),
        teacher=True,
    )
    assert held > free + 0.01, (held, free)


def test_blessing_needs_a_margin_over_random_and_pixels():
    from trainer.evaluate import bless

    table = {"regression": {"p": 0.75}, "random": {"p": 0.70}, "pixels": {"p": 0.72}, "supervised": {"p": 0.9}}
    assert bless(table, "regression", "p", 0.02) == (
        True,
        {"random": pytest.approx(0.05), "pixels": pytest.approx(0.03)},
    )
    assert bless(table, "regression", "p", 0.04)[0] is False
    assert bless({k: v for k, v in table.items() if k != "pixels"}, "regression", "p", 0.0)[0] is False


def test_scann_index_loads_from_a_copy_after_the_original_is_gone(tmp_path):
    import shutil

    from collabfeat.config import IndexConfig
    from serving.build import index

    rng = np.random.default_rng(0)
    for n in (300, 2500):  # brute force, and tree + AH
        centres = rng.normal(size=(20, 16))  # clustered, like real embeddings
        emb = cnn.unit((centres[rng.integers(20, size=n)] + 0.5 * rng.normal(size=(n, 16))).astype(np.float32))
        src, dst = tmp_path / f"src{n}", tmp_path / f"dst{n}"
        store.save_index(
            *index.build(emb, IndexConfig(kind="auto" if n < 2000 else "tree_ah")),
            [f"i{j}" for j in range(n)],
            emb,
            str(src),
        )
        before, _ = store.search(store.load_index(str(src)), emb[:50], 10)
        shutil.copytree(src, dst)
        shutil.rmtree(src)
        rows, _ = store.search(store.load_index(str(dst)), emb[:50], 10)
        np.testing.assert_array_equal(np.asarray(rows), np.asarray(before))
        # The tuned settings reach index.min_recall on the tuning queries; these 50 are others, and
        # which setting is fastest varies with the machine's load, so allow some slack here.
        exact, _ = index.exact_top_k(emb, emb[:50], 10)
        recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(np.asarray(rows).tolist(), exact.tolist())])
        assert recall >= 0.9, (n, recall)


@pytest.mark.slow
def test_index_search_settings_are_tuned_to_the_required_recall(tmp_path):
    """A tree over 20k clustered vectors: the tuned knobs reach index.min_recall on queries they were
    not tuned on, a higher requirement searches more, settings given in the config are kept, and the
    saved index is searched with the chosen settings."""
    from collabfeat.config import IndexConfig
    from serving.build import index

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(200, 32))
    emb = cnn.unit((centres[rng.integers(200, size=20000)] + 0.7 * rng.normal(size=(20000, 32))).astype(np.float32))
    tune, held = emb[:1000], emb[1000:1500]
    exact, _ = index.exact_top_k(emb, held, 10)
    chosen = {}
    for need in (0.8, 0.97):
        searcher, settings = index.build(emb, IndexConfig(kind="tree_ah", min_recall=need), tune)
        assert settings["kind"] == "tree_ah" and settings["tuning_recall"] >= need + index.TUNING_MARGIN
        assert settings["why"] and len(settings["tried"]) > 1
        rows, _ = store.search({"searcher": searcher, "meta": settings}, held, 10)
        assert index.recall(rows, exact, 10) >= need - 0.01, (need, settings)
        chosen[need] = settings
    cost = lambda s: (s["leaves_to_search"], s["reorder"])
    assert cost(chosen[0.97]) > cost(chosen[0.8]) or chosen[0.97]["reorder"] > chosen[0.8]["reorder"]
    # Both knobs given: used as given, not tuned.
    _, fixed = index.build(emb, IndexConfig(kind="tree_ah", leaves_to_search=3, reorder=30), tune)
    assert (fixed["leaves_to_search"], fixed["reorder"], len(fixed["tried"])) == (3, 30, 1)
    # Saved and loaded: searched with the chosen settings.
    store.save_index(searcher, settings, [str(i) for i in range(len(emb))], emb, str(tmp_path))
    idx = store.load_index(str(tmp_path))
    assert idx["meta"]["leaves_to_search"] == settings["leaves_to_search"]
    assert (store.search(idx, held, 10)[0] == rows).all()
    # Small catalogues are searched exactly.
    _, small = index.build(emb[:500], IndexConfig())
    assert small["kind"] == "brute_force" and small["tuning_recall"] == 1.0


@pytest.mark.slow
def test_every_index_configuration_reaches_the_recall_and_auto_takes_the_fastest(tmp_path):
    """int8 brute force and AH over every item (each with exact re-scoring), and the trees, each built
    by index.kind: tuned to the recall, saved, loaded and searched with their settings. "auto" tries
    both trees and keeps the fastest that reaches the recall."""
    from collabfeat.config import IndexConfig
    from serving.build import index

    rng = np.random.default_rng(2)
    centres = rng.normal(size=(100, 32))
    emb = cnn.unit((centres[rng.integers(100, size=8000)] + 0.7 * rng.normal(size=(8000, 32))).astype(np.float32))
    tune, held = emb[:1000], emb[1000:1300]
    exact, _ = index.exact_top_k(emb, held, 10)
    for kind in ("int8", "ah", "tree_bf", "tree_ah"):
        searcher, settings = index.build(emb, IndexConfig(kind=kind, min_recall=0.9), tune)
        assert settings["kind"] == kind and settings["tuning_recall"] >= 0.9 + index.TUNING_MARGIN, settings
        store.save_index(searcher, settings, [str(i) for i in range(len(emb))], emb, str(tmp_path / kind))
        rows, _ = store.search(store.load_index(str(tmp_path / kind)), held, 10)
        assert index.recall(rows, exact, 10) >= 0.88, (kind, settings)
    _, auto = index.build(emb, IndexConfig(min_recall=0.9), tune)
    assert {t["kind"] for t in auto["tried"]} == {"tree_bf", "tree_ah"}
    # Both trees, of about sqrt(n) and 2 sqrt(n) leaves (89 and 178 over 8,000 items).
    assert {t["leaves"] for t in auto["tried"] if "leaves" in t} == {89, 178}, auto["tried"]
    reached = [t for t in auto["tried"] if t["tuning_recall"] >= 0.9 + index.TUNING_MARGIN]
    fastest = min(t["ms_per_query"] for t in reached)
    assert auto["ms_per_query"] == fastest or auto["kind"] == "brute_force", auto["why"]


def test_chunked_top_k_equals_the_exact_answer_for_any_chunk_size():
    from collabfeat import topk

    rng = np.random.default_rng(0)
    db, queries = rng.normal(size=(500, 8)).astype(np.float32), rng.normal(size=(70, 8)).astype(np.float32)
    scores = queries @ db.T
    exact = np.argsort(-scores, axis=1, kind="stable")[:, :7]
    for budget in (1, 499, 500 * 3 + 1, 1 << 25):  # one query per chunk ... all at once
        rows, best = topk.top_k(queries, db, 7, budget=budget)
        assert (rows == exact).all(), budget
        np.testing.assert_allclose(best, np.take_along_axis(scores, exact, axis=1), rtol=1e-6)

    # A mask hides entries of each chunk: here every query's first exact answer.
    def hide(chunk, block):
        block[np.arange(chunk.stop - chunk.start), exact[chunk, 0]] = -np.inf

    rows, _ = topk.top_k(queries, db, 6, mask=hide, budget=600)
    assert (rows == exact[:, 1:7]).all()
    # Equal scores: the lower row first (rows 3 and 7 tie, and rows 1 and 5, above the rest).
    tied = np.zeros((9, 1), np.float32)
    tied[[3, 7]], tied[[1, 5]] = 2.0, 1.0
    assert topk.top_k(np.ones((1, 1), np.float32), tied, 4)[0].tolist() == [[3, 7, 1, 5]]
    assert [len(range(*s.indices(70))) for s in topk.row_chunks(70, 500, 600)] == [1] * 70
    assert list(topk.sample(10, 20, 0)) == list(range(10))
    assert len(set(topk.sample(1000, 20, 0))) == 20 and (topk.sample(1000, 20, 0) == topk.sample(1000, 20, 0)).all()


def test_sampled_chunked_metrics_match_the_full_computation():
    """The bounded forms agree with a direct all-against-all computation, and a sample of queries
    is a subset of the full per-query results."""
    from collabfeat import topk

    rng = np.random.default_rng(2)
    feats = cnn.unit(rng.normal(size=(300, 6)))
    labels = rng.integers(4, size=300)
    sims = feats @ feats.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :299]
    relevant = labels[order] == labels[:, None]
    ap = np.array([(rel * np.cumsum(rel) / np.arange(1, 300)).sum() / max(rel.sum(), 1) for rel in relevant])
    full = retrieval_metrics(feats, labels, 10)
    assert full["precision@10"] == pytest.approx(relevant[:, :10].mean())
    assert full["mAP"] == pytest.approx(ap.mean())
    q = topk.sample(300, 50, 4)
    sampled = retrieval_metrics(feats, labels, 10, max_queries=50, seed=4)
    assert sampled["precision@10"] == pytest.approx(relevant[q, :10].mean())
    assert sampled["mAP"] == pytest.approx(ap[q].mean())
    top10 = order[:, :10]
    assert mf.neighbour_agreement(feats, labels, 10) == pytest.approx((labels[top10] == labels[:, None]).mean())
    assert mf.neighbour_agreement(feats, labels, 10, max_queries=50, seed=4) == pytest.approx(
        (labels[top10[q]] == labels[q][:, None]).mean()
    )


def test_feature_sets_stream_to_a_valid_npy(tmp_path):

    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, 5)).astype(np.float32) for n in (3, 0, 7, 1)]
    store.write_feature_set(str(tmp_path), "x", iter(parts))
    got = np.load(tmp_path / "features" / "x" / "embeddings.npy")
    np.testing.assert_array_equal(got, np.concatenate(parts))
    assert sorted(os.listdir(tmp_path / "features" / "x")) == ["embeddings.npy"]


def test_als_runs_unchanged_inside_a_distribution_strategy():
    """The TFRS model's tables are created in the strategy's scope (mirrored variables) and the
    sweeps update them: the same factors as without a strategy. (One replica: the sweep itself
    is not sharded across workers.)"""
    import tensorflow as tf

    pairs, rating = _small_matrix(seed=7)
    cfg = MFConfig(dim=4, epochs=3)
    plain = mf.train(pairs[:, 0], pairs[:, 1], rating, 30, 20, cfg)
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        mirrored = mf.train(pairs[:, 0], pairs[:, 1], rating, 30, 20, cfg)
    np.testing.assert_allclose(plain.users, mirrored.users, atol=1e-6)
    np.testing.assert_allclose(plain.losses, mirrored.losses, rtol=1e-6)


def _catalogue_artifact(path, labels):
    """An images Examples artifact with a catalogue split of Fashion-MNIST photos, as ImageImport writes it."""
    from tfx.types import standard_artifacts

    from tests.serving_fixtures import catalogue

    ids, blobs, _ = catalogue(len(labels))
    os.makedirs(path / "Split-catalogue")
    with tf.io.TFRecordWriter(str(path / "Split-catalogue" / "data.gz"), "GZIP") as w:
        for i, b, label in zip(ids, blobs, labels):
            w.write(
                tf.train.Example(
                    features=tf.train.Features(
                        feature={
                            "item_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[i.encode()])),
                            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b])),
                            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                        }
                    )
                ).SerializeToString()
            )
    images = standard_artifacts.Examples()
    images.uri, images.split_names = str(path), '["catalogue"]'
    return images, blobs


@pytest.mark.slow
def test_a_feature_trainer_makes_a_feature_model_or_says_why_not(tmp_path):
    """FeatureTrainer's function on a catalogue without labels: raw pixels become a feature model
    whose signature gives the pixels' features; a supervised model cannot be trained, and says why;
    a collaborative one without the MF model is refused by name."""
    from tfx.types import standard_artifacts

    from collabfeat import config as config_lib
    from pipeline import components as c
    from trainer import features

    train = c.FeatureTrainer.EXECUTOR_SPEC.executor_class._FUNCTION
    images, blobs = _catalogue_artifact(tmp_path / "images", [-1] * 40)

    def run(kind, **inputs):
        model = standard_artifacts.Model()
        model.uri = str(tmp_path / kind)
        os.makedirs(model.uri)
        cfg = config_lib.load(
            overrides=[
                "cnn.image_size=28",
                "cnn.widths=[8]",
                "cnn.embedding_dim=8",
                "eval.baseline_epochs=1",
                "finetune.size=32",
                "finetune.epochs=1",
                "finetune.warmup_epochs=0",
            ]
        )
        train(
            images=images,
            model=model,
            kind=kind,
            code="",
            settings_json=config_lib.settings_for(cfg, config_lib.feature_node(kind)),
            **inputs,
        )
        return model, json.load(open(os.path.join(model.uri, "report.json")))

    with pytest.MonkeyPatch.context() as patch:  # a kind that trains nothing never reads the catalogue
        patch.setattr(
            features, "TrainingSet", lambda *a, **k: pytest.fail("FeatureTrainer read the catalogue for pixels")
        )
        model, report = run("pixels")
    assert report == {"kind": "pixels", "trained": True, "losses": [], "images": 0}
    x = np.stack([images_lib.decode(b, 28) for b in blobs])
    np.testing.assert_allclose(
        feature_model.embed(feature_model.model_dir(model.uri), [blobs[:7], blobs[7:]]), cnn.pixels(x), atol=1e-6
    )
    cnn_model = standard_artifacts.Model()
    cnn_model.uri = str(tmp_path / "cnn")
    assert c.feature_models(cnn_model, "regression", pixels=model, random=None) == {
        "regression": feature_model.model_dir(cnn_model.uri),
        "pixels": feature_model.model_dir(model.uri),
    }

    for kind, facet in (("supervised", "label"), ("style_supervised", "style")):
        model, report = run(kind)
        assert report == {
            "kind": kind,
            "trained": False,
            "why": f"the catalogue has 0 images with a {facet}: a classifier needs at least 2",
        }
        assert not os.path.exists(feature_model.model_dir(model.uri)) and c.feature_models(
            cnn_model, "regression", **{kind: model}
        ) == {"regression": feature_model.model_dir(cnn_model.uri)}
    with pytest.raises(
        ValueError, match="'pseudo_class' is trained on the item factors: give FeatureTrainer an mf_model"
    ):
        run("pseudo_class")

    # Collaborative regression from the ImageNet weights, on item factors with a planted direction.
    mf_model = standard_artifacts.Model()
    mf_model.uri = str(tmp_path / "mf")
    os.makedirs(mf_model.uri)
    ids = [f"t{i:05d}" for i in range(40)]
    targets = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    mf.save(
        mf.Factors(np.zeros((1, 8), np.float32), targets, []), ["u"], ids, os.path.join(mf_model.uri, "factors.npz")
    )
    model, report = run("imagenet_regression", mf_model=mf_model)
    assert report["trained"] and len(report["losses"]) == 1 and report["images"] == 40
    # its features: EfficientNet-Lite0's pooled 1280 (cnn.retrieval "pooled"), not the 8-d projection
    assert feature_model.embed(feature_model.model_dir(model.uri), [blobs]).shape == (40, 1280)


@pytest.mark.slow
def test_the_same_seed_and_data_train_the_same_cnn_twice():
    """cnn.deterministic (the default): two trainings from one seed on the same data (with
    augmentation, shuffling and several epochs) give identical weights and features; another seed
    gives others, so the comparison can fail."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (96, 16, 16, 3), dtype=np.uint8)
    y = rng.normal(size=(96, 6)).astype(np.float32)
    cfg = CNNConfig(image_size=16, widths=[8, 16], embedding_dim=8, epochs=3, batch_size=16, shuffle_buffer=64)

    def train(c):
        net, losses = cnn.train_regression(cnn.pairs(x, y), c)
        return losses, cnn.embed(net, x)

    first, second = train(cfg), train(cfg)
    assert first[0] == second[0]
    np.testing.assert_array_equal(first[1], second[1])
    other = train(CNNConfig(**{**cfg.__dict__, "seed": cfg.seed + 1}))
    assert not np.array_equal(first[1], other[1])


def test_training_reads_a_small_catalogue_in_item_id_order_whatever_order_it_was_written_in():
    from trainer.training_set import in_id_order

    ids = np.array([b"b", b"c", b"a", b"d"], dtype=object)
    x = np.arange(4 * 2 * 2 * 3, dtype=np.uint8).reshape(4, 2, 2, 3)
    v = np.array([1, 2, 0, 3])
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        got = list(
            in_id_order(tf.data.Dataset.from_tensor_slices((ids[order], x[order], v[order]))).as_numpy_iterator()
        )
        assert [g[0] for g in got] == [b"a", b"b", b"c", b"d"]
        assert [int(g[2]) for g in got] == [0, 1, 2, 3]
        np.testing.assert_array_equal(np.stack([g[1] for g in got]), x[[2, 0, 1, 3]])
