"""Thin TFX component wrappers around the pure-Python core.

Each component takes the whole run configuration as JSON (`config_json`) and writes a
`report.json` beside its outputs; pipeline/run.py (collect, format_report) gathers those into the run report.
"""

import json
import os

import apache_beam as beam
from tfx import v1 as tfx
from tfx.types import artifact_utils

from collabfeat import examples, outcomes
from collabfeat.config import Config

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


def write_report(uri: str, report: dict) -> None:
    with open(os.path.join(uri, "report.json"), "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)


@tfx.dsl.components.component(use_beam=True)
def LogTransform(logs: InputArtifact[Examples],
                 interactions: OutputArtifact[Examples],
                 config_json: Parameter[str],
                 catalogue: InputArtifact[Examples] = None,
                 beam_pipeline: BeamPipeline = None) -> None:
    """Behaviour logs -> weighted, filtered, split (user, item) pairs (transform/aggregate.py)."""
    from collabfeat.transform.aggregate import AggregateLogs

    cfg = Config.from_json(config_json)
    cols = cfg.data
    known = None
    if catalogue is not None:
        known = {r["item_id"].decode() for r in examples.read(catalogue.uri, "catalogue")}
    [split] = artifact_utils.decode_split_names(logs.split_names)
    outcomes_path = os.path.join(interactions.uri, "outcomes.json")

    def row(r):
        return {"user": r.get(cols.user_column), "item": r.get(cols.item_column),
                "event": r.get(cols.event_column)}

    def record(p):
        return {"user_id": p[0], "item_id": p[1], "weight": float(p[2]), "events": p[3]}

    with beam_pipeline as p:
        out = (p | "ReadLogs" >> examples.ReadSplit(logs.uri, split)
               | "Columns" >> beam.Map(row)
               | "Aggregate" >> AggregateLogs(cfg.transform, known))
        for name in ("train", "eval"):
            _ = out[name] | f"Record{name}" >> beam.Map(record) | f"Write{name}" >> examples.WriteSplit(interactions.uri, name)
        _ = out["outcomes"] | "Outcomes" >> outcomes.WriteOutcomes(outcomes_path)

    interactions.split_names = artifact_utils.encode_split_names(["train", "eval"])
    rows = outcomes.read(outcomes_path)
    pairs, users, items = {}, set(), set()
    for s in ("train", "eval"):
        pairs[s] = 0
        for r in examples.read(interactions.uri, s):
            pairs[s] += 1
            users.add(r["user_id"])
            items.add(r["item_id"])
    write_report(interactions.uri, {
        "rows": rows["counts"], "rows_total": sum(rows["counts"].values()),
        "rejected_examples": rows["examples"], "pairs": pairs,
        "users": len(users), "items": len(items)})


@tfx.dsl.components.component(use_beam=True)
def ImageImport(images: OutputArtifact[Examples], config_json: Parameter[str],
                beam_pipeline: BeamPipeline = None) -> None:
    """Item tables + image files -> Examples with splits "catalogue" and (optionally) "heldout"."""
    from collabfeat.catalogue import ImportItems

    cfg = Config.from_json(config_json)
    d = cfg.data
    tables = {"catalogue": d.items}
    if d.eval_items:
        tables["heldout"] = d.eval_items
    with beam_pipeline as p:
        for split, path in tables.items():
            out = p | f"Import{split}" >> ImportItems(path, d.image_dir, cfg.cnn.image_size)
            _ = out["records"] | f"Write{split}" >> examples.WriteSplit(images.uri, split)
            _ = out["outcomes"] | f"Outcomes{split}" >> outcomes.WriteOutcomes(
                os.path.join(images.uri, f"outcomes-{split}.json"))
    images.split_names = artifact_utils.encode_split_names(list(tables))
    write_report(images.uri, {split: outcomes.read(os.path.join(images.uri, f"outcomes-{split}.json"))
                              for split in tables})


@tfx.dsl.components.component
def MFTrainer(transformed: InputArtifact[Examples], transform_graph: InputArtifact[TransformGraph],
              model: OutputArtifact[Model], config_json: Parameter[str],
              catalogue: InputArtifact[Examples] = None) -> None:
    """Weighted pairs -> user and item latent factors with TFRS (trainer/mf.py)."""
    import numpy as np
    import tensorflow_transform as tft
    from collabfeat.trainer import mf

    cfg = Config.from_json(config_json)
    graph = tft.TFTransformOutput(transform_graph.uri)
    user_ids = [u.decode() for u in graph.vocabulary_by_name("user_id")]
    item_ids = [i.decode() for i in graph.vocabulary_by_name("item_id")]

    def arrays(split):
        rows = list(examples.read(transformed.uri, split))
        return (np.array([r["user_idx"] for r in rows], np.int64), np.array([r["item_idx"] for r in rows], np.int64),
                np.array([r["rating"] for r in rows], np.float32))

    tu, ti, tr = arrays("train")
    eu, ei, _ = arrays("eval")
    known = (eu < len(user_ids)) & (ei < len(item_ids))      # eval pairs outside the train vocabularies
    factors = mf.train(tu, ti, tr, len(user_ids) + 1, len(item_ids) + 1, cfg.mf)
    factors = mf.Factors(factors.users[:len(user_ids)], factors.items[:len(item_ids)], factors.losses)
    train_pairs, eval_pairs = np.c_[tu, ti], np.c_[eu, ei][known]
    k = cfg.mf.recall_k
    popularity = mf.popularity(ti, len(user_ids), len(item_ids))
    report = {"users": len(user_ids), "items": len(item_ids), "train_pairs": int(len(tu)),
              "eval_pairs": int(known.sum()), "eval_pairs_cold": int((~known).sum()), "losses": factors.losses,
              f"recall@{k}": mf.recall_at_k(factors, train_pairs, eval_pairs, k),
              f"recall@{k}_popularity": mf.recall_at_k(popularity, train_pairs, eval_pairs, k)}
    if catalogue is not None:
        labels = {r["item_id"].decode(): r["label"] for r in examples.read(catalogue.uri, "catalogue")}
        have = np.array([labels.get(i, -1) >= 0 for i in item_ids])
        if have.sum() > 10:
            lab = np.array([labels.get(i, -1) for i in item_ids])[have]
            report["style_agreement@10"] = mf.neighbour_agreement(factors.items[have], lab, 10)
            report["style_agreement_chance"] = float(((np.bincount(lab) / len(lab)) ** 2).sum())
    mf.save(factors, user_ids, item_ids, os.path.join(model.uri, "factors.npz"))
    write_report(model.uri, report)


def _training_set(images_uri: str, factors_path: str):
    """Catalogue images that have an item factor: (ids, images, labels, factors, counts)."""
    import numpy as np
    from collabfeat.catalogue import read_images
    from collabfeat.trainer import mf

    ids, pixels, labels = read_images(images_uri, "catalogue")
    f = mf.load(factors_path)
    row = {item: i for i, item in enumerate(f["item_ids"])}
    keep = np.array([i in row for i in ids])
    targets = f["items"][[row[i] for i in np.asarray(ids)[keep]]]
    counts = {"catalogue_images": len(ids), "with_factor": int(keep.sum()),
              "without_factor (never seen, or filtered out)": int((~keep).sum()),
              "factors_without_image": len(row) - int(keep.sum())}
    return np.asarray(ids)[keep], pixels[keep], labels[keep], targets, counts


def _train_collaborative(mode, pixels, targets, cfg):
    from collabfeat.trainer import cnn

    if mode == "regression":
        return cnn.train_regression(pixels, targets, cfg.cnn)
    classes = cnn.pseudo_classes(targets, cfg.cnn.clusters, cfg.cnn.seed)
    return cnn.train_classifier(pixels, classes, cfg.cnn.clusters, cfg.cnn)


@tfx.dsl.components.component
def CNNTrainer(images: InputArtifact[Examples], mf_model: InputArtifact[Model],
               model: OutputArtifact[Model], config_json: Parameter[str]) -> None:
    """Images -> the Keras CNN trained onto the items' latent factors (trainer/cnn.py)."""
    cfg = Config.from_json(config_json)
    _, pixels, _, targets, counts = _training_set(images.uri, os.path.join(mf_model.uri, "factors.npz"))
    net, losses = _train_collaborative(cfg.cnn.mode, pixels, targets, cfg)
    net.save(os.path.join(model.uri, "backbone.h5"))
    write_report(model.uri, {"mode": cfg.cnn.mode, "losses": losses, **counts})


def load_backbone(model_uri: str):
    import tensorflow as tf
    return tf.keras.models.load_model(os.path.join(model_uri, "backbone.h5"), compile=False)


@tfx.dsl.components.component
def Evaluator(images: InputArtifact[Examples], mf_model: InputArtifact[Model], model: InputArtifact[Model],
              evaluation: OutputArtifact[ModelEvaluation], blessing: OutputArtifact[ModelBlessing],
              config_json: Parameter[str]) -> None:
    """Retrieval precision@k and mAP on held-out labelled images: the served collaborative features
    against the other variant and the baselines. Blessed only if it beats random-init and pixels."""
    import numpy as np
    from collabfeat.catalogue import read_images
    from collabfeat.trainer import cnn
    from collabfeat.trainer.evaluate import bless, retrieval_metrics

    cfg = Config.from_json(config_json)
    split = "heldout" if "heldout" in artifact_utils.decode_split_names(images.split_names) else "catalogue"
    _, test_px, test_labels = read_images(images.uri, split)
    labelled = test_labels >= 0
    if labelled.sum() < 2:
        raise ValueError(f"evaluation needs labelled images: split {split!r} has {int(labelled.sum())}")
    test_px, test_labels = test_px[labelled], test_labels[labelled]
    _, pixels, labels, targets, _ = _training_set(images.uri, os.path.join(mf_model.uri, "factors.npz"))
    served = cfg.cnn.mode
    epochs = cfg.eval.baseline_epochs
    table = {served: retrieval_metrics(cnn.embed(load_backbone(model.uri), test_px), test_labels, cfg.eval.k)}
    # The other collaborative variant is always compared with the served one.
    for name in cfg.eval.baselines:
        if name == served == "pseudo_class":
            name = "regression"
        if name in ("pseudo_class", "regression"):
            net, _ = _train_collaborative(name, pixels, targets, cfg)
        elif name == "supervised":
            have = labels >= 0
            if have.sum() < 2:
                continue
            net, _ = cnn.train_classifier(pixels[have], labels[have], int(labels.max()) + 1, cfg.cnn, epochs)
        elif name == "rotation":
            net, _ = cnn.train_rotation(pixels, cfg.cnn, epochs)
        elif name == "random":
            net = cnn.random_init(cfg.cnn)
        else:
            table["pixels"] = retrieval_metrics(cnn.pixels(test_px), test_labels, cfg.eval.k)
            continue
        table[name] = retrieval_metrics(cnn.embed(net, test_px), test_labels, cfg.eval.k)
        # Kept for the explorer's feature-set switch (Indexer -> the pushed version).
        os.makedirs(os.path.join(evaluation.uri, "features", name), exist_ok=True)
        net.save(os.path.join(evaluation.uri, "features", name, "backbone.h5"))
    key = f"precision@{min(cfg.eval.k, len(test_px) - 1)}"
    blessed, beats = bless(table, served, key, cfg.eval.bless_margin)
    chance = float(((np.bincount(test_labels) / len(test_labels)) ** 2).sum())
    write_report(evaluation.uri, {"split": split, "images": int(len(test_px)), "served": served,
                                  "metric": key, "table": table, "margins": beats, "chance": chance})
    blessing.set_int_custom_property("blessed", int(blessed))
    open(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "w").close()
    write_report(blessing.uri, {"blessed": blessed, "margins": beats, "required": cfg.eval.bless_margin})


class ScannIndex(tfx.dsl.Artifact):
    """The catalogue's embeddings, item ids and a serialised ScaNN searcher (serving/index.py)."""
    TYPE_NAME = "collabfeat.ScannIndex"


@tfx.dsl.components.component
def Indexer(images: InputArtifact[Examples], model: InputArtifact[Model],
            index: OutputArtifact[ScannIndex], config_json: Parameter[str],
            evaluation: InputArtifact[ModelEvaluation] = None) -> None:
    """Embeds the whole catalogue and builds a ScaNN index; reports recall@k against exact search.
    Also writes a 2-D map of the catalogue and, for the explorer, the catalogue's embeddings under
    every feature set the Evaluator compared."""
    import time
    import numpy as np
    from collabfeat.catalogue import read_images
    from collabfeat.serving import index as scann_index
    from collabfeat.trainer import cnn

    cfg = Config.from_json(config_json)
    ids, pixels, _ = read_images(images.uri, "catalogue")
    emb = cnn.embed(load_backbone(model.uri), pixels)
    start = time.time()
    searcher = scann_index.build(emb, cfg.index)
    built = time.time() - start
    rng = np.random.default_rng(0)
    queries = emb[rng.choice(len(emb), min(1000, len(emb)), replace=False)]
    k = min(cfg.index.num_neighbors, len(emb))
    recall = scann_index.recall_against_exact(searcher, emb, queries, k)
    scann_index.save(searcher, ids, emb, index.uri, cfg.index)
    scann_index.write_map(emb, index.uri)
    sets = [cfg.cnn.mode]
    if evaluation is not None:
        for name in sorted(os.listdir(os.path.join(evaluation.uri, "features"))):
            path = os.path.join(evaluation.uri, "features", name, "backbone.h5")
            scann_index.write_feature_set(index.uri, name, cnn.embed(load_backbone(os.path.dirname(path)), pixels), path)
            sets.append(name)
        scann_index.write_feature_set(index.uri, "pixels", cnn.pixels(pixels))
        sets.append("pixels")
    write_report(index.uri, {"items": len(ids), "dim": int(emb.shape[1]), f"recall@{k}": recall,
                             "build_seconds": built, "required_recall": cfg.index.min_recall,
                             "kind": scann_index.kind(len(ids)), "feature_sets": sets})
    if recall < cfg.index.min_recall:
        raise RuntimeError(f"ScaNN recall@{k} {recall:.3f} is below index.min_recall {cfg.index.min_recall}: "
                           "raise index.leaves_to_search or index.reorder")


@tfx.dsl.components.component
def Pusher(model: InputArtifact[Model], index: InputArtifact[ScannIndex], blessing: InputArtifact[ModelBlessing],
           pushed_model: OutputArtifact[PushedModel], config_json: Parameter[str]) -> None:
    """A blessed model -> <push_dir>/<name>/<version>/: the serving SavedModel, and in
    assets.extra/ the ScaNN index and item-id table of the same version (serving/push.py)."""
    from collabfeat.serving import push

    cfg = Config.from_json(config_json)
    if not blessing.get_int_custom_property("blessed"):
        pushed_model.set_int_custom_property("pushed", 0)
        write_report(pushed_model.uri, {"pushed": False, "why": "the model was not blessed"})
        return
    path = push.push(load_backbone(model.uri), index.uri, cfg)
    pushed_model.set_int_custom_property("pushed", 1)
    pushed_model.set_string_custom_property("pushed_destination", path)
    write_report(pushed_model.uri, {"pushed": True, "destination": path,
                                    "version": int(os.path.basename(path))})
