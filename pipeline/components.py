"""Thin TFX component wrappers around the pure-Python core.

Each component takes the settings it uses as JSON (`settings_json`, collabfeat/config.py USES) and the
code's fingerprint (`code`): with its inputs, TFX's cache key. Each writes a `report.json` beside its
outputs; pipeline/report.py (collect, format_report) gathers those into the run report.
"""

import functools
import json
import os
from typing import NamedTuple, Optional

import apache_beam as beam
import numpy as np
from tfx import v1 as tfx
from tfx.types import artifact_utils

from collabfeat import config as config_lib
from collabfeat import examples, outcomes, progress, storage
from collabfeat.features import COLLABORATIVE, REGISTRY

Examples = tfx.types.standard_artifacts.Examples
Model = tfx.types.standard_artifacts.Model
TransformGraph = tfx.types.standard_artifacts.TransformGraph
ModelEvaluation = tfx.types.standard_artifacts.ModelEvaluation
ModelBlessing = tfx.types.standard_artifacts.ModelBlessing
PushedModel = tfx.types.standard_artifacts.PushedModel
InputArtifact = tfx.dsl.components.InputArtifact
OutputArtifact = tfx.dsl.components.OutputArtifact
Parameter = tfx.dsl.components.Parameter
BeamPipeline = tfx.dsl.components.BeamComponentParameter[beam.Pipeline]


FACET_NAMES = {"label": "category", "style": "style"}  # item table columns -> the facets' names


def write_report(uri: str, report: dict) -> None:
    storage.write_json(os.path.join(uri, "report.json"), report, indent=1, sort_keys=True)


def record_figures(artifact, **figures) -> None:
    """Key figures as the artifact's custom properties in MLMD, beside report.json."""
    for name, value in figures.items():
        if isinstance(value, (bool, int)):
            artifact.set_int_custom_property(name, int(value))
        elif isinstance(value, float):
            artifact.set_float_custom_property(name, value)
        else:
            artifact.set_string_custom_property(name, str(value))


@tfx.dsl.components.component(use_beam=True)
def LogTransform(
    logs: InputArtifact[Examples],
    interactions: OutputArtifact[Examples],
    settings_json: Parameter[str],
    code: Parameter[str],
    catalogue: InputArtifact[Examples] = None,
    beam_pipeline: BeamPipeline = None,
) -> None:
    """Behaviour logs -> weighted, filtered, split (user, item) pairs (transform/aggregate.py), in
    hash buckets of users of about transform.bucket_rows log rows each, spilled under the output."""
    from tfx.dsl.io import fileio

    from collabfeat.transform.aggregate import AggregateLogs, bucket_count

    cfg = config_lib.settings(settings_json)
    cols = cfg.data
    [split] = artifact_utils.decode_split_names(logs.split_names)
    outcomes_path = os.path.join(interactions.uri, "outcomes.json")
    summary_path = os.path.join(interactions.uri, "summary.json")
    work_dir = os.path.join(interactions.uri, "_buckets")
    name = f"records_{split}"  # LogsExampleGen's count of what it wrote; other inputs get counted
    rows_in = (
        logs.get_int_custom_property(name)
        if logs.has_custom_property(name)
        else examples.count_records(artifact_utils.get_split_uri([logs], split))
    )

    def row(r):
        return {"user": r.get(cols.user_column), "item": r.get(cols.item_column), "event": r.get(cols.event_column)}

    def record(p):
        return {"user_id": p[0], "item_id": p[1], "weight": float(p[2]), "events": p[3]}

    fileio.makedirs(work_dir)
    try:
        with beam_pipeline as p:
            known = None
            if catalogue is not None:
                known = (
                    p
                    | "ReadCatalogue" >> examples.ReadSplit(catalogue.uri, "catalogue")
                    | "ItemIds" >> beam.Map(lambda r: r["item_id"].decode())
                )
            out = (
                p
                | "ReadLogs" >> examples.ReadSplit(logs.uri, split)
                | "Columns" >> beam.Map(row)
                | "Aggregate" >> AggregateLogs(cfg.transform, work_dir, rows_in, known)
            )
            for name in ("train", "eval"):
                _ = (
                    out[name]
                    | f"Record{name}" >> beam.Map(record)
                    | f"Write{name}" >> examples.WriteSplit(interactions.uri, name)
                )
            _ = out["outcomes"] | "Outcomes" >> outcomes.WriteOutcomes(outcomes_path)
            _ = (
                out["summary"]
                | "SummaryJson" >> beam.Map(json.dumps)
                | "WriteSummary" >> beam.io.WriteToText(summary_path, shard_name_template="", num_shards=1)
            )
    finally:
        fileio.rmtree(work_dir)

    interactions.split_names = artifact_utils.encode_split_names(["train", "eval"])
    rows = outcomes.read(outcomes_path)
    summary = outcomes.read(summary_path)
    write_report(
        interactions.uri,
        {
            "rows": rows["counts"],
            "rows_total": sum(rows["counts"].values()),
            "rejected_examples": rows["examples"],
            "buckets": bucket_count(rows_in, cfg.transform),
            "bucket_rows": cfg.transform.bucket_rows,
            **summary,
        },
    )
    record_figures(interactions, rows_total=sum(rows["counts"].values()), rows_used=rows["counts"].get("used", 0))


@tfx.dsl.components.component(use_beam=True)
def ImageImport(
    images: OutputArtifact[Examples],
    settings_json: Parameter[str],
    code: Parameter[str],
    inputs: Parameter[str],
    beam_pipeline: BeamPipeline = None,
) -> None:
    """Item tables + image files -> Examples with splits "catalogue" and (optionally) "heldout" and
    "transfer" (labelled images from another source, evaluated as a facet of their own).
    `inputs`: the files' fingerprint (pipeline.inputs_fingerprint), so that changed files are read again."""
    from collabfeat.catalogue import ImportItems

    cfg = config_lib.settings(settings_json)
    d = cfg.data
    tables = {"catalogue": d.items}
    if d.eval_items:
        tables["heldout"] = d.eval_items
    if d.transfer_items:
        tables["transfer"] = d.transfer_items
    if d.unseen_items:
        tables["unseen"] = d.unseen_items
    with beam_pipeline as p:
        for split, path in tables.items():
            out = p | f"Import{split}" >> ImportItems(path, d.image_dir, cfg.cnn.image_size, d.background)
            _ = out["records"] | f"Write{split}" >> examples.WriteSplit(images.uri, split)
            _ = out["outcomes"] | f"Outcomes{split}" >> outcomes.WriteOutcomes(
                os.path.join(images.uri, f"outcomes-{split}.json")
            )
    images.split_names = artifact_utils.encode_split_names(list(tables))
    write_report(
        images.uri, {split: outcomes.read(os.path.join(images.uri, f"outcomes-{split}.json")) for split in tables}
    )


@tfx.dsl.components.component
def MFTrainer(
    transformed: InputArtifact[Examples],
    transform_graph: InputArtifact[TransformGraph],
    model: OutputArtifact[Model],
    settings_json: Parameter[str],
    code: Parameter[str],
    catalogue: InputArtifact[Examples] = None,
) -> None:
    """Weighted pairs -> user and item latent factors with TFRS (trainer/mf.py). Weighted ALS (the
    default solver) holds up to mf.bucket_pairs train pairs in memory (24 bytes each); more go to
    row-range bucket files on local disk. The SGD solvers stream the pairs every epoch."""
    import tempfile

    import tensorflow as tf
    import tensorflow_transform as tft

    from collabfeat import topk
    from collabfeat.catalogue import read_labels
    from collabfeat.trainer import mf

    cfg = config_lib.settings(settings_json)
    graph = tft.TFTransformOutput(transform_graph.uri)
    user_ids = [u.decode() for u in graph.vocabulary_by_name("user_id")]
    item_ids = [i.decode() for i in graph.vocabulary_by_name("item_id")]
    n_users, n_items = len(user_ids), len(item_ids)
    spec = {"user_idx": tf.int64, "item_idx": tf.int64, "rating": tf.float32}
    als = mf.uses_als(cfg.mf)

    # One streaming pass per split: item counts, and the pairs of a seeded sample of users for recall@k.
    sampled = np.zeros(n_users + 1, bool)
    sampled[topk.sample(n_users, cfg.mf.eval_users, cfg.mf.seed)] = True
    counts, user_counts = np.zeros(n_items + 1, np.int64), np.zeros(n_users + 1, np.int64)
    pairs, totals, cold = {}, {}, 0
    for split in ("train", "eval"):
        parts, totals[split] = [], 0
        for b in examples.batches(transformed.uri, split, spec):
            u, i = b["user_idx"], b["item_idx"]
            known = (u < n_users) & (i < n_items)  # eval pairs outside the train vocabularies are cold
            totals[split] += int(known.sum())
            cold += int((~known).sum())
            if split == "train":
                counts += np.bincount(i, minlength=n_items + 1)
                user_counts += np.bincount(u, minlength=n_users + 1)
            keep = known & sampled[u]
            parts.append(np.c_[u[keep], i[keep]])
        pairs[split] = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
    if als:  # a second pass puts the train pairs in buckets of rows, both ways
        with tempfile.TemporaryDirectory(prefix="collabfeat-als-") as tmp:
            for side in ("users", "items"):
                os.makedirs(os.path.join(tmp, side))
            by_user = mf.PairBuckets(user_counts, cfg.mf.bucket_pairs, os.path.join(tmp, "users"))
            by_item = mf.PairBuckets(counts, cfg.mf.bucket_pairs, os.path.join(tmp, "items"))
            for b in examples.batches(transformed.uri, "train", spec):
                conf = mf.confidence(b["rating"], cfg.mf)
                by_user.add(b["user_idx"], b["item_idx"], conf)
                by_item.add(b["item_idx"], b["user_idx"], conf)
            factors = mf.fit_als(by_user, by_item, cfg.mf)
        report_extra = {
            "als_buckets": {"users": len(by_user.parts), "items": len(by_item.parts)},
            "als_bucket_pairs": cfg.mf.bucket_pairs,
        }
    else:
        data = examples.dataset(
            transformed.uri, "train", spec, cfg.mf.batch_size, shuffle=cfg.mf.shuffle_buffer, seed=cfg.mf.seed
        )
        factors = mf.fit(data, n_users + 1, n_items + 1, counts, cfg.mf)
        report_extra = {}
    factors = mf.Factors(factors.users[:n_users], factors.items[:n_items], factors.losses)
    k = cfg.mf.recall_k
    popularity = mf.popularity_from_counts(counts[:n_items], n_users)
    report = {
        "users": n_users,
        "items": n_items,
        "train_pairs": totals["train"],
        "eval_pairs": totals["eval"],
        "eval_pairs_cold": cold,
        "losses": factors.losses,
        "recall_users": int(len(np.unique(pairs["eval"][:, 0]))),
        "recall_users_bound": cfg.mf.eval_users,
        f"recall@{k}": mf.recall_at_k(factors, pairs["train"], pairs["eval"], k),
        f"recall@{k}_popularity": mf.recall_at_k(popularity, pairs["train"], pairs["eval"], k),
        **report_extra,
    }
    if report[f"recall@{k}"] <= report[f"recall@{k}_popularity"]:
        progress.warn(
            f"MFTrainer: the factors' held-out recall@{k} {report[f'recall@{k}']:.3f} does not beat "
            f"ranking by popularity ({report[f'recall@{k}_popularity']:.3f})"
        )
    if catalogue is not None:
        # How often an item factor's 10 nearest neighbours share its facet (category, style).
        from collabfeat.catalogue import read_facets

        ids = list(read_labels(catalogue.uri, "catalogue"))
        for facet, values in read_facets(catalogue.uri, "catalogue").items():
            of = dict(zip(ids, values.tolist()))
            lab = np.array([of.get(i, -1) for i in item_ids])
            have = lab >= 0
            if have.sum() > 10:
                lab = lab[have]
                report.setdefault("agreement@10", {})[FACET_NAMES[facet]] = {
                    "value": mf.neighbour_agreement(factors.items[have], lab, 10, cfg.mf.agreement_items, cfg.mf.seed),
                    "items": int(min(have.sum(), cfg.mf.agreement_items or have.sum())),
                    "chance": float(((np.bincount(lab) / len(lab)) ** 2).sum()),
                }
    mf.save(factors, user_ids, item_ids, os.path.join(model.uri, "factors.npz"))
    write_report(model.uri, report)
    record_figures(
        model,
        users=n_users,
        items=n_items,
        train_pairs=totals["train"],
        **{
            f"recall@{k}": float(report[f"recall@{k}"]),
            f"recall@{k}_popularity": float(report[f"recall@{k}_popularity"]),
        },
    )


class _TrainingSet:
    """The catalogue images, streamed from the images artifact; with an MF model, only those that
    have an item factor, joined with it by a lookup table: memory holds the factor table, not images."""

    def __init__(self, images_uri: str, cfg, factors_path: str | None = None, facet: str = "label"):
        import tensorflow as tf

        from collabfeat.catalogue import read_labels
        from collabfeat.trainer import mf

        self.images_uri, self.cfg, self.facet = images_uri, cfg, facet
        labels = read_labels(images_uri, "catalogue", facet)
        self.n_classes = max(labels.values()) + 1
        self.row = None
        if factors_path is None:
            self.labelled = sum(1 for v in labels.values() if v >= 0)
            self.counts = {"catalogue_images": len(labels)}
            self.size = len(labels)
            return
        f = mf.load(factors_path)
        factor_ids = [str(i) for i in f["item_ids"]]
        have = set(labels).intersection(factor_ids)
        self.targets = f["items"].astype(np.float32)  # normalised by the trainers (regression, k-means)
        self.with_image = np.array([i in have for i in factor_ids])
        self.labelled = sum(1 for i in have if labels[i] >= 0)
        self.size = len(have)
        self.counts = {
            "catalogue_images": len(labels),
            "with_factor": len(have),
            "without_factor (never seen, or filtered out)": len(labels) - len(have),
            "factors_without_image": len(factor_ids) - len(have),
        }
        self.row = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(factor_ids, tf.string), tf.range(len(factor_ids), dtype=tf.int64)
            ),
            default_value=-1,
        )

    def _images(self, labelled=False):
        """(factor row, image, label) of the images (with a factor, if there are factors; with a
        label, if asked), with their number as the cardinality (checked while streaming): the
        trainers bound an epoch by it."""
        import tensorflow as tf

        from collabfeat.catalogue import image_dataset

        data = image_dataset(self.images_uri, "catalogue", self.cfg.cnn.image_size, self.facet)
        if self.counts["catalogue_images"] <= self.cfg.cnn.shuffle_buffer:  # what in_id_order holds
            data = in_id_order(data)
        if self.row is not None:
            data = data.map(lambda i, x, v: (self.row.lookup(i), x, v)).filter(lambda r, x, v: r >= 0)
        else:
            data = data.map(lambda i, x, v: (tf.constant(-1, tf.int64), x, v))
        if labelled:
            data = data.filter(lambda r, x, v: v >= 0)
        return data.apply(tf.data.experimental.assert_cardinality(self.labelled if labelled else self.size))

    def factors(self):
        """(image, item factor) pairs."""
        import tensorflow as tf

        table = tf.constant(self.targets)
        return self._images().map(lambda r, x, v: (x, tf.gather(table, r)))

    def pseudo_classes(self, k: int, seed: int):
        """(image, k-means cluster of its item factor) pairs (the paper's variant)."""
        import tensorflow as tf

        from collabfeat.trainer import cnn

        classes = np.full(len(self.targets), -1, np.int32)
        classes[self.with_image] = cnn.pseudo_classes(self.targets[self.with_image], k, seed)
        table = tf.constant(classes)
        return self._images().map(lambda r, x, v: (x, tf.gather(table, r)))

    def labelled_images(self):
        """(image, label) pairs of the images that have a label (the facet's value: category or style)."""
        return self._images(labelled=True).map(lambda r, x, v: (x, v))

    def images(self):
        return self._images().map(lambda r, x, v: x)


def in_id_order(data):
    """(item id, image, value) records held in memory in item-id order: training is then repeatable
    whatever order the import's Beam workers wrote the records in. Only for a catalogue that fits
    the training's shuffle buffer (cnn.shuffle_buffer), which holds that many images anyway."""
    import tensorflow as tf

    ids, xs, values = [], [], []
    for i, x, v in data.as_numpy_iterator():
        ids.append(i)
        xs.append(x)
        values.append(v)
    if not ids:
        return data
    order = np.argsort(np.array(ids, dtype=object), kind="stable")
    return tf.data.Dataset.from_tensor_slices(
        (np.array(ids, dtype=object)[order], np.stack(xs)[order], np.array(values)[order])
    )


@tfx.dsl.components.component
def CNNTrainer(
    images: InputArtifact[Examples],
    mf_model: InputArtifact[Model],
    model: OutputArtifact[Model],
    settings_json: Parameter[str],
    code: Parameter[str],
) -> None:
    """Images -> the Keras CNN trained onto the items' latent factors (trainer/cnn.py), exported as
    the serving feature model (serving/export.py) in TFX's layout: <model>/Format-Serving/."""
    from collabfeat.serving import export
    from collabfeat.trainer import features

    cfg = config_lib.settings(settings_json)
    data = _TrainingSet(images.uri, cfg, os.path.join(mf_model.uri, "factors.npz"))
    made = features.make(cfg.cnn.mode, data, cfg, task="CNN")
    export.save_features(made.net, cfg.cnn.image_size, export.model_dir(model.uri), cfg.data.background)
    write_report(model.uri, {"mode": cfg.cnn.mode, "losses": made.losses, **data.counts})
    record_figures(model, kind=cfg.cnn.mode)


@tfx.dsl.components.component
def FeatureTrainer(
    images: InputArtifact[Examples],
    model: OutputArtifact[Model],
    kind: Parameter[str],
    settings_json: Parameter[str],
    code: Parameter[str],
    mf_model: InputArtifact[Model] = None,
) -> None:
    """One feature set to compare with the served one, as a feature model (Format-Serving, like
    CNNTrainer's) on the same backbone and preprocessing: `kind` is the other collaborative variant
    (regression or pseudo_class, from `mf_model`'s factors), imagenet_regression (collaborative
    regression from ImageNet weights), category-supervised, ImageNet features (no training),
    rotation (self-supervised), random-init or raw pixels. A kind the catalogue cannot train
    (supervised without labels) writes no model and says why."""
    from collabfeat.serving import export
    from collabfeat.trainer import features

    cfg = config_lib.settings(settings_json)
    if kind not in REGISTRY:
        raise ValueError(f"unknown feature set {kind!r}: one of {tuple(REGISTRY)}")
    spec = REGISTRY[kind]
    factors = os.path.join(mf_model.uri, "factors.npz") if mf_model is not None else None
    if spec.reads == "factors" and factors is None:
        raise ValueError(f"feature set {kind!r} is trained on the item factors: give FeatureTrainer an mf_model")
    # The kinds that train nothing never read the catalogue (at 10^6 images a full pass each).
    data = _TrainingSet(images.uri, cfg, factors, "style" if spec.reads == "style" else "label") if spec.reads else None
    try:
        made = features.make(kind, data, cfg)
    except features.NotTrainable as why:
        progress.warn(f"Features_{kind}: not trained: {why}")
        model.set_int_custom_property("trained", 0)
        write_report(model.uri, {"kind": kind, "trained": False, "why": str(why)})
        return
    export.save_features(made.net, cfg.cnn.image_size, export.model_dir(model.uri), cfg.data.background)
    model.set_int_custom_property("trained", 1)
    record_figures(model, kind=kind)
    write_report(model.uri, {"kind": kind, "trained": True, "losses": made.losses, "images": made.images})


def feature_models(**models) -> dict[str, str]:
    """kind -> the feature model's path, for the given Model artifacts (None: not in this run) that hold one."""
    from collabfeat.serving import export

    return {
        kind: export.model_dir(m.uri)
        for kind, m in models.items()
        if m is not None and (not m.has_custom_property("trained") or m.get_int_custom_property("trained"))
    }


def served_features(blessing, models: dict[str, str], trained: str) -> str:
    """The feature set the Evaluator chose to serve (eval.serve), which must be one of `models`."""
    served = blessing.get_string_custom_property("served") or trained
    if served not in models:
        raise ValueError(f"the Evaluator chose {served!r} to serve, but this component was given {sorted(models)}")
    return served


def evaluation_split(images) -> str:
    """The split of labelled images the Evaluator and the Pusher's comparison use: the held-out
    images if there are any, else the catalogue's."""
    return "heldout" if "heldout" in artifact_utils.decode_split_names(images.split_names) else "catalogue"


@functools.lru_cache(maxsize=16)
def id_order(uri: str, split: str) -> tuple[tuple[str, ...], "np.ndarray"]:
    """A split's item ids sorted, and the permutation that sorts its records (file order) so. The
    Evaluator and the Pusher score every split in this order: the import's Beam workers write
    records in an order that changes from run to run, and ties in a ranking are broken by position."""

    from collabfeat.catalogue import read_labels

    ids = list(read_labels(uri, split))
    order = np.argsort(np.array(ids, dtype=object), kind="stable")
    return tuple(ids[i] for i in order), order


class Facet(NamedTuple):
    """One column of the evaluation: the splits whose images are pooled (in this order), each
    image's value (-1: none), and which images query (None: every one with a value)."""

    splits: tuple[str, ...]
    values: "np.ndarray"
    queries: Optional["np.ndarray"] = None


def _facets(images, split) -> dict[str, Facet]:
    """facet name -> Facet for the evaluation: the held-out images' category and style; the
    unseen style (the "unseen" split's images, in a style no catalogue image has, pooled with the
    held-out images: each of them queries, and should find its own style); the transfer split's
    labels ("transfer": another source's categories). A facet needs at least 2 images with a value."""

    from collabfeat.catalogue import read_facets as read_split_facets

    names = artifact_utils.decode_split_names(images.split_names)

    def read_facets(uri, sp):  # in item-id order (id_order)
        return {f: v[id_order(uri, sp)[1]] for f, v in read_split_facets(uri, sp).items()}

    own = read_facets(images.uri, split)
    out = {FACET_NAMES[f]: Facet((split,), v) for f, v in own.items()}
    if "unseen" in names and "style" in own:
        unseen = read_facets(images.uri, "unseen").get("style")
        if unseen is not None:
            out["unseen_style"] = Facet(
                (split, "unseen"),
                np.concatenate([own["style"], unseen]),
                np.r_[np.zeros(len(own["style"]), bool), unseen >= 0],
            )
    if "transfer" in names:
        labels = read_facets(images.uri, "transfer").get("label")
        if labels is not None:
            out["transfer"] = Facet(("transfer",), labels)
    order = ("style", "unseen_style", "category", "transfer")  # the report's columns
    return {
        name: out[name]
        for name in order
        if name in out
        and (out[name].values >= 0).sum() >= 2
        and (out[name].queries is None or (out[name].queries & (out[name].values >= 0)).any())
    }


def score_facet(feats: dict[str, "np.ndarray"], facet: Facet, k: int, max_queries: int, seed: int) -> dict[str, float]:
    """retrieval_metrics of one feature set on one facet, from its features per split."""

    from collabfeat.trainer.evaluate import retrieval_metrics

    x = np.concatenate([feats[sp] for sp in facet.splits])
    have = facet.values >= 0
    return retrieval_metrics(
        x[have], facet.values[have], k, max_queries, seed, None if facet.queries is None else facet.queries[have]
    )


GALLERY_QUERIES, GALLERY_K = 3, 8  # the report's gallery: fixed queries per facet, neighbours shown


def neighbours(feats: dict[str, "np.ndarray"], facet: Facet, split_ids: dict[str, list], name: str, seed: int) -> dict:
    """The report's gallery for one feature set on one facet: GALLERY_QUERIES fixed queries (a
    seeded sample of the facet's query images, the same for every feature set) and each one's
    GALLERY_K nearest other images, as (split, item id, relevant) triples."""

    from collabfeat.trainer.evaluate import query_rows

    x = np.concatenate([feats[sp] for sp in facet.splits])
    where = [(sp, i) for sp in facet.splits for i in split_ids[sp]]
    have = np.flatnonzero(facet.values >= 0)
    x, values = x[have], facet.values[have]
    rows = query_rows(len(x), None if facet.queries is None else facet.queries[have], GALLERY_QUERIES, seed)
    sims = x[rows] @ x.T
    sims[np.arange(len(rows)), rows] = -np.inf
    top = np.argsort(-sims, axis=1, kind="stable")[:, :GALLERY_K]
    out = {"queries": [list(where[have[r]]) for r in rows]}
    out[name] = [[[*where[have[j]], bool(values[j] == values[r])] for j in t] for r, t in zip(rows, top)]
    return out


EMBED_BATCH = 256  # images per call of a feature model's serving signature


def _split_bytes(uri: str, split: str, batch: int = EMBED_BATCH):
    """A split's stored image bytes, in file order, as lists of `batch` (streamed)."""
    import tensorflow as tf

    for b in examples.batches(uri, split, {"image": tf.string}, batch):
        yield list(b["image"])


# The feature sets' models, as the Evaluator's and the Indexer's optional inputs: one per kind
# (KFP's compiler takes single channels only), named as in collabfeat/features.py REGISTRY.
FeatureModel = InputArtifact[Model]


@tfx.dsl.components.component
def Evaluator(
    images: InputArtifact[Examples],
    model: InputArtifact[Model],
    evaluation: OutputArtifact[ModelEvaluation],
    blessing: OutputArtifact[ModelBlessing],
    settings_json: Parameter[str],
    code: Parameter[str],
    regression: FeatureModel = None,
    pseudo_class: FeatureModel = None,
    imagenet_regression: FeatureModel = None,
    supervised: FeatureModel = None,
    style_supervised: FeatureModel = None,
    imagenet: FeatureModel = None,
    rotation: FeatureModel = None,
    random: FeatureModel = None,
    pixels: FeatureModel = None,
) -> None:
    """Retrieval precision@k and mAP of every feature model on each facet: the held-out images'
    category and style, and a transfer set from another source. Each model is scored through its
    serving signature on the stored image bytes, exactly what it serves. The served collaborative
    features (`model`) are compared with the other variant and the baselines (category-supervised,
    ImageNet, rotation, random-init, pixels: the FeatureTrainer nodes), and the paper's claims
    are checked (evaluate.targets). Blessed only if, on eval.bless_on (the mean over the facets),
    it beats random-init and pixels by eval.bless_margin."""

    from collabfeat.serving import export
    from collabfeat.trainer.evaluate import bless, chance, choose, describe, overall, targets

    cfg = config_lib.settings(settings_json)
    split = evaluation_split(images)
    facets = _facets(images, split)
    if "category" not in facets:
        raise ValueError(f"evaluation needs labelled images: split {split!r} has fewer than 2 with a label")
    splits = sorted({sp for f in facets.values() for sp in f.splits})
    n_min = min(int((f.values >= 0).sum()) for f in facets.values())
    k, queries, seed = min(cfg.eval.k, n_min - 1), cfg.eval.max_queries, cfg.cnn.seed
    key = f"precision@{k}"
    trained = cfg.cnn.mode
    tables = {name: {} for name in facets}
    models = {
        trained: export.model_dir(model.uri),
        **feature_models(
            regression=regression,
            pseudo_class=pseudo_class,
            imagenet_regression=imagenet_regression,
            supervised=supervised,
            style_supervised=style_supervised,
            imagenet=imagenet,
            rotation=rotation,
            random=random,
            pixels=pixels,
        ),
    }
    split_ids = {sp: list(id_order(images.uri, sp)[0]) for sp in splits}
    gallery: dict[str, dict] = {}
    for name, path in models.items():
        loaded = export.load(path)
        feats = {
            sp: export.embed(loaded, _split_bytes(images.uri, sp), task=f"features {name}: {sp}")[
                id_order(images.uri, sp)[1]
            ]
            for sp in splits
        }
        for facet, f in facets.items():
            tables[facet][name] = score_facet(feats, f, k, queries, seed)
            gallery.setdefault(facet, {}).update(neighbours(feats, f, split_ids, name, seed))
    table = tables["category"]
    measure = overall(tables, cfg.eval.bless_on)
    served = choose(measure, key, cfg.eval.serve, trained)
    blessed, beats = bless(measure, served, key, cfg.eval.bless_margin)
    facet_report = {}
    for facet, f in facets.items():
        have = f.values >= 0
        v = f.values[have]
        facet_report[facet] = {
            "split": "+".join(f.splits),
            "images": int(len(v)),
            "classes": int(len(np.unique(v))),
            "queries": int(len(v) if f.queries is None else f.queries[have].sum()),
            "chance": chance(v, None if f.queries is None else f.queries[have]),
            "table": tables[facet],
        }
    checks = targets(facet_report, key, [served])
    n_test = facet_report["category"]["images"]
    bless_on = describe({f: r["images"] for f, r in facet_report.items()}, cfg.eval.bless_on)
    write_report(
        evaluation.uri,
        {
            "split": split,
            "images": n_test,
            "served": served,
            "serve": cfg.eval.serve,
            "candidates": {n: measure[n][key] for n in measure if n in COLLABORATIVE or n == trained},
            "queries": min(n_test, queries or n_test),
            "queries_bound": queries,
            "metric": key,
            "table": table,
            "margins": beats,
            "blessed": blessed,
            "bless_on": bless_on,
            "bless_margin": cfg.eval.bless_margin,
            "chance": facet_report["category"]["chance"],
            "models": models,
            "facets": facet_report,
            "targets": checks,
            "gallery": gallery,
        },
    )
    record_figures(
        evaluation,
        metric=key,
        served=served,
        images=n_test,
        targets_met=sum(c["met"] for c in checks),
        targets=len(checks),
        # facet_features_metric: feature set names hold underscores, so the facet comes first
        **{
            f"{facet}_{name}_{m}": float(v)
            for facet, f in facet_report.items()
            for name, t in f["table"].items()
            for m, v in t.items()
            if m in (key, "mAP")
        },
    )
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_string_custom_property("served", served)  # the Indexer and the Pusher serve these features
    if not blessed:
        progress.warn(
            f"Evaluator: not blessed, so not pushed: {served}'s {key} margins {beats} on {bless_on} "
            f"are below eval.bless_margin {cfg.eval.bless_margin}"
        )
    storage.open(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "w").close()
    write_report(
        blessing.uri, {"blessed": blessed, "margins": beats, "on": bless_on, "required": cfg.eval.bless_margin}
    )


class ScannIndex(tfx.dsl.Artifact):
    """The catalogue's embeddings, item ids and a serialised ScaNN searcher (serving/index.py)."""

    TYPE_NAME = "collabfeat.ScannIndex"


@tfx.dsl.components.component
def Indexer(
    images: InputArtifact[Examples],
    model: InputArtifact[Model],
    blessing: InputArtifact[ModelBlessing],
    index: OutputArtifact[ScannIndex],
    settings_json: Parameter[str],
    code: Parameter[str],
    regression: FeatureModel = None,
    pseudo_class: FeatureModel = None,
    imagenet_regression: FeatureModel = None,
    supervised: FeatureModel = None,
    style_supervised: FeatureModel = None,
    imagenet: FeatureModel = None,
    rotation: FeatureModel = None,
    random: FeatureModel = None,
    pixels: FeatureModel = None,
) -> None:
    """Embeds the whole catalogue through the served feature model (the Evaluator's choice, on
    `blessing`: the CNNTrainer's `model` or another collaborative feature model) and builds a
    ScaNN index; reports recall@k against exact search. Also writes a 2-D map of the catalogue
    and, for the explorer, the catalogue's embeddings under every other feature model given, with
    the model."""
    import time

    from collabfeat import topk
    from collabfeat.catalogue import read_labels
    from collabfeat.serving import export
    from collabfeat.serving import index as scann_index

    cfg = config_lib.settings(settings_json)
    ids = list(read_labels(images.uri, "catalogue"))
    batches = -(-len(ids) // EMBED_BATCH)
    models = {
        cfg.cnn.mode: export.model_dir(model.uri),
        **feature_models(
            regression=regression,
            pseudo_class=pseudo_class,
            imagenet_regression=imagenet_regression,
            supervised=supervised,
            style_supervised=style_supervised,
            imagenet=imagenet,
            rotation=rotation,
            random=random,
            pixels=pixels,
        ),
    }
    served = served_features(blessing, models, cfg.cnn.mode)

    emb = export.embed(
        models[served], _split_bytes(images.uri, "catalogue"), task="embedding the catalogue", total=batches
    )
    if len(emb) != len(ids):
        raise RuntimeError(f"the catalogue changed while it was read: {len(ids)} ids, {len(emb)} images")
    # Recall is reported on one seeded sample of the catalogue; the search settings are tuned on another.
    measured = topk.sample(len(emb), cfg.index.recall_queries, 0)
    rest = np.setdiff1d(np.arange(len(emb)), measured)
    tuning = rest[topk.sample(len(rest), scann_index.TUNING_QUERIES, 1)] if len(rest) else measured
    start = time.time()
    searcher, settings = scann_index.build(emb, cfg.index, emb[tuning])
    built = time.time() - start
    if settings["kind"] == "brute_force" and len(emb) > scann_index.BRUTE_FORCE_UP_TO:
        progress.warn(f"Indexer: exact search over {len(emb)} items: {settings['why']}")
    queries = emb[measured]
    k = min(cfg.index.num_neighbors, len(emb))
    recall = scann_index.recall_against_exact(searcher, emb, queries, k, settings)
    scann_index.save(searcher, settings, ids, emb, index.uri, served)
    scann_index.write_map(emb, index.uri, sample=cfg.index.map_sample)
    sets = [served]
    for name, path in sorted((n, p) for n, p in models.items() if n != served):
        # batch by batch: the rows go to disk as they come (raw pixels are 3,072 floats an image)
        scann_index.write_feature_set(
            index.uri,
            name,
            export.embed_batches(
                path, _split_bytes(images.uri, "catalogue"), task=f"embedding the catalogue: {name}", total=batches
            ),
            path,
        )
        sets.append(name)
    write_report(
        index.uri,
        {
            "served": served,
            "items": len(ids),
            "dim": int(emb.shape[1]),
            f"recall@{k}": recall,
            "recall_queries": len(queries),
            "map_sample": min(len(ids), cfg.index.map_sample),
            "build_seconds": built,
            "required_recall": cfg.index.min_recall,
            "tuning_queries": len(tuning),
            "settings": settings,
            "feature_sets": sets,
        },
    )
    record_figures(index, items=len(ids), kind=settings["kind"], **{f"recall@{k}": float(recall)})
    if recall < cfg.index.min_recall:
        raise RuntimeError(
            f"ScaNN recall@{k} {recall:.3f} is below index.min_recall {cfg.index.min_recall}: "
            "with " + json.dumps({key: v for key, v in settings.items() if "tried" not in key})
        )


@tfx.dsl.components.component
def Pusher(
    model: InputArtifact[Model],
    index: InputArtifact[ScannIndex],
    blessing: InputArtifact[ModelBlessing],
    images: InputArtifact[Examples],
    pushed_model: OutputArtifact[PushedModel],
    settings_json: Parameter[str],
    code: Parameter[str],
    regression: FeatureModel = None,
    pseudo_class: FeatureModel = None,
    imagenet_regression: FeatureModel = None,
) -> None:
    """A blessed model (the collaborative features the Evaluator chose: the CNNTrainer's `model`,
    or one of the other collaborative feature models) -> <push_dir>/<name>/<version>/: the serving SavedModel, and in
    assets.extra/ the ScaNN index and item-id table of the same version (serving/push.py).
    Pushed only if, on the Evaluator's held-out images, it retrieves at least as well as the
    version being served (eval.served_margin): a worse model never replaces a better one."""
    from collabfeat.catalogue import split_images
    from collabfeat.serving import push

    cfg = config_lib.settings(settings_json)
    if not blessing.get_int_custom_property("blessed"):
        pushed_model.set_int_custom_property("pushed", 0)
        write_report(pushed_model.uri, {"pushed": False, "why": "the model was not blessed"})
        return
    split = evaluation_split(images)
    facets = _facets(images, split)  # the Evaluator's facets and images, for the served-version comparison
    blobs = {}
    for sp in sorted({sp for f in facets.values() for sp in f.splits}):
        stored = split_images(images.uri, sp)
        blobs[sp] = [stored[i] for i in id_order(images.uri, sp)[1]]  # in the Evaluator's order
    from collabfeat.serving import export

    models = {
        cfg.cnn.mode: export.model_dir(model.uri),
        **feature_models(regression=regression, pseudo_class=pseudo_class, imagenet_regression=imagenet_regression),
    }
    served = served_features(blessing, models, cfg.cnn.mode)
    result = push.push(
        models[served],
        index.uri,
        cfg,
        heldout={
            name: push.Heldout(sum((blobs[sp] for sp in f.splits), []), f.values, f.queries)
            for name, f in facets.items()
        },
    )
    compared = result["compared"] or {}
    pushed_model.set_int_custom_property("pushed", int(result["pushed"]))
    if result["pushed"]:
        pushed_model.set_string_custom_property("pushed_destination", result["destination"])
        pushed_model.set_int_custom_property("pushed_version", result["version"])
    else:
        progress.warn(f"Pusher: not pushed: {result['why']}")
    if "metric" in compared:
        record_figures(
            pushed_model,
            served_version=compared["served_version"],
            **{f"{who}_{compared['metric']}": compared[who][compared["metric"]] for who in ("candidate", "served")},
        )
    write_report(pushed_model.uri, {**result, "split": split, "served": served})
