"""A bounded loopback load test of the gRPC server against the same work done in-process.

The server runs in its own process on a free 127.0.0.1 port, and the load comes from a separate
client process with a fixed number of requests per signature, a time limit and a fixed
concurrency. It needs a pushed version (`./run demo`). Prints p50/p99 latency and queries/s for
serving_default, similar and similar_by_id, and their ratios to in-process calls.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

from bench.common import save, step, table
from collabfeat import config as config_lib

SIGNATURES = ("serving_default", "similar", "similar_by_id")
REQUESTS, SECONDS, CONCURRENCY, K = 400, 30.0, 4, 10


def _queries(version_path: str, n: int = 32):
    """Catalogue items and their images, as a client would send them (PNG bytes)."""
    from collabfeat.images import encode_png
    extra = os.path.join(version_path, "assets.extra")
    ids = [line.strip() for line in open(os.path.join(extra, "item_ids.txt")) if line.strip()][:n]
    with open(os.path.join(extra, "config.json")) as f:
        size = json.load(f)["cnn"]["image_size"]
    rng = np.random.default_rng(0)
    images = [encode_png(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
    return ids, images


def _stats(latencies, seconds):
    lat = np.array(latencies) * 1000
    return {"requests": len(lat), "p50 ms": float(np.percentile(lat, 50)), "p99 ms": float(np.percentile(lat, 99)),
            "q/s": len(lat) / seconds}


def client_main(address: str, version_path: str) -> None:
    """The load generator (run in its own process): JSON stats per signature on stdout."""
    from collabfeat.serving.client import Client
    ids, images = _queries(version_path)
    out = {}
    for sig in SIGNATURES:
        latencies, lock, counter = [], threading.Lock(), iter(range(REQUESTS))
        deadline = time.time() + SECONDS

        def work():
            c = Client(address)
            for j in counter:
                if time.time() > deadline:
                    break
                t = time.perf_counter()
                if sig == "serving_default":
                    c.embed([images[j % len(images)]])
                elif sig == "similar":
                    c.similar([images[j % len(images)]], K)
                else:
                    c.similar_by_id([ids[j % len(ids)]], K)
                with lock:
                    latencies.append(time.perf_counter() - t)
            c.close()

        start = time.time()
        threads = [threading.Thread(target=work) for _ in range(CONCURRENCY)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out[sig] = _stats(latencies, time.time() - start)
    print(json.dumps(out))


def in_process(version_path: str) -> dict:
    """The same work without gRPC: the SavedModel's embedding and the version's ScaNN index."""
    import tensorflow as tf
    from collabfeat.serving import index
    ids, images = _queries(version_path)
    embed = tf.saved_model.load(version_path).signatures["serving_default"]
    idx = index.load(os.path.join(version_path, "assets.extra"))
    row = {item: i for i, item in enumerate(idx["item_ids"])}
    work = {
        "serving_default": lambda j: embed(images=tf.constant([images[j % len(images)]])),
        "similar": lambda j: index.search(idx, embed(images=tf.constant([images[j % len(images)]]))["embedding"].numpy(), K),
        "similar_by_id": lambda j: index.search(idx, idx["embeddings"][[row[ids[j % len(ids)]]]], K + 1),
    }
    out = {}
    for sig, fn in work.items():
        fn(0)
        latencies, start = [], time.time()
        for j in range(REQUESTS // 2):
            t = time.perf_counter()
            fn(j)
            latencies.append(time.perf_counter() - t)
        out[sig] = _stats(latencies, time.time() - start)
    return out


def run(cfg=None) -> dict:
    from collabfeat.serving.local import ServerProcess
    from collabfeat.serving.push import newest_version
    cfg = cfg or config_lib.Config()
    base = os.path.abspath(os.path.join(cfg.serving.push_dir, cfg.serving.model_name))
    try:
        version_path = newest_version(base)
    except FileNotFoundError as e:
        print(e)
        return {}
    step(f"gRPC load test: {len(SIGNATURES)} signatures, up to {SECONDS} s each, from another process")
    server = ServerProcess(base)
    try:
        client = subprocess.run([sys.executable, "-m", "bench.serving", "--client", server.address, version_path],
                                capture_output=True, text=True, timeout=SECONDS * len(SIGNATURES) + 120)
        if client.returncode:
            raise RuntimeError(client.stderr[-2000:])
        remote = json.loads(client.stdout.strip().splitlines()[-1])
    finally:
        server.stop()
    step("the same work in-process")
    local = in_process(version_path)
    rows = []
    for sig in SIGNATURES:
        r, l = remote[sig], local[sig]
        rows.append({"signature": sig, "requests": r["requests"], "grpc p50 ms": r["p50 ms"], "grpc p99 ms": r["p99 ms"],
                     "grpc q/s": r["q/s"], "in-process p50 ms": l["p50 ms"], "in-process q/s": l["q/s"],
                     "p50 ratio": r["p50 ms"] / l["p50 ms"], "q/s ratio": r["q/s"] / l["q/s"]})
    print(f"gRPC server on loopback, {CONCURRENCY} concurrent client threads in another process, "
          f"k={K}, version {os.path.basename(version_path)}")
    print(table(rows, list(rows[0])))
    print("saved", save("serving", {"rows": rows, "concurrency": CONCURRENCY}))
    return {"rows": rows}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2], sys.argv[3])
    else:
        run()
