"""The feature sets: the one registry of what the Evaluator can compare, what each is made from,
which settings it uses and what it gives. How each is made is trainer/features.py (keyed by the
same names); the pipeline has one node per feature set (config.feature_node).
"""

from __future__ import annotations

from dataclasses import dataclass

NET = ("cnn.image_size", "cnn.widths", "cnn.embedding_dim", "cnn.seed")  # the backbone's shape
FIT = NET + (
    "cnn.batch_size",
    "cnn.learning_rate",
    "cnn.augment",
    "cnn.shuffle_buffer",
    "cnn.epoch_images",
    "cnn.deterministic",
)


@dataclass(frozen=True)
class FeatureSet:
    name: str
    label: str  # as the reports name it
    reads: str  # what it is trained on: "factors" (the MF model's item factors), "category"
    # or "style" (the catalogue's labels), "images" (the images alone), "" (nothing)
    uses: tuple[str, ...]  # the settings it uses (config.USES: its node re-runs when one changes)
    gives: str  # its features
    collaborative: bool = False  # learned from behaviour: it can be served (eval.serve)


REGISTRY: dict[str, FeatureSet] = {
    f.name: f
    for f in (  # in the reports' order
        FeatureSet(
            "regression",
            "collaborative (regression)",
            "factors",
            ("cnn",),
            "the CNN from scratch regressed onto the item factors: pooled or projected (cnn.retrieval)",
            True,
        ),
        FeatureSet(
            "pseudo_class",
            "collaborative (pseudo-class)",
            "factors",
            ("cnn",),
            "the CNN from scratch classifying k-means clusters of the factors (the paper's variant)",
            True,
        ),
        FeatureSet(
            "imagenet_regression",
            "collaborative from ImageNet",
            "factors",
            FIT + ("cnn.regression_loss", "cnn.retrieval", "finetune"),
            "EfficientNet-Lite0 fine-tuned onto the item factors: pooled or projected (cnn.retrieval)",
            True,
        ),
        FeatureSet(
            "supervised",
            "category-supervised",
            "category",
            FIT + ("eval.baseline_epochs",),
            "the CNN trained on the catalogue's category labels (the paper's meta-class features)",
        ),
        FeatureSet(
            "style_supervised",
            "style-supervised (ceiling)",
            "style",
            FIT + ("eval.baseline_epochs",),
            "the CNN trained on the catalogue's style labels: no behaviour knows the style better",
        ),
        FeatureSet(
            "imagenet",
            "ImageNet (EfficientNet-Lite0)",
            "",
            ("cnn.image_size", "eval.imagenet_size"),
            "EfficientNet-Lite0's pooled ImageNet features",
        ),
        FeatureSet(
            "rotation",
            "self-supervised (rotation)",
            "images",
            FIT + ("eval.baseline_epochs",),
            "the CNN trained to tell how far an image was turned",
        ),
        FeatureSet("random", "random-init CNN", "", NET, "the CNN's untrained, seeded weights"),
        FeatureSet("pixels", "raw pixels", "", ("cnn.image_size",), "the image itself, scaled to [0, 1]"),
    )
}

FEATURE_SETS = tuple(REGISTRY)
FEATURE_NAMES = {name: f.label for name, f in REGISTRY.items()}
COLLABORATIVE = tuple(name for name, f in REGISTRY.items() if f.collaborative)
