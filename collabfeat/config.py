"""All configuration in one place: typed dataclasses with defaults, validated by pydantic.

Override from a YAML file (`--config FILE`) and/or dotted CLI settings
(`--set mf.dim=64 --set cnn.epochs=3`). A run is fully described by one document
(written to the run directory as config.json). Each pipeline component receives only
the settings it uses (USES), so that TFX's cache re-runs it when one of those changes,
and not when another component's does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import field
from types import SimpleNamespace
from typing import Annotated, Any

import pydantic
import pydantic_core
import yaml
from pydantic.dataclasses import dataclass as pydantic_dataclass

from collabfeat.emoji import VENDORS
from collabfeat.features import COLLABORATIVE, FEATURE_SETS, REGISTRY


def _split_commas(value: Any) -> Any:
    """A list setting given as one string on the command line: "a,b" -> ["a", "b"]."""
    return [v for v in value.split(",") if v] if isinstance(value, str) else value


Strs = Annotated[list[str], pydantic.BeforeValidator(_split_commas)]
Ints = Annotated[list[int], pydantic.BeforeValidator(_split_commas)]
# Unknown settings are errors; a number given for a text setting is its text (`--set serving.model_name=7`).
SECTION = pydantic.ConfigDict(extra="forbid", coerce_numbers_to_str=True)


@pydantic_dataclass(config=SECTION)
class SimulatorConfig:
    """The behaviour-log generator for the embedded default data (see collabfeat/simulate.py)."""

    seed: int = 7
    n_users: int = 8000
    n_items: int = 6000  # at most this many catalogue images (emoji: every drawing of the catalogue's
    # emoji, about 3,700; fashion: drawn from Fashion-MNIST's training split)
    augment: bool = False  # grow the catalogue to n_items with seeded augmentations of its images (crop, flip,
    # rotation), each keeping its source's category and style, when the source has fewer (Behance size)
    n_eval_images: int = 2000  # at most this many held-out labelled images, never seen by users
    mean_views_per_user: float = 30.0
    activity_sigma: float = 1.0  # lognormal spread of user activity (power-law-like tail)
    popularity_exponent: float = 1.0  # Zipf exponent of item popularity within a style
    taste_concentration: float = 0.3  # Dirichlet concentration of users' tastes (over styles, over categories)
    n_styles: int = 8  # fashion: rendered styles (a print in a colourway), drawn independently of category
    vendors: Strs = field(default_factory=lambda: ["google", "twitter", "fluent"])  # emoji: the
    # catalogue's drawing styles (collabfeat/emoji.py VENDORS)
    unseen_vendor: str = "openmoji"  # emoji: a style left out of the catalogue and all training (the unseen-style
    # facet); empty: none
    heldout_fraction: float = 0.2  # emoji: share of emoji identities held out, every vendor's drawing of them
    style_weight: float = 1.0  # how sharply users follow their taste in styles (0: they ignore style)
    category_weight: float = 0.5  # how sharply they follow their taste in categories (0: they ignore it)
    n_transfer_images: int = 2000  # labelled clip art (Debian's openclipart-png) for the transfer facet; 0: none
    noise: float = 0.15  # share of views that ignore taste (uniform random items)
    appreciate_rate: float = 0.25  # P(appreciate | view), higher when the style is a strong taste
    comment_rate: float = 0.03
    bad_row_rate: float = 0.002  # planted bad log rows (unknown items, bad events, missing users)
    bad_image_count: int = 5  # planted corrupt / missing image files


@pydantic_dataclass(config=SECTION)
class DataConfig:
    """Where the input lives. Empty paths mean: generate the embedded default data."""

    source: str = "emoji"  # the default data's images: "emoji" (the same emoji drawn by several vendors,
    # collabfeat/emoji.py) or "fashion" (Fashion-MNIST in rendered prints)
    background: Ints = field(default_factory=lambda: [255, 255, 255])  # RGB that transparent pixels
    # are composited on, in the one preprocessing (collabfeat/images.py pixels)
    logs: str = ""  # CSV / Parquet / TFRecord file (or directory) of behaviour logs
    logs_format: str = ""  # csv | parquet | tfrecord; empty: from the extension (directory: csv)
    items: str = ""  # CSV: item_id, image (path relative to image_dir, or a URI), [label]
    image_dir: str = ""
    eval_items: str = ""  # CSV of held-out labelled images: item_id, image, label[, style]
    transfer_items: str = ""  # CSV of labelled images from another source (the transfer facet)
    unseen_items: str = ""  # CSV of held-out images in a style the catalogue lacks (item_id, image, label,
    # style): the unseen-style facet pools them with eval_items
    user_column: str = "user_id"
    item_column: str = "item_id"
    event_column: str = "event"
    time_column: str = "timestamp"


@pydantic_dataclass(config=SECTION)
class TransformConfig:
    """The Beam log transform: weights, log scaling, popularity filtering, splits."""

    event_weights: dict[str, float] = field(
        default_factory=lambda: {"view": 1.0, "appreciate": 4.0, "comment": 3.0, "own": 0.0}
    )
    min_user_items: int = 3  # users with fewer distinct items are dropped (least popular)
    min_item_users: int = 3  # items with fewer distinct users are dropped
    max_user_quantile: float = 0.999  # users above this activity quantile are dropped (bots)
    max_item_quantile: float = 0.999  # items above this popularity quantile are dropped
    filter_rounds: int = 2
    eval_fraction: float = 0.1  # share of each user's pairs held out for MF recall@k
    split_seed: int = 13
    bucket_rows: int = 1 << 20  # log rows per hash bucket of users: a Beam worker aggregates and
    # filters one bucket's pairs at a time (bounds memory)


@pydantic_dataclass(config=SECTION)
class MFConfig:
    """Matrix factorisation with TensorFlow Recommenders."""

    dim: int = 32
    objective: str = "mse"  # "mse": the paper's weighted squared loss; "softmax": TFRS
    # retrieval with in-batch negatives (solver adam)
    solver: str = "als"  # how mse is solved: "als", weighted ALS with conjugate gradients, a
    # compiled kernel per row; "adam", SGD with sampled negatives (softmax: always adam)
    alpha: float = 40.0  # als: confidence 1 + alpha * rating on observed pairs
    cg_steps: int = 3  # als: conjugate-gradient steps per row and half sweep
    bucket_pairs: int = 1 << 20  # als: train pairs held in memory (~37 B each); beyond, row-range buckets on disk
    negatives: int = 8  # adam, mse: sampled negatives per observed pair
    negative_weight: float = 0.3
    l2: float = 0.05  # lambda in the paper's objective
    epochs: int = 12  # ALS sweeps, or SGD epochs
    batch_size: int = 1024
    learning_rate: float = 0.01
    recall_k: int = 20
    seed: int = 1
    # Memory bounds: pairs stream from disk through a shuffle buffer of this many records; recall@k
    # is measured on a seeded sample of this many users, style agreement on this many items.
    shuffle_buffer: int = 262144
    eval_users: int = 20000
    agreement_items: int = 20000


@pydantic_dataclass(config=SECTION)
class CNNConfig:
    """The Keras CNN that maps an image to the collaborative feature space."""

    image_size: int = 64  # images are decoded to RGB and resized to image_size^2 (the emoji's own size)
    widths: Ints = field(default_factory=lambda: [32, 64, 128])
    embedding_dim: int = 64
    mode: str = "regression"  # the served model's mode: "regression" or "pseudo_class"
    regression_loss: str = "cosine"  # or "l2"
    retrieval: str = "pooled"  # the collaborative features a model gives: "pooled", the backbone's pooled
    # features, or "projection", the embedding layer trained onto the factors
    # (bench/results/finetune.json measures both)
    clusters: int = 16  # k-means pseudo-classes (mode=pseudo_class)
    epochs: int = 12
    batch_size: int = 128
    learning_rate: float = 2e-3
    augment: bool = True
    seed: int = 3
    deterministic: bool = True  # TensorFlow's ops run deterministically: the same seed and data give the same
    # model and report table (bench/determinism.py measures what it costs)
    shuffle_buffer: int = 10000  # images stream from disk through a shuffle buffer of this many
    epoch_images: int = 12000  # an epoch trains on at most this many images (0: all), from a
    # stream over all of them: training cost is bounded by the catalogue


@pydantic_dataclass(config=SECTION)
class EvalConfig:
    """Retrieval evaluation against baselines on held-out labelled images."""

    k: int = 10
    baselines: Strs = field(
        default_factory=lambda: [
            "supervised",
            "style_supervised",
            "imagenet",
            "imagenet_regression",
            "random",
            "pixels",
        ]
    )
    # supervised: trained on the catalogue's category labels; style_supervised: on its style labels (a
    # ceiling for the style facets: no behaviour knows the style better than its label); imagenet:
    # EfficientNet-Lite0's ImageNet features (collabfeat/imagenet.py); imagenet_regression: that
    # network fine-tuned onto the latent factors (the collaborative task from ImageNet weights);
    # opt-in: pseudo_class (the other collaborative variant), rotation (self-supervised)
    baseline_epochs: int = 12
    imagenet_size: int = 96  # images are upsampled to this before EfficientNet-Lite0
    bless_margin: float = 0.02  # collaborative must beat random and pixels by this much ...
    bless_on: str = "mean"  # ... on this: "mean", precision@k averaged over the facets (category,
    # style, transfer: those there are), or one facet's name; the
    # served-version comparison before a push uses it too
    serve: str = "best"  # the collaborative features to serve: "best", whichever of them (the CNNTrainer's
    # and imagenet_regression, pseudo_class: those compared) measures best on
    # eval.bless_on, or one of their names
    served_margin: float = 0.0  # a push must reach the served version's precision@k plus this, on the
    # same held-out images (negative: accept that much less)
    max_queries: int = 5000  # held-out images used as queries (a seeded sample beyond this);
    # each is ranked against all held-out images, in bounded chunks


@pydantic_dataclass(config=SECTION)
class FinetuneConfig:
    """Collaborative regression from EfficientNet-Lite0's ImageNet weights (imagenet_regression,
    trainer/cnn.py finetune_regression): the new head settles on the frozen network first, then
    every layer trains with AdamW, the head at a higher rate (the published recipe for fine-tuning
    on behaviour targets). Its rates are 5x the published 1e-4 / 1e-3: a 3,700-image catalogue
    gives 30 steps an epoch, and at 1e-4 the style barely moved (bench/results/finetune.json:
    pooled style P@10 0.476 against 0.675, category 0.414 against 0.487)."""

    size: int = 64  # images are upsampled to this for training and features
    warmup_epochs: int = 1  # the new head alone, on the frozen network
    epochs: int = 3  # then every layer
    learning_rate: float = 5e-4  # AdamW, the pretrained layers
    head_learning_rate: float = 2e-3  # AdamW, the new embedding and head
    weight_decay: float = 0.01
    distill: float = 0.0  # weight of keeping the pooled features near the frozen network's
    # (1 - cosine; no labels needed). Off: at 1.0 it cost 0.10 of style
    # (pooled P@10 0.675 -> 0.576) and did not help category (0.487 ->
    # 0.465), for 18% more time (finetune.json)


INDEX_KINDS = ("auto", "brute_force", "int8", "ah", "tree_bf", "tree_ah")  # serving/build/index.py::choose


@pydantic_dataclass(config=SECTION)
class IndexConfig:
    """ScaNN index over the catalogue's embeddings."""

    num_neighbors: int = 10
    kind: str = "auto"  # "auto" (by size and measured speed), "brute_force", "int8", "ah", "tree_bf" or "tree_ah"
    leaves: int = 0  # tree leaves; 0: sqrt(n) and 2 sqrt(n) tried (sqrt(n) alone if leaves_to_search is set)
    leaves_to_search: int = 0  # 0: tuned, the fewest that reach min_recall (serving/build/index.py)
    reorder: int = 0  # candidates re-scored exactly; 0: tuned with leaves_to_search
    min_recall: float = 0.95  # recall@num_neighbors against exact search the index must reach
    recall_queries: int = 1000  # seeded sample of catalogue items that measure recall against exact search
    map_sample: int = 20000  # UMAP is fitted on a seeded sample this large; the rest are placed
    # at the mean of their nearest sampled neighbours
    explorer_dims: int = 128  # the explorer's copy of a feature set with more dims (raw pixels, ImageNet's
    # 1,280) is projected onto this many: the top singular vectors of a seeded sample of it (at 10^6
    # items, pixels' 12,288 floats an item are 46 GB; 128 are 0.5 GB, read by slices per query)


@pydantic_dataclass(config=SECTION)
class ServingConfig:
    """Pushing, and the gRPC server (serving/server.py)."""

    model_name: str = "collabfeat"
    push_dir: str = ""  # where versions are pushed and served from; "": <runner.output_dir>/models,
    # so that runs, data and pushed versions live under one output root
    max_k: int = 100  # the largest k a `similar` request may ask for
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8500  # TF Serving's gRPC port
    poll_seconds: float = 2.0  # how often new versions are looked for
    workers: int = 16
    max_message_mb: int = 16  # larger requests get RESOURCE_EXHAUSTED
    max_images: int = 256  # images (or ids) per request
    batch_size: int = 64  # concurrent embedding requests are batched up to this many images
    batch_wait_ms: float = 0.0  # ... and wait this long for company (0: take what queued meanwhile)
    tls_cert: str = ""  # PEM files; both set = TLS
    tls_key: str = ""


@pydantic_dataclass(config=SECTION)
class RunnerConfig:
    pipeline_name: str = "collabfeat"
    output_dir: str = "runs"  # pipeline root, metadata and the generated default data
    direct_num_workers: int = 2
    direct_running_mode: str = "multi_processing"
    # Where the Beam stages run (pipeline/engine.py): "direct" (the DirectRunner), or "portable" (a
    # local Beam job service and a pool of SDK worker processes: the path of Flink, Spark, Dataflow)
    engine: str = "direct"
    portable_job_port: int = 8099  # the job service (Beam's default port)
    # The SDK worker pool. Not Beam's 50000: that lies in Linux's ephemeral range (32768-60999), where
    # any process's port-0 server or outgoing connection can take it while the pool starts.
    portable_pool_port: int = 8098
    cache: bool = True  # reuse a component's earlier outputs when its inputs, settings and code are unchanged
    # false: the behaviour path alone (logs -> MF, `--until mf`), without importing the image catalogue;
    # LogTransform then keeps items the catalogue may not have, and MF reports no facet agreement
    catalogue: bool = True
    beam_args: Strs = field(default_factory=list)  # extra Beam args (e.g. a cluster runner)
    # Kubeflow (kubeflow/runner.py): the pipeline image, where the repository sits in it, and the
    # pipeline root every component reads and writes (a bucket or a shared volume).
    container_image: str = "collabfeat/pipeline:latest"
    container_repo_dir: str = "/app"
    kubeflow_pipeline_root: str = "gs://YOUR-BUCKET/collabfeat"


@pydantic_dataclass(config=SECTION)
class Config:
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)
    mf: MFConfig = field(default_factory=MFConfig)
    cnn: CNNConfig = field(default_factory=CNNConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Config:
        return from_dict(json.loads(text))

    def validate(self) -> Config:
        problems = []
        if self.mf.objective not in ("mse", "softmax"):
            problems.append(f"mf.objective must be 'mse' or 'softmax', not {self.mf.objective!r}")
        if self.index.kind not in INDEX_KINDS:
            problems.append(
                "index.kind must be 'auto', 'brute_force', 'int8', 'ah', 'tree_bf' or 'tree_ah', "
                f"not {self.index.kind!r}"
            )
        if self.mf.solver not in ("als", "adam"):
            problems.append(f"mf.solver must be 'als' or 'adam', not {self.mf.solver!r}")
        if self.cnn.mode not in ("regression", "pseudo_class"):
            problems.append(f"cnn.mode must be 'regression' or 'pseudo_class', not {self.cnn.mode!r}")
        if self.eval.serve not in ("best",) + COLLABORATIVE:
            problems.append(f"eval.serve must be 'best' or one of {', '.join(COLLABORATIVE)}, not {self.eval.serve!r}")
        elif self.eval.serve not in ("best", self.cnn.mode) and self.eval.serve not in compared_features(self):
            problems.append(f"eval.serve is {self.eval.serve!r}, which eval.baselines does not train")
        if self.cnn.retrieval not in ("pooled", "projection"):
            problems.append(f"cnn.retrieval must be 'pooled' or 'projection', not {self.cnn.retrieval!r}")
        if self.cnn.regression_loss not in ("cosine", "l2"):
            problems.append(f"cnn.regression_loss must be 'cosine' or 'l2', not {self.cnn.regression_loss!r}")
        for name, w in self.transform.event_weights.items():
            if w < 0:
                problems.append(f"transform.event_weights.{name} is negative ({w})")
        if not 0 < self.transform.max_user_quantile <= 1 or not 0 < self.transform.max_item_quantile <= 1:
            problems.append("transform.max_*_quantile must be in (0, 1]")
        if not 0 <= self.transform.eval_fraction < 1:
            problems.append("transform.eval_fraction must be in [0, 1)")
        if self.index.explorer_dims < 2:
            problems.append(f"index.explorer_dims must be at least 2, not {self.index.explorer_dims}")
        if self.transform.bucket_rows < 1:
            problems.append(f"transform.bucket_rows must be at least 1, not {self.transform.bucket_rows}")
        if self.data.source not in ("emoji", "fashion"):
            problems.append(f"data.source must be 'emoji' or 'fashion', not {self.data.source!r}")
        if len(self.data.background) != 3 or not all(0 <= c <= 255 for c in self.data.background):
            problems.append(f"data.background must be three values in 0..255 (RGB), not {self.data.background}")
        if self.data.source == "emoji":
            sim = self.simulator
            unknown = [v for v in sim.vendors + [sim.unseen_vendor] if v and v not in VENDORS]
            if unknown:
                problems.append(
                    f"simulator.vendors / unseen_vendor: unknown vendor(s) {unknown} (known: {list(VENDORS)})"
                )
            if len(set(sim.vendors)) != len(sim.vendors) or len(sim.vendors) < 2 or sim.unseen_vendor in sim.vendors:
                problems.append("simulator.vendors must name at least two distinct vendors, and not unseen_vendor")
            if not 0 < sim.heldout_fraction < 1:
                problems.append(f"simulator.heldout_fraction must be in (0, 1), not {sim.heldout_fraction}")
        if not 1 <= self.simulator.n_styles <= 16:
            problems.append(
                f"simulator.n_styles must be in 1..16 (4 prints x 4 colourways), not {self.simulator.n_styles}"
            )
        if min(self.simulator.style_weight, self.simulator.category_weight) < 0:
            problems.append("simulator.style_weight and category_weight must not be negative")
        unknown_sets = set(self.eval.baselines) - set(FEATURE_SETS)
        if unknown_sets:
            problems.append(f"eval.baselines has unknown entries {sorted(unknown_sets)}")
        if self.runner.engine not in ("direct", "portable"):
            problems.append(f"runner.engine must be 'direct' or 'portable', not {self.runner.engine!r}")
        if self.runner.engine == "portable" and any(a.startswith("--runner") for a in self.runner.beam_args):
            problems.append(
                "runner.engine 'portable' starts its own Beam runner: remove --runner from runner.beam_args"
            )
        if self.cnn.image_size < 16:
            problems.append("cnn.image_size must be at least 16")
        sv = self.serving
        for name in ("workers", "batch_size", "max_k", "max_images", "max_message_mb"):
            if getattr(sv, name) < 1:
                problems.append(f"serving.{name} must be at least 1, not {getattr(sv, name)}")
        if sv.batch_wait_ms < 0:
            problems.append(f"serving.batch_wait_ms must be >= 0, not {sv.batch_wait_ms}")
        if problems:
            raise ValueError("invalid configuration:\n  " + "\n  ".join(problems))
        return self


def _problem(error: pydantic_core.ErrorDetails, root: type) -> str:
    """One of pydantic's validation errors, named by its setting as the rest of this module names them."""
    loc = [str(part) for part in error["loc"]]
    where = ".".join(loc)
    if error["type"] == "unexpected_keyword_argument":
        section: Any = root
        for part in loc[:-1]:
            section = typing.get_type_hints(section)[part]
        return f"{where}: unknown setting (known: {', '.join(sorted(f.name for f in dataclasses.fields(section)))})"
    if error["type"] == "dataclass_type":
        return f"{where}: expected a mapping, got {error['input']!r}"
    return f"{where}: cannot use {error['input']!r}: {error['msg']}"


def _make(cls: type, values: dict[str, Any], where: str = "") -> Any:
    """A config dataclass from plain values (YAML, --set, JSON), every error naming its setting."""
    if not isinstance(values, dict):
        raise ValueError(f"{where or 'the configuration'}: expected a mapping, got {values!r}")
    try:
        return cls(**values)
    except pydantic.ValidationError as e:
        prefix = f"{where}." if where else ""
        raise ValueError("\n".join(prefix + _problem(err, cls) for err in e.errors())) from None


def from_dict(values: dict[str, Any]) -> Config:
    return _make(Config, values or {})


def feature_node(kind: str) -> str:
    """The pipeline node that makes feature set `kind` (pipeline/components.py FeatureTrainer)."""
    return f"Features_{kind}"


def compared_features(cfg: Config) -> list[str]:
    """The feature sets the served model is compared with, in eval.baselines' order; "regression"
    or "pseudo_class" there names the collaborative variant that is not served (the served one is
    always in the table)."""
    other = "regression" if cfg.cnn.mode == "pseudo_class" else "pseudo_class"
    out: list[str] = []
    for name in cfg.eval.baselines:
        name = other if name in ("regression", "pseudo_class") else name
        if name not in out:
            out.append(name)
    return out


# The settings each of collabfeat's pipeline components uses: a whole section ("mf") or one setting
# ("cnn.image_size"). They are the component's parameters, so TFX's cache re-runs a component when
# one of them changes (or an input, or the code), and only then.
USES = {
    "ImageImport": (
        "data.items",
        "data.eval_items",
        "data.transfer_items",
        "data.unseen_items",
        "data.image_dir",
        "data.background",
        "cnn.image_size",
    ),
    "LogTransform": ("data.user_column", "data.item_column", "data.event_column", "transform"),
    "MFTrainer": ("mf",),
    "CNNTrainer": ("cnn", "data.background"),
    # the feature sets compared with the served one, each trained (or made) by its own node (feature_node)
    **{feature_node(kind): f.uses + ("data.background",) for kind, f in REGISTRY.items()},
    "Evaluator": (
        "cnn.mode",
        "cnn.seed",
        "eval.k",
        "eval.bless_margin",
        "eval.bless_on",
        "eval.max_queries",
        "eval.serve",
    ),
    "Indexer": ("cnn.mode", "index"),
    # what the pushed version records of its run: the explorer reads the item tables and the CNN's input
    "Pusher": (
        "serving.push_dir",
        "serving.model_name",
        "serving.max_k",
        "cnn.image_size",
        "cnn.mode",
        "data.items",
        "data.image_dir",
        "data.eval_items",
        "data.transfer_items",
        "data.unseen_items",
        # the comparison with the served version
        "eval.k",
        "eval.max_queries",
        "eval.served_margin",
        "eval.bless_on",
        "cnn.seed",
    ),
}


def settings_for(cfg: Config, component: str) -> str:
    """The settings `component` uses (USES), as JSON: {section: {setting: value}}."""
    full, out = dataclasses.asdict(cfg), {}  # type: dict[str, Any], dict[str, dict[str, Any]]
    for path in USES[component]:
        section, _, name = path.partition(".")
        if name:
            out.setdefault(section, {})[name] = full[section][name]
        else:
            out[section] = full[section]
    return json.dumps(out, sort_keys=True)


class Settings(SimpleNamespace):
    """Some of a run's settings; asking for one that is not there names it."""

    def __getattr__(self, name):
        where = self.__dict__.get("_where", "")
        raise AttributeError(
            f"setting {where}{name} was not given to this component: add it to its entry in collabfeat/config.py USES"
        )


def settings(text: str) -> Settings:
    """A component's settings (settings_for's JSON), read as cfg.section.setting: a whole section is
    its dataclass; a setting the component was not given raises AttributeError, never a default."""
    hints = typing.get_type_hints(Config)
    out = Settings()
    for section, values in json.loads(text).items():
        whole = _make(hints[section], values, section)
        names = {f.name for f in dataclasses.fields(whole)}
        setattr(
            out,
            section,
            whole
            if names <= set(values)
            else Settings(_where=f"{section}.", **{name: getattr(whole, name) for name in values}),
        )
    return out


def as_json(cfg) -> str:
    """A Config, or a component's settings (`settings`), as JSON."""
    if isinstance(cfg, Config):
        return cfg.to_json()

    def plain(v):
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return dataclasses.asdict(v)
        return {k: plain(x) for k, x in vars(v).items() if not k.startswith("_")} if isinstance(v, Settings) else v

    return json.dumps(plain(cfg), sort_keys=True)


def load(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file, then `section.key=value` overrides; validated."""
    values: dict[str, Any] = {}
    if path:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: the configuration must be a mapping")
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        node = values
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw else ""
    cfg = from_dict(values).validate()
    if not cfg.serving.push_dir:
        cfg.serving.push_dir = os.path.join(cfg.runner.output_dir, "models")
    return cfg
