"""MovieLens ratings, the real user-item interaction set used by `bench mf` (and tests).

The data are GroupLens' MovieLens "latest-small" ratings (100,004 ratings of 9,066 movies by 671
users, 1995-2016) as redistributed in the R package dslabs (Irizarry & Gill, Artistic-2.0), which
Debian ships as r-cran-dslabs. env/run downloads that package and unpacks it, without R, into the
venv's share/collabfeat-data/; the R lazy-load database is read with PyPI's `rdata`. GroupLens'
terms apply to the ratings: research use, with acknowledgement, no redistribution by us.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
import sys
import warnings
import zlib

import numpy as np

DATA_DIR = os.path.join(
    sys.prefix, "share", "collabfeat-data", "r-cran-dslabs", "usr", "lib", "R", "site-library", "dslabs", "data"
)


def _unpack(blob: bytes) -> bytes:
    """One object of an R lazy-load database: 4-byte length, then a compression tag (R >= 2.10)."""
    tag, body = blob[4:5], blob[5:]
    if tag == b"Z":
        return zlib.decompress(body)
    if tag == b"2":
        return bz2.decompress(body)
    if tag == b"X":
        return lzma.decompress(body)
    if tag == b"0":
        return body
    return zlib.decompress(blob[4:])  # the original format: zlib right after the length


def read_dataset(name: str, data_dir: str = DATA_DIR):
    """The dslabs data set `name` as a pandas DataFrame (R data frames convert with rdata)."""

    rdx, rdb = os.path.join(data_dir, "Rdata.rdx"), os.path.join(data_dir, "Rdata.rdb")
    if not (os.path.exists(rdx) and os.path.exists(rdb)):
        raise FileNotFoundError(
            f"MovieLens: {rdx} not found. It comes from Debian's r-cran-dslabs, which env/run unpacks "
            "into the environment (rebuild it with `./run env`)."
        )
    with open(rdx, "rb") as f:
        index = _parse(gzip.decompress(f.read()))
    if name not in index["variables"]:
        raise KeyError(f"MovieLens: dslabs has no data set {name!r}")
    offset, length = (int(v) for v in index["variables"][name])
    with open(rdb, "rb") as f:
        f.seek(offset)
        blob = f.read(length)
    if len(blob) != length or struct.unpack(">I", blob[:4])[0] == 0:
        raise ValueError(f"MovieLens: {rdb} is truncated at data set {name!r}")
    return _parse(_unpack(blob))


def _parse(serialised: bytes):
    import rdata  # lazy: only for the MovieLens data

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Unknown file type")  # bare serialisations, no RDS header
        return rdata.conversion.convert(rdata.parser.parse_data(serialised))


def interactions(data_dir: str = DATA_DIR):
    """MovieLens as implicit feedback: every rating is an interaction weighted by its stars.
    Returns (users, items, weights, n_users, n_items, genres) with 0-based contiguous indices;
    genres[j] is movie j's genre string ("Comedy|Romance")."""
    frame = read_dataset("movielens", data_dir)
    users, user_index = np.unique(frame["userId"].to_numpy(np.int64), return_inverse=True)
    movies, item_index = np.unique(frame["movieId"].to_numpy(np.int64), return_inverse=True)
    weights = frame["rating"].to_numpy(np.float64)
    genres = frame.groupby("movieId", observed=True)["genres"].first().astype(str).reindex(movies).to_numpy()
    return user_index, item_index, weights, len(users), len(movies), genres
