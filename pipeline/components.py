"""Thin TFX component wrappers around the pure-Python core.

Each component takes the whole run configuration as JSON (`config_json`) and writes a
`report.json` beside its outputs; pipeline/report.py gathers those into the run report.
"""

import json
import os

import apache_beam as beam
from tfx import v1 as tfx
from tfx.types import artifact_utils

from collabfeat import examples
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


def read_report(uri: str) -> dict:
    with open(os.path.join(uri, "report.json")) as f:
        return json.load(f)


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
    counts_path = os.path.join(interactions.uri, "counts")

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
        _ = (out["counts"] | "CountsJson" >> beam.Map(lambda d: json.dumps(d, sort_keys=True))
             | "WriteCounts" >> beam.io.WriteToText(counts_path, shard_name_template="", num_shards=1))

    interactions.split_names = artifact_utils.encode_split_names(["train", "eval"])
    with open(counts_path) as f:
        counts = json.loads(f.read())
    pairs, users, items = {}, set(), set()
    for s in ("train", "eval"):
        pairs[s] = 0
        for r in examples.read(interactions.uri, s):
            pairs[s] += 1
            users.add(r["user_id"])
            items.add(r["item_id"])
    write_report(interactions.uri, {
        "rows": counts, "rows_total": sum(counts.values()), "pairs": pairs,
        "users": len(users), "items": len(items)})
