"""The evaluation's images and their facets, read from the ImageImport's Examples: what the Evaluator scores
and what the Pusher compares a candidate with the served version on."""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from collabfeat.catalogue import FACET_NAMES, read_labels
from collabfeat.catalogue import read_facets as read_split_facets


def evaluation_split(split_names: list[str]) -> str:
    """The split of labelled images the Evaluator and the Pusher's comparison use: the held-out
    images if there are any, else the catalogue's."""
    return "heldout" if "heldout" in split_names else "catalogue"


@functools.lru_cache(maxsize=16)
def id_order(uri: str, split: str) -> tuple[tuple[str, ...], np.ndarray]:
    """A split's item ids sorted, and the permutation that sorts its records (file order) so. The
    Evaluator and the Pusher score every split in this order: the import's Beam workers write
    records in an order that changes from run to run, and ties in a ranking are broken by position."""

    ids = list(read_labels(uri, split))
    order = np.argsort(np.array(ids, dtype=object), kind="stable")
    return tuple(ids[i] for i in order), order


class Facet(NamedTuple):
    """One column of the evaluation: the splits whose images are pooled (in this order), each
    image's value (-1: none), and which images query (None: every one with a value)."""

    splits: tuple[str, ...]
    values: np.ndarray
    queries: np.ndarray | None = None


def facets(images_uri: str, split_names: list[str]) -> dict[str, Facet]:
    """facet name -> Facet for the evaluation, on the images of evaluation_split(split_names) under
    images_uri: the held-out images' category and style; the
    unseen style (the "unseen" split's images, in a style no catalogue image has, pooled with the
    held-out images: each of them queries, and should find its own style); the transfer split's
    labels ("transfer": another source's categories). A facet needs at least 2 images with a value."""
    split = evaluation_split(split_names)

    def read_facets(uri, sp):  # in item-id order (id_order)
        return {f: v[id_order(uri, sp)[1]] for f, v in read_split_facets(uri, sp).items()}

    own = read_facets(images_uri, split)
    out = {FACET_NAMES[f]: Facet((split,), v) for f, v in own.items()}
    if "unseen" in split_names and "style" in own:
        unseen = read_facets(images_uri, "unseen").get("style")
        if unseen is not None:
            out["unseen_style"] = Facet(
                (split, "unseen"),
                np.concatenate([own["style"], unseen]),
                np.r_[np.zeros(len(own["style"]), bool), unseen >= 0],
            )
    if "transfer" in split_names:
        labels = read_facets(images_uri, "transfer").get("label")
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
