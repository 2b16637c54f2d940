"""Row accounting: every input row ends as `used` or a named reason, counted, with examples.

A Beam stage emits (outcome, rows, detail) tuples; WriteOutcomes sums them per outcome and
keeps up to EXAMPLES details per reason (a detail names the record and the field), written as
one JSON document: {"counts": {outcome: rows}, "examples": {reason: [detail, ...]}}.
"""

from __future__ import annotations

import json

import apache_beam as beam

from collabfeat import storage

USED = "used"
EXAMPLES = 5


def _merge(parts):
    counts, samples = parts
    return json.dumps({"counts": counts, "examples": samples}, sort_keys=True)


class WriteOutcomes(beam.PTransform):
    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def expand(self, outcomes):
        counts = (
            outcomes
            | "Rows" >> beam.Map(lambda o: (o[0], o[1]))
            | "Sum" >> beam.CombinePerKey(sum)
            | "CountDict" >> beam.combiners.ToDict()
        )
        samples = (
            outcomes
            | "Details" >> beam.Filter(lambda o: o[0] != USED and o[2])
            | "ByReason" >> beam.Map(lambda o: (o[0], o[2]))
            | "Sample" >> beam.combiners.Top.SmallestPerKey(EXAMPLES)
            | "SampleDict" >> beam.combiners.ToDict()
        )
        return (
            counts
            | "Merge" >> beam.Map(lambda c, s: _merge((c, s)), s=beam.pvalue.AsSingleton(samples))
            | "Write" >> beam.io.WriteToText(self.path, shard_name_template="", num_shards=1)
        )


def read(path: str) -> dict:

    return storage.read_json(path)
