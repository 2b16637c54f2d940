"""Artifact I/O on any filesystem TensorFlow knows: local paths, and URIs (gs://, s3://, hdfs://,
ram://) through tf.io.gfile. Local paths take Python's own file functions, so nothing imports
TensorFlow to read a report. Libraries that can only write or read local files (ScaNN, h5py)
work in a local temporary directory that is copied to or from the URI (local_dir, local_copy)."""

from __future__ import annotations

import builtins
import contextlib
import glob as globbing
import json
import os
import shutil
import tempfile
from collections.abc import Iterator


def is_local(path: str) -> bool:
    return "://" not in path


def _gfile():
    import tensorflow as tf  # lazy: TensorFlow's start-up (seconds), only on this path

    return tf.io.gfile


def open(path: str, mode: str = "r"):  # noqa: A001 - the module's version of open()

    return builtins.open(path, mode) if is_local(path) else _gfile().GFile(path, mode)


def exists(path: str) -> bool:
    return os.path.exists(path) if is_local(path) else _gfile().exists(path)


def isdir(path: str) -> bool:
    return os.path.isdir(path) if is_local(path) else _gfile().isdir(path)


def glob(pattern: str) -> list[str]:
    if is_local(pattern):
        return sorted(globbing.glob(pattern))
    return sorted(_gfile().glob(pattern))


def makedirs(path: str) -> None:
    if is_local(path):
        os.makedirs(path, exist_ok=True)
    else:
        _gfile().makedirs(path)


def listdir(path: str) -> list[str]:
    """The names in a directory ([] if there is none)."""
    if not exists(path):
        return []
    return os.listdir(path) if is_local(path) else [n.rstrip("/") for n in _gfile().listdir(path)]


def rmtree(path: str) -> None:
    """Like shutil.rmtree(path, ignore_errors=True), on any filesystem."""
    if is_local(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    import tensorflow as tf  # lazy: TensorFlow's start-up (seconds), only on this path

    try:
        _gfile().rmtree(path)
    except tf.errors.OpError:
        pass


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def write_json(path: str, value, **kwargs) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(value, **kwargs))


def copytree(src: str, dst: str) -> None:
    """Every file under src to the same place under dst (either may be a URI)."""
    if is_local(src) and is_local(dst):
        shutil.copytree(src, dst, dirs_exist_ok=True)
        return
    g = _gfile()
    for d, _, files in g.walk(src):
        rel = d.rstrip("/")[len(src.rstrip("/")) :].strip("/")
        target = os.path.join(dst, rel) if rel else dst
        makedirs(target)
        for name in files:
            g.copy(os.path.join(d, name), os.path.join(target, name), overwrite=True)


def copy(src: str, dst: str) -> None:
    """One file (either path may be a URI)."""
    if is_local(src) and is_local(dst):
        shutil.copyfile(src, dst)
    else:
        _gfile().copy(src, dst, overwrite=True)


@contextlib.contextmanager
def local_dir(uri: str) -> Iterator[str]:
    """A local directory whose files end up under `uri`: `uri` itself if it is local, else a
    temporary directory copied there when the block ends without an error."""
    if is_local(uri):
        os.makedirs(uri, exist_ok=True)
        yield uri
        return
    with tempfile.TemporaryDirectory(prefix="collabfeat-") as tmp:
        yield tmp
        copytree(tmp, uri)


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """`uri` (a file or a directory) on local disk: itself if it is local, else a temporary copy."""
    if is_local(uri):
        yield uri
        return
    with tempfile.TemporaryDirectory(prefix="collabfeat-") as tmp:
        path = os.path.join(tmp, os.path.basename(uri.rstrip("/")))
        if isdir(uri):
            copytree(uri, path)
        else:
            _gfile().copy(uri, path)
        yield path
