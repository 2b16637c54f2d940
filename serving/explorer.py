"""The explorer: "do these features retrieve X?" (after Do deep features retrieve X?, 2015).

    collabfeat explore [--port 8600]      then open http://127.0.0.1:8600/

A page over a pushed version: the same SavedModel and ScaNN index that serving uses (through
serving/server.py's Version), plus the version's other feature sets (the baselines the Evaluator
compared) and its 2-D map. Browse the catalogue (a paged grid in map order, or the map itself),
click an image or upload one to query, see the similarity-against-rank curve, brush a window along
the ranking, click a neighbour to query from it, overlay several queries' curves, and switch the
feature set to see whether other features retrieve the same thing.

Safety: images are served by catalogue item id only (never by path), as bounded thumbnails;
static files come from a fixed list; uploads and request bodies are size-limited.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cachetools
import numpy as np

from collabfeat import feature_model, topk
from collabfeat import images as images_lib
from collabfeat.config import ServingConfig
from serving import store
from serving.registry import Version
from serving.store import EXTRA, newest_version

log = logging.getLogger("collabfeat.explorer")
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_UPLOAD = 10 << 20
THUMB_MIN, THUMB_MAX, THUMB_DEFAULT = 16, 256, 96
STRIP = 200  # neighbours sent per query
CURVE_POINTS = 600  # samples of the similarity-against-rank curve
MAP_POINTS = 8000  # the map draws a seeded sample of this many items as points ...
MAP_BINS = 120  # ... over a density layer of all of them on a MAP_BINS^2 grid
FACETS = {"label": "category", "style": "style"}  # item table columns the map can colour by


def _static_files() -> dict[str, str]:
    import plotly  # lazy: plotly, only to draw

    files = {name: os.path.join(STATIC, name) for name in ("explorer.html", "explorer.js", "explorer.css")}
    files["plotly.min.js"] = os.path.join(os.path.dirname(plotly.__file__), "package_data", "plotly.min.js")
    return files


class LRU:
    """A thread-safe least-recently-used cache of `size` entries (cachetools' LRUCache under a lock)."""

    def __init__(self, size: int):
        self.cache, self.lock = cachetools.LRUCache(maxsize=size), threading.Lock()

    def get(self, key):
        with self.lock:
            return self.cache.get(key)

    def get_or(self, key, make):
        """The cached value of `key`, or make() (outside the lock), cached."""
        with self.lock:
            if key in self.cache:
                return self.cache[key]
        value = make()
        with self.lock:
            self.cache[key] = value
        return value


class Catalogue:
    """A pushed version seen through its feature sets."""

    def __init__(self, version_path: str, cfg: ServingConfig):

        self.version = Version(
            os.path.basename(os.path.dirname(version_path)), int(os.path.basename(version_path)), version_path, cfg
        ).load()
        extra = os.path.join(version_path, EXTRA)
        self.run_cfg = self.version.run_cfg
        self.served = self.version.index["meta"].get("served", self.run_cfg["cnn"]["mode"])
        self.ids = list(self.version.index["item_ids"])
        self.row = self.version.row
        # Every feature set's embeddings are read by slices (store.EmbeddingFile): at 10^6 items they stay
        # on disk and in the kernel's cache, and the explorer's memory holds a slice at a time.
        self.sets: dict[str, dict] = {
            self.served: {"embeddings": store.EmbeddingFile(os.path.join(extra, "embeddings.npy")), "net": None}
        }
        features = os.path.join(extra, "features")
        for name in sorted(os.listdir(features)) if os.path.isdir(features) else []:
            projection = os.path.join(features, name, "projection.npy")  # a set stored in fewer dims
            entry = {
                "embeddings": store.EmbeddingFile(os.path.join(features, name, "embeddings.npy")),
                "projection": np.load(projection) if os.path.exists(projection) else None,
                "net": None,
                "model": os.path.join(features, name, "model"),
            }
            self.sets[name] = entry
        report = os.path.join(extra, "report.html")  # the run that made this version (pipeline/report_html.py)
        self.report = report if os.path.exists(report) else None
        self.map = None
        if os.path.exists(os.path.join(extra, "map.json")):
            with open(os.path.join(extra, "map.json")) as f:
                self.map = json.load(f)
        self.size = self.run_cfg["cnn"]["image_size"]
        self.images, self.facets = self._item_table()
        self.labels = self.facets.get("category", {})
        self.map_view = self._map_view() if self.map else None
        self.thumbs, self.uploads = LRU(4096), LRU(256)
        self.net_lock = threading.Lock()

    def _item_table(self):
        """item id -> image reference, and facet -> item id -> value (the item tables' label, as
        "category", and style columns), from the run's item tables (if still there)."""
        data = self.run_cfg["data"]
        refs, facets = {}, {}
        for key in ("items", "eval_items"):
            path = data.get(key)
            if path and os.path.exists(path):
                with open(path, newline="") as f:
                    for r in csv.DictReader(f):
                        if r.get("item_id") in self.row:
                            refs[r["item_id"]] = r.get("image", "")
                            for column, facet in FACETS.items():
                                if r.get(column, "") not in ("", None):
                                    facets.setdefault(facet, {})[r["item_id"]] = r[column]
        return refs, facets

    def _map_view(self) -> dict:
        """What the map draws, computed once: a seeded sample of at most MAP_POINTS items as points,
        and every item as a density grid, so the page stays light for any catalogue size."""

        x, y = np.asarray(self.map["x"], np.float32), np.asarray(self.map["y"], np.float32)
        rows = topk.sample(len(x), MAP_POINTS, 0)
        density, xe, ye = np.histogram2d(x, y, bins=MAP_BINS)
        return {
            "ids": [self.ids[r] for r in rows],
            "x": x[rows].round(3).tolist(),
            "y": y[rows].round(3).tolist(),
            "labels": [self.labels.get(self.ids[r]) for r in rows],
            "total": len(x),
            "facets": {facet: [values.get(self.ids[r]) for r in rows] for facet, values in self.facets.items()},
            "density": {
                "x": ((xe[:-1] + xe[1:]) / 2).round(3).tolist(),
                "y": ((ye[:-1] + ye[1:]) / 2).round(3).tolist(),
                "z": density.T.astype(int).tolist(),
            },
        }

    # --- images ---------------------------------------------------------------------------------
    def thumbnail(self, item: str, size: int) -> bytes:
        if item not in self.row or item not in self.images:
            raise KeyError(item)
        size = max(THUMB_MIN, min(THUMB_MAX, size))

        def make():
            data = images_lib.read_bytes(self.images[item], self.run_cfg["data"].get("image_dir", ""))
            background = self.run_cfg["data"].get("background") or images_lib.WHITE
            return images_lib.encode_png(images_lib.decode(data, size, background))

        return self.thumbs.get_or((item, size), make)

    # --- features -------------------------------------------------------------------------------
    def embed_upload(self, feature_set: str, data: bytes) -> np.ndarray:
        """An uploaded image's features: through the served version, or through the feature set's
        own model (serving_default, the same preprocessing), loaded once."""

        if feature_set == self.served:
            return self.version.embed(np.array([data], dtype=object))[0]
        entry = self.sets[feature_set]
        with self.net_lock:
            if entry["net"] is None:
                if not os.path.isdir(entry["model"]):
                    raise LookupError(
                        f"feature set {feature_set!r} has no model in this version to embed an upload with"
                    )
                entry["net"] = feature_model.load_model(entry["model"])
        vec = feature_model.embed(entry["net"], [[data]])
        if entry.get("projection") is not None:  # as the Indexer projected the catalogue's
            vec = store.project(vec, {"components": entry["projection"]})
        return vec[0]

    def query_vector(self, feature_set: str, source: str, key: str) -> np.ndarray:
        if feature_set not in self.sets:
            raise LookupError(f"unknown feature set {feature_set!r} (have {sorted(self.sets)})")
        if source == "item":
            if key not in self.row:
                raise LookupError(f"item {key!r} is not in the catalogue")
            return self.sets[feature_set]["embeddings"][self.row[key]]
        vec = self.uploads.get((feature_set, key))
        if vec is None:
            raise LookupError(f"upload {key!r} is unknown or expired: upload it again")
        return vec

    def query(self, feature_set: str, source: str, key: str) -> dict:
        vec = self.query_vector(feature_set, source, key)
        sims = self.sets[feature_set]["embeddings"].scores(vec)
        if feature_set == self.served:  # the neighbours come from the served ScaNN index
            rows, scores = store.search(self.version.index, vec[None], min(STRIP + 1, len(self.ids)))
            rows, scores = np.asarray(rows[0]), np.asarray(scores[0])
        else:
            rows = _best(sims, STRIP + 1)
            scores = sims[rows]
        if source == "item":  # the query item itself is not its own neighbour
            keep = rows != self.row[key]
            rows, scores = rows[keep], scores[keep]
        rows, scores = rows[:STRIP], scores[:STRIP]
        ordered = np.sort(sims)[::-1]
        ranks = np.unique(np.linspace(0, len(ordered) - 1, min(CURVE_POINTS, len(ordered))).round().astype(int))
        return {
            "query": {"set": feature_set, "source": source, "key": key},
            "neighbours": [
                {"id": self.ids[r], "score": round(float(s), 5), "label": self.labels.get(self.ids[r])}
                for r, s in zip(rows, scores)
            ],
            "curve": {"rank": (ranks + 1).tolist(), "sim": ordered[ranks].round(5).tolist()},
        }

    def position(self, item: str, feature_set: str, source: str, key: str) -> dict:
        """Where `item` falls in a query's ranking: its rank (1 = most similar) and similarity."""
        if item not in self.row:
            raise LookupError(f"item {item!r} is not in the catalogue")
        vec = self.query_vector(feature_set, source, key)
        sims = self.sets[feature_set]["embeddings"].scores(vec)
        s = sims[self.row[item]]
        return {"rank": int((sims > s).sum()) + 1, "sim": round(float(s), 5)}


def _best(sims: np.ndarray, k: int) -> np.ndarray:
    """The rows of the k highest similarities, best first and ties by row (as a stable argsort of the
    whole catalogue gives them), without that argsort: 30x faster at 10^6 items."""
    k = min(k, len(sims))
    kth = np.partition(sims, len(sims) - k)[len(sims) - k]  # the k-th highest
    above = np.flatnonzero(sims > kth)
    part = np.concatenate([above, np.flatnonzero(sims == kth)[: k - len(above)]])
    return part[np.lexsort((part, -sims[part]))]


class Handler(BaseHTTPRequestHandler):
    catalogue: Catalogue = None
    static: dict[str, str] = {}
    server_version = "collabfeat-explorer"

    def log_message(self, fmt, *args):
        log.info("%s " + fmt, self.address_string(), *args)

    def _send(self, status, body: bytes, ctype: str, cache: bool = False):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        if cache:
            self.send_header("Cache-Control", "max-age=3600")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj, status=HTTPStatus.OK):
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status, message):
        self._json({"error": message}, status)

    def _url(self):
        """-> (the split URL, its query parameters: the last value of each)."""
        url = urllib.parse.urlsplit(self.path)
        return url, {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}

    def do_GET(self):
        url, q = self._url()
        parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
        c = self.catalogue
        try:
            if not parts:
                return self._file("explorer.html")
            if parts[0] == "static" and len(parts) == 2:
                return self._file(parts[1])
            if parts[0] == "img" and len(parts) == 2:
                try:
                    size = int(q.get("size", THUMB_DEFAULT))
                    return self._send(HTTPStatus.OK, c.thumbnail(parts[1], size), "image/png", cache=True)
                except (KeyError, ValueError):
                    return self._error(HTTPStatus.NOT_FOUND, "no such catalogue image")
                except images_lib.ImageError as e:
                    return self._error(HTTPStatus.NOT_FOUND, f"image unavailable: {e.reason}")
            if parts == ["api", "info"]:
                return self._json(
                    {
                        "model": c.version.name,
                        "version": c.version.number,
                        "items": len(c.ids),
                        "served": c.served,
                        "feature_sets": list(c.sets),
                        "has_map": c.map is not None,
                        "has_report": c.report is not None,
                    }
                )
            if parts == ["report"]:
                if not c.report:
                    return self._error(HTTPStatus.NOT_FOUND, "this version has no run report")
                with open(c.report, "rb") as f:
                    return self._send(HTTPStatus.OK, f.read(), "text/html; charset=utf-8")
            if parts == ["api", "items"]:
                page, size = int(q.get("page", 0)), max(1, min(200, int(q.get("size", 48))))
                order = c.map["grid"] if (c.map and q.get("order", "map") == "map") else range(len(c.ids))
                rows = order[page * size : (page + 1) * size]
                return self._json(
                    {
                        "page": page,
                        "size": size,
                        "pages": -(-len(c.ids) // size),
                        "items": [{"id": c.ids[r], "label": c.labels.get(c.ids[r])} for r in rows],
                    }
                )
            if parts == ["api", "map"]:
                if not c.map:
                    return self._error(HTTPStatus.NOT_FOUND, "this version has no map")
                return self._json(c.map_view)
            if parts == ["api", "query"]:
                return self._json(c.query(q.get("set", c.served), q.get("source", "item"), q.get("key", "")))
            if parts == ["api", "position"]:
                return self._json(
                    c.position(q.get("item", ""), q.get("set", c.served), q.get("source", "item"), q.get("key", ""))
                )
            return self._error(HTTPStatus.NOT_FOUND, "not found")
        except LookupError as e:
            return self._error(HTTPStatus.NOT_FOUND, str(e))
        except ValueError as e:
            return self._error(HTTPStatus.BAD_REQUEST, str(e))

    def do_POST(self):
        """POST /api/upload?set=NAME with the image as the body -> a query from a new image."""
        url, q = self._url()
        if url.path != "/api/upload":
            return self._error(HTTPStatus.NOT_FOUND, "not found")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        if length > MAX_UPLOAD:
            self.close_connection = True
            return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"uploads are limited to {MAX_UPLOAD} bytes")
        data = self.rfile.read(length)
        c = self.catalogue
        feature_set = q.get("set", c.served)
        if feature_set not in c.sets:
            return self._error(HTTPStatus.NOT_FOUND, f"unknown feature set {feature_set!r}")
        try:
            images_lib.decode(data, 8)
        except images_lib.ImageError as e:
            return self._error(HTTPStatus.BAD_REQUEST, f"not an image: {e}")
        key = hashlib.sha256(data).hexdigest()[:16]
        try:
            vec = c.embed_upload(feature_set, data)
        except Exception as e:  # e.g. a format PIL reads but TensorFlow does not
            return self._error(HTTPStatus.BAD_REQUEST, f"cannot embed this image: {e}")
        c.uploads.get_or((feature_set, key), lambda: vec)
        return self._json(c.query(feature_set, "upload", key))

    def _file(self, name):
        path = self.static.get(name)
        if not path:
            return self._error(HTTPStatus.NOT_FOUND, "not found")
        ctype = {"html": "text/html; charset=utf-8", "js": "text/javascript", "css": "text/css"}[name.rsplit(".", 1)[1]]
        with open(path, "rb") as f:
            return self._send(HTTPStatus.OK, f.read(), ctype, cache=name == "plotly.min.js")


def make_server(version_path: str, cfg: ServingConfig, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"catalogue": Catalogue(version_path, cfg), "static": _static_files()})
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    return httpd


def explore(base_path: str, cfg: ServingConfig, host: str, port: int, version: int | None = None) -> None:
    path = os.path.join(base_path, str(version)) if version else newest_version(base_path)
    httpd = make_server(path, cfg, host, port)
    print(
        f"collabfeat explorer on http://{host}:{httpd.server_address[1]}/ (version {os.path.basename(path)})",
        flush=True,
    )
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
