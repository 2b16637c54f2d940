"""ExampleGen executors that stream: TFX's own, minus the two steps that hold every log row in memory.

TFX's CSV, Parquet and TFRecord ExampleGens write through `WriteSplit`, which reshuffles every
record (`beam.Reshuffle()`) before writing. On Beam's DirectRunner a shuffle's whole input is held
in the driver as Python objects: 5.3 GB at 4.6M log rows, 14.9 GB at 18M (README, "Scale:
measured"). TFX's CSV reader also infers the column types from a side input computed over the
parsed rows, so the runner keeps all parsed rows between the two stages.

These executors produce the same records, split and artifact properties, but
* write each split straight to gzipped TFRecords (no reshuffle: LogTransform aggregates, Transform
  and MFTrainer shuffle what they read; the files keep the logs' order), a file per byte range
  or bundle through TF's C++ writer, not Beam's per-record Python sink, and where the logs go to
  one split, without TFX's partition (a hash of every record to pick its split), and
* infer the CSV column types in a first pass over the files and convert in a second, each pass
  streaming, so the rows are parsed twice and never held, and
* read a large CSV file in byte ranges spread over the workers where that is safe (TFX reads each
  file in one worker), which more than pays for the second pass, and
* parse and convert a byte range a block at a time, not a Python call per row: pyarrow parses it,
  the column types are inferred over its distinct values with TFX's own rule, and tfx_bsl's C++
  encoder writes the tf.Examples. A file with a quote anywhere, or a column with no value at all,
  goes through TFX's row-by-row reader and converter instead.
"""

from __future__ import annotations

import functools
import io
import logging
import pickle
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows
from tfx.components.example_gen import utils, write_split
from tfx.components.example_gen.csv_example_gen import executor as csv_executor
from tfx.components.example_gen.custom_executors import parquet_executor
from tfx.components.example_gen.import_example_gen import executor as import_executor
from tfx.components.util import examples_utils
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.types import standard_component_specs as specs
from tfx.utils import io_utils, proto_utils
from tfx_bsl.coders import csv_decoder, example_coder

from collabfeat import examples


class _UnshuffledWrite:
    """The base ExampleGen executor's Do, writing each split without the reshuffle: every bundle (or
    byte range) writes a gzipped TFRecord file of its own under a scratch directory and reports (path,
    records); only the files reported are moved into the split, so a bundle that fails and is retried
    leaves nothing that counts twice. An executor whose input transform knows how many records it must
    write (`self.expected`: split -> count) gets them checked against those reports: a shortfall is run
    once more, then an error."""

    ATTEMPTS = 2

    def Do(self, input_dict: dict[str, list], output_dict: dict[str, list], exec_properties: dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        input_config = proto_utils.json_to_proto(exec_properties[specs.INPUT_CONFIG_KEY], example_gen_pb2.Input())
        output_config = proto_utils.json_to_proto(exec_properties[specs.OUTPUT_CONFIG_KEY], example_gen_pb2.Output())
        outputs = output_dict[specs.EXAMPLES_KEY]
        artifact = artifact_utils.get_single_instance(outputs)
        artifact.split_names = artifact_utils.encode_split_names(
            utils.generate_output_split_names(input_config, output_config)
        )
        self.expected: dict[str, int] = {}
        splits = artifact_utils.decode_split_names(artifact.split_names)
        self.scratch = f"{artifact.uri}/.scratch"
        try:
            for attempt in range(1, self.ATTEMPTS + 1):
                fileio.makedirs(self.scratch)
                with self._make_beam_pipeline() as p:
                    for split, parts in self._parts(p, exec_properties).items():
                        _ = (
                            parts
                            | f"Parts[{split}]" >> beam.combiners.ToList()
                            | f"Manifest[{split}]" >> beam.Map(_save, f"{self.scratch}/{split}.parts")
                        )
                written = {split: _move_parts(self.scratch, split, outputs) for split in splits}
                short = {split: (n, written[split]) for split, n in self.expected.items() if n != written[split]}
                if not short:
                    break
                what = "; ".join(f"split {s}: {n} rows read, {m} records written" for s, (n, m) in short.items())
                if attempt == self.ATTEMPTS:
                    raise RuntimeError(
                        f"LogsExampleGen: {what}. Beam's runner lost records, twice; not going on with part of the logs"
                    )
                logging.warning("LogsExampleGen: %s; Beam's runner lost records: writing again", what)
                for split in short:
                    fileio.rmtree(artifact_utils.get_split_uri(outputs, split))
                fileio.rmtree(self.scratch)
        finally:
            if fileio.exists(self.scratch):
                fileio.rmtree(self.scratch)
        payload = exec_properties.get(specs.OUTPUT_DATA_FORMAT_KEY)
        file_format = exec_properties.get(specs.OUTPUT_FILE_FORMAT_KEY)
        for artifact in outputs:
            for split, n in written.items():  # what LogTransform sizes its buckets by
                artifact.set_int_custom_property(f"records_{split}", n)
            if payload:
                examples_utils.set_payload_format(artifact, payload)
            if file_format:
                examples_utils.set_file_format(artifact, write_split.to_file_format_str(file_format))

    def _parts(self, pipeline: beam.Pipeline, exec_properties: dict[str, Any]) -> dict[str, beam.PCollection]:
        """split -> (path, records) of the files written for it under the scratch directory."""
        return {
            split: records
            | f"Serialize[{split}]" >> beam.ParDo(write_split.MaybeSerialize())
            | f"Write[{split}]" >> beam.ParDo(_WriteBundles(f"{self.scratch}/{split}"))
            for split, records in self.GenerateExamplesByBeam(pipeline, exec_properties).items()
        }


def _move_parts(scratch: str, split: str, outputs: list) -> int:
    """The files a split's manifest names -> the split's directory; the records in them."""
    with fileio.open(f"{scratch}/{split}.parts", "rb") as f:
        return examples.move_parts(pickle.load(f), artifact_utils.get_split_uri(outputs, split))


def _write_records(path: str, records: Iterable[bytes]) -> int:
    """examples.write_records, looked up here when a block is written (a test makes it lose records)."""
    return examples.write_records(path, records)


class _WriteBundles(beam.DoFn):
    """Serialized records -> a gzipped TFRecord file per bundle under `directory`, and at the bundle's
    end (path, records written)."""

    def __init__(self, directory: str):
        self.directory = directory

    def start_bundle(self):
        self.path, self.file, self.n = "", None, 0

    def process(self, record: bytes):
        if self.file is None:
            fileio.makedirs(self.directory)
            self.path = examples.part_path(self.directory)
            self.file = examples.record_writer(self.path)
        self.file.write(record)
        self.n += 1

    def finish_bundle(self):
        if self.file is not None:
            self.file.close()
            yield GlobalWindows.windowed_value((self.path, self.n))


RANGE_BYTES = 16 << 20


def _ranges(path: str) -> Iterator[tuple[str, int, int]]:
    """A file as byte ranges that workers can read in parallel; the whole file as one range when
    it is compressed or has a quote anywhere (a quoted field may span lines, so only the start of
    the file tells where a record starts)."""
    size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    splittable = CompressionTypes.detect_compression_type(path) == CompressionTypes.UNCOMPRESSED
    if splittable:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            while splittable and (chunk := f.read(1 << 20)):
                splittable = b'"' not in chunk
    if not splittable:
        yield path, 0, -1
        return
    for start in range(0, max(size, 1), RANGE_BYTES):
        yield path, start, start + RANGE_BYTES


def _read_range(r: tuple[str, int, int]) -> Iterator[str]:
    """The CSV records that start in [start, end) of a file, the header skipped. A whole file
    (end -1) goes through TFX's own reader, which joins quoted fields that span lines."""
    path, start, end = r
    if end < 0:
        yield from csv_executor._ReadCsvRecordsFromTextFile().process(path)
        return
    *lines, last = _range_bytes(r).split(b"\n")
    for line in lines:
        yield (line + b"\n").decode("utf-8")
    if last:  # the file's last line, without a line break
        yield last.decode("utf-8")


ColumnType = csv_decoder.ColumnType


def _range_bytes(r: tuple[str, int, int]) -> bytes:
    """The bytes of the records that start in [start, end) of a file, the header skipped, in one read."""
    path, start, end = r
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        if start == 0:
            pos = len(f.readline())  # the header
        else:
            f.seek(start - 1)
            pos = start - 1 + len(f.readline())  # the rest of the line a previous range owns
        if pos >= end:
            return b""
        data = f.read(end - pos)
        return data + f.readline() if data and not data.endswith(b"\n") else data


def _read_block(r: tuple[str, int, int], columns: list[str]) -> pa.Table:
    """The records that start in a byte range of a file without quotes (_ranges), parsed by pyarrow: every
    column as bytes, an empty cell as b"" (blank lines skipped, as TFX's reader skips them)."""
    data = _range_bytes(r)
    if not data.strip():
        return pa.table({c: pa.array([], pa.binary()) for c in columns})
    try:
        return pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=columns),
            parse_options=pacsv.ParseOptions(quote_char=False),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.binary() for c in columns}, strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid as e:
        raise ValueError(f"{r[0]} (bytes {r[1]} to {r[2]}): {e}") from None


def _filled(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return column.filter(pc.not_equal(pc.binary_length(column), 0))


def _cells_type(column: pa.ChunkedArray) -> ColumnType:
    """TFX's column type (csv_decoder's rule: the widest of INT < FLOAT < STRING over the non-empty cells,
    UNKNOWN if none), decided by pyarrow where it parses every cell as int64 (a stricter parser than
    Python's int()), else by TFX's own rule over the distinct cells."""
    filled = _filled(column)
    if len(filled) == 0:
        return ColumnType.UNKNOWN
    try:
        pc.cast(filled, pa.int64())
        return ColumnType.INT
    except pa.ArrowInvalid:
        return max(csv_decoder._InferValueType(v) for v in pc.unique(filled).to_pylist())


def _block_types(r: tuple[str, int, int], columns: list[str]) -> tuple[dict, int]:
    """(column -> type, rows) of one byte range."""
    table = _read_block(r, columns)
    return {c: _cells_type(table[c]) for c in columns}, table.num_rows


def _merge_types(parts) -> tuple[dict, int]:
    types: dict = {}
    rows = 0
    for part, n in parts:
        for c, t in part.items():
            types[c] = max(types.get(c, t), t)
        rows += n
    return types, rows


def _typed(column: pa.ChunkedArray, kind: ColumnType) -> pa.Array:
    """A column of cells -> the list array tf.Examples are encoded from: one value a row, none for an empty
    cell (TFX's converter writes an empty list there), typed as TFX's handlers type it."""
    column = column.combine_chunks()
    filled = pc.not_equal(pc.binary_length(column), 0)
    values = column.filter(filled)
    if kind == ColumnType.STRING:
        typed = values
    else:
        target, parse = (pa.int64(), int) if kind == ColumnType.INT else (pa.float64(), float)
        try:
            typed = pc.cast(values, target)
        except pa.ArrowInvalid:  # cells Python reads and pyarrow does not (e.g. "+5", " 1.5")
            typed = pa.array([parse(v) for v in values.to_pylist()], target)
        if kind == ColumnType.FLOAT:
            typed = pc.cast(typed, pa.float32())  # as a tf.train.FloatList holds Python's float
    offsets = np.zeros(len(column) + 1, np.int32)
    np.cumsum(filled.to_numpy(zero_copy_only=False), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), typed)


ENCODE_ROWS = 8192  # tf.Examples encoded at a time


def _block_examples(r: tuple[str, int, int], columns: list[str], infos: list) -> Iterator[bytes]:
    """The serialized tf.Examples of one byte range, encoded by tfx_bsl (C++) ENCODE_ROWS at a time."""
    table = _read_block(r, columns)
    if table.num_rows == 0:
        return
    batch = pa.RecordBatch.from_arrays([_typed(table[i.name], i.type) for i in infos], [i.name for i in infos])
    encoder = example_coder.RecordBatchToExamplesEncoder()
    for start in range(0, batch.num_rows, ENCODE_ROWS):
        yield from encoder.encode(batch.slice(start, ENCODE_ROWS))


def _write_block(
    block: tuple[int, tuple[str, int, int]], columns: list[str], infos: list, directory: str
) -> tuple[str, int]:
    """(index, byte range) -> a gzipped TFRecord file of the range's tf.Examples under `directory`, named
    by the index (the split's files then hold the records in the logs' order; a retry writes it again):
    (path, records)."""
    index, r = block
    fileio.makedirs(directory)
    path = f"{directory}/block-{index:06d}.gz"
    return path, _write_records(path, _block_examples(r, columns, infos))


def _column_types(options, blocks, whole, columns, out: str) -> None:
    """The first pass, a Beam pipeline of its own: the column types as TFX's CsvExampleGen infers
    them (over all rows), and the number of rows, pickled to `out`. (Given to the conversion as a
    value, not as a side input over the parsed rows.) `blocks`: byte ranges read by pyarrow; `whole`:
    files read by TFX's reader."""
    with beam.Pipeline(options=options) as p:
        parts = []
        if blocks:
            parts.append(
                p
                | "Blocks" >> beam.Create(blocks)
                | "SpreadBlocks" >> beam.Reshuffle()
                | "BlockTypes" >> beam.Map(_block_types, columns)
            )
        if whole:
            rows = (
                p
                | "Files" >> beam.Create(whole)
                | "Spread" >> beam.Reshuffle()
                | "Read" >> beam.FlatMap(_read_range)
                | "Parse" >> beam.ParDo(csv_decoder.ParseCSVLine(delimiter=","))
                | "Rows" >> beam.Keys()
            )
            types = rows | "InferColumnTypes" >> beam.CombineGlobally(
                csv_decoder.ColumnTypeInferrer(columns, skip_blank_lines=True)
            )
            count = rows | "NotBlank" >> beam.Filter(bool) | "Count" >> beam.combiners.Count.Globally()
            parts.append(
                types
                | "FileTypes"
                >> beam.Map(lambda infos, n: ({i.name: i.type for i in infos}, n), beam.pvalue.AsSingleton(count))
            )
        _ = (
            parts
            | "Parts" >> beam.Flatten()
            | "Merge" >> beam.CombineGlobally(_merge_types)
            | "Save" >> beam.Map(_save, out)
        )


def _save(types_and_count, path):
    with fileio.open(path, "wb") as f:
        pickle.dump(types_and_count, f)


@beam.ptransform_fn
def _CsvToExample(
    pipeline: beam.Pipeline,
    exec_properties: dict[str, Any],
    split_pattern: str,
    executor: CsvExecutor,
    directory: str = "",
):
    """CSV files -> tf.Examples, typed as TFX's CsvExampleGen types them (over all rows); with a
    `directory`, written there as gzipped TFRecord files: (path, records) per file."""
    pattern = f"{exec_properties[specs.INPUT_BASE_KEY]}/{split_pattern}"
    files = fileio.glob(pattern)
    if not files:
        raise RuntimeError(f"Split pattern {pattern} does not match any files.")
    columns = io_utils.load_csv_column_names(files[0])
    for f in files[1:]:
        if io_utils.load_csv_column_names(f) != columns:
            raise RuntimeError(f"Files in same split {pattern} have different header.")
    ranges = [r for f in files for r in _ranges(f)]  # each file scanned for quotes once
    blocks, whole = [r for r in ranges if r[2] >= 0], [r for r in ranges if r[2] < 0]
    if executor.types is None:
        scratch = f"{executor.scratch}/column_types.pickle"
        _column_types(pipeline.pipeline.options, blocks, whole, columns, scratch)
        with fileio.open(scratch, "rb") as f:
            types, executor.rows = pickle.load(f)
        fileio.remove(scratch)
        executor.types = [csv_decoder.ColumnInfo(c, types.get(c, ColumnType.UNKNOWN)) for c in columns]
    if any(i.type == ColumnType.UNKNOWN for i in executor.types):  # no value to type: TFX writes an empty feature
        blocks, whole = [], ranges
    parts = []
    if blocks:
        if directory:
            parts.append(
                pipeline
                | "Blocks" >> beam.Create(list(enumerate(blocks)))
                | "SpreadBlocks" >> beam.Reshuffle()
                | "WriteBlocks" >> beam.Map(_write_block, columns, executor.types, directory)
            )
        else:
            parts.append(
                pipeline
                | "Blocks" >> beam.Create(blocks)
                | "SpreadBlocks" >> beam.Reshuffle()
                | "BlockExamples" >> beam.FlatMap(_block_examples, columns, executor.types)
            )
    if whole:
        records = (
            pipeline
            | "Files" >> beam.Create(whole)
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.FlatMap(_read_range)
            | "Parse" >> beam.ParDo(csv_decoder.ParseCSVLine(delimiter=","))
            | "Rows" >> beam.Keys()
            | "ToTFExample" >> beam.ParDo(csv_executor._ParsedCsvToTfExample(), executor.types)
        )
        parts.append(
            records
            | "Serialize" >> beam.ParDo(write_split.MaybeSerialize())
            | "WriteFiles" >> beam.ParDo(_WriteBundles(directory))
            if directory
            else records
        )
    return parts | "Records" >> beam.Flatten()


class CsvExecutor(_UnshuffledWrite, csv_executor.Executor):
    """Two passes, each a streaming Beam pipeline: the column types and row count, then the
    conversion, each byte range writing its own file where the logs go to one split (TFX's
    partition by a hash of every record is skipped then); the records written are counted
    against the rows read."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        self.types, self.rows = None, 0  # inferred in the first attempt's first pass
        super().Do(input_dict, output_dict, exec_properties)

    def _parts(self, pipeline, exec_properties):
        input_config = proto_utils.json_to_proto(exec_properties[specs.INPUT_CONFIG_KEY], example_gen_pb2.Input())
        output_config = proto_utils.json_to_proto(exec_properties[specs.OUTPUT_CONFIG_KEY], example_gen_pb2.Output())
        names = utils.generate_output_split_names(input_config, output_config)
        if len(names) == 1 and len(input_config.splits) == 1:  # one split: every row goes to it
            [split] = names
            parts = pipeline | "InputToRecord" >> _CsvToExample(  # pylint: disable=no-value-for-parameter
                exec_properties, input_config.splits[0].pattern, self, f"{self.scratch}/{split}"
            )
            self.expected = {split: self.rows}
            return {split: parts}
        return super()._parts(pipeline, exec_properties)

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return functools.partial(_CsvToExample, executor=self)


class ParquetExecutor(_UnshuffledWrite, parquet_executor.Executor):
    pass


class ImportExecutor(_UnshuffledWrite, import_executor.Executor):
    pass
