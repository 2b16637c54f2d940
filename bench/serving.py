"""The gRPC server against the same work done in-process, at concurrency 1, 4 and 16.

Needs a pushed version (`./run demo`). One load process (the real `serving.client.Client`,
one per thread) measures, one cell after the other, each for a fixed time and repeated (medians
are reported, since this machine's speed drifts by 10-20% from minute to minute):

- in-process: the same work without gRPC, from the same number of threads, in the load process:
  the SavedModel's serving_default signature and the version's ScaNN index, called directly;
- gRPC: `collabfeat serve` (its own process, on a copy of the newest version) over loopback;
- the floor: a no-op Predict (a fixed 4-float tensor, no model) in the same gRPC server set-up
  (`serving.server.grpc_server`), in its own process, queried by the same client.

Within a repeat the three run back to back for each concurrency, so they see the same machine.
Last, a hot swap under load: `similar` from 16 threads while a second version is pushed, loaded
and swapped in; every failed request is counted. The cores are shared by the load process and
the servers, as they would be for any client on the same machine.

Targets (issue 13): serving_default and similar reach >= 0.8x the in-process q/s at the same
concurrency with p99 <= 2x the in-process p99; similar_by_id reaches >= 0.7x the no-op floor's
q/s; the hot swap fails no request.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from bench.common import save, step, table
from collabfeat import config as config_lib
from serving import store

SIGNATURES = ("serving_default", "similar", "similar_by_id")
CONCURRENCY = (1, 4, 16)
SECONDS, REPEATS, K, SWAP_THREADS = 3.0, 3, 10, 16
TARGETS = {"q/s ratio": 0.8, "p99 ratio": 2.0, "by_id vs no-op": 0.7}


def _queries(version_path: str, n: int = 32):
    """Catalogue items, and PNG images at the model's input size, as a client would send them."""
    from collabfeat.images import encode_png  # lazy: this benchmark's stack, imported when it runs

    extra = os.path.join(version_path, "assets.extra")
    ids = [line.strip() for line in open(os.path.join(extra, "item_ids.txt")) if line.strip()][:n]
    with open(os.path.join(extra, "config.json")) as f:
        size = json.load(f)["cnn"]["image_size"]
    rng = np.random.default_rng(0)
    images = [encode_png(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
    return ids, images


def load(
    call,
    concurrency: int,
    seconds: float = 0.0,
    stop: threading.Event = None,
    setup=lambda: None,
    teardown=lambda _: None,
) -> dict:
    """call(state, j) from `concurrency` threads, after one warm-up call each, for `seconds` or
    until `stop` is set: p50/p99 latency, q/s, and the failures with the first one's message."""
    latencies, failures, lock = [], [], threading.Lock()
    gate, stop = threading.Barrier(concurrency + 1), stop or threading.Event()

    def attempt(state, j, into):
        t = time.perf_counter()
        try:
            call(state, j)
            into.append(time.perf_counter() - t)
        except Exception as e:
            with lock:
                failures.append(f"{type(e).__name__}: {e.details() if hasattr(e, 'details') else e}")

    def work(w):
        state = setup()
        attempt(state, w, [])
        gate.wait()
        j, mine = w, []
        while not stop.is_set():
            attempt(state, j, mine)
            j += concurrency
        with lock:
            latencies.extend(mine)
        teardown(state)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(concurrency)]
    for t in threads:
        t.start()
    gate.wait()
    begin = time.perf_counter()
    if seconds:
        stop.wait(seconds)
        stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begin
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "requests": len(latencies),
        "failures": len(failures),
        "first failure": failures[0] if failures else "",
        "p50 ms": float(np.percentile(lat, 50)),
        "p99 ms": float(np.percentile(lat, 99)),
        "q/s": len(latencies) / elapsed,
        "seconds": elapsed,
    }


# --- the load process ----------------------------------------------------------------------------
def in_process_calls(version_path: str) -> dict:
    """The same work without gRPC: the SavedModel's embedding and the version's ScaNN index."""
    import tensorflow as tf  # lazy: TensorFlow's start-up (seconds), only on this path

    ids, images = _queries(version_path)
    embed = tf.saved_model.load(version_path).signatures["serving_default"]
    idx = store.load_index(os.path.join(version_path, "assets.extra"))
    row = {item: i for i, item in enumerate(idx["item_ids"])}

    def emb(j):
        return embed(images=tf.constant([images[j % len(images)]]))["embedding"].numpy()

    return {
        "serving_default": lambda _, j: emb(j),
        "similar": lambda _, j: store.search(idx, emb(j), K),
        "similar_by_id": lambda _, j: store.search(idx, idx["embeddings"][[row[ids[j % len(ids)]]]], K + 1),
    }


def client_main(plan: dict) -> None:
    """The load process: every cell of every repeat, then the hot swap. One JSON object on the
    last stdout line: {mode: {"sig@c": [result per repeat]}, "swap": ...}."""
    from serving.client import Client  # lazy: this benchmark's stack, imported when it runs

    ids, images = _queries(plan["version"])
    remote = {
        "no-op": lambda c, j: c.predict("", {"x": np.float32(0)}),
        "serving_default": lambda c, j: c.embed([images[j % len(images)]]),
        "similar": lambda c, j: c.similar([images[j % len(images)]], K),
        "similar_by_id": lambda c, j: c.similar_by_id([ids[j % len(ids)]], K),
    }
    local = in_process_calls(plan["version"])
    out = {"in-process": {}, "grpc": {}, "no-op": {}}
    for r in range(plan["repeats"]):
        for c in plan["concurrency"]:
            runs = [("no-op", "no-op", plan["noop"])] + [
                (mode, sig, plan["server"]) for sig in plan["signatures"] for mode in ("in-process", "grpc")
            ]
            for mode, sig, address in runs:
                calls = local if mode == "in-process" else remote
                kwargs = {} if mode == "in-process" else {"setup": lambda: Client(address), "teardown": Client.close}
                result = load(calls[sig], c, plan["seconds"], **kwargs)
                out[mode].setdefault(f"{sig}@{c}", []).append(result)
        print(f"repeat {r + 1} of {plan['repeats']} done", file=sys.stderr, flush=True)
    out["swap"] = swap_load(plan["server"], images)
    print(json.dumps(out), flush=True)


def swap_load(address: str, images) -> dict:
    """`similar` from SWAP_THREADS threads until a newer version has answered for 2 s (the parent
    pushes it when this process prints 'loaded'), at most 120 s. Counts the answers by version."""
    from serving.client import Client  # lazy: this benchmark's stack, imported when it runs

    seen, newer_at, stop, lock = {}, [], threading.Event(), threading.Lock()

    def call(c, j):
        v = int(c.similar([images[j % len(images)]], K)["_version"])
        with lock:
            seen[v] = seen.get(v, 0) + 1
            if len(seen) > 1 and not newer_at:
                newer_at.append(time.time())

    def watch():
        print("loaded", flush=True)
        deadline = time.time() + 120
        while time.time() < deadline and not (newer_at and time.time() > newer_at[0] + 2):
            time.sleep(0.1)
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    result = load(call, SWAP_THREADS, stop=stop, setup=lambda: Client(address), teardown=Client.close)
    return {**result, "versions": {str(v): n for v, n in sorted(seen.items())}}


def run_client(plan: dict, on_loaded=None) -> dict:
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.serving", "--client", json.dumps(plan)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        lines = []
        for line in proc.stdout:
            if line.strip() == "loaded" and on_loaded:
                on_loaded()
            lines.append(line)
        if proc.wait() or not lines:
            err.seek(0)
            raise RuntimeError(f"the load process failed (exit {proc.returncode}): {err.read()[-3000:]}")
    return json.loads(lines[-1])


# --- the no-op server ----------------------------------------------------------------------------
def noop_main(overrides) -> None:
    """Predict answers a fixed small tensor without looking at the request: the gRPC floor."""
    from tensorflow_serving.apis import (
        predict_pb2,
        prediction_service_pb2_grpc,
    )  # lazy: TensorFlow's start-up, only for this benchmark

    from serving import tensors  # lazy: this benchmark's stack, imported when it runs
    from serving.server import grpc_server  # lazy: this benchmark's stack, imported when it runs

    answer = predict_pb2.PredictResponse()
    answer.outputs["x"].CopyFrom(tensors.to_proto(np.zeros(4, np.float32)))

    class Noop(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            return answer

    server = grpc_server(config_lib.load(overrides=overrides).serving)  # the settings the server gets
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Noop(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"127.0.0.1:{port}", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    server.stop(0)


# --- the benchmark -------------------------------------------------------------------------------
def _copy_version(src: str, base: str, number: int) -> str:
    """A pushed version's files under base/<number> (hard links where the disk allows), renamed
    into place the way the pusher does it."""

    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    tmp = os.path.join(base, f".tmp-{number}")
    shutil.copytree(src, tmp, copy_function=link)
    os.rename(tmp, os.path.join(base, str(number)))
    return os.path.join(base, str(number))


def run(argv=None) -> dict:
    from serving.local import ServerProcess  # lazy: this benchmark's stack, imported when it runs
    from serving.store import newest_version  # lazy: this benchmark's stack, imported when it runs

    parser = argparse.ArgumentParser(prog="bench serving")
    parser.add_argument("--seconds", type=float, default=SECONDS, help="per cell and repeat")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="medians over this many repeats")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)), help="client threads, e.g. 1,4,16")
    parser.add_argument("--signatures", default=",".join(SIGNATURES))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a server setting, e.g. serving.workers=8 (repeatable)",
    )
    args = parser.parse_args(argv or [])
    signatures = [s for s in args.signatures.split(",") if s]
    unknown = set(signatures) - set(SIGNATURES)
    if unknown:
        parser.error(f"unknown signatures {sorted(unknown)} (known: {', '.join(SIGNATURES)})")
    cfg = config_lib.load(overrides=args.set)
    pushed = os.path.abspath(os.path.join(cfg.serving.push_dir, cfg.serving.model_name))
    try:
        version_path = newest_version(pushed)
    except FileNotFoundError as e:
        print(e)
        return {}
    plan = {
        "version": version_path,
        "signatures": signatures,
        "seconds": args.seconds,
        "repeats": args.repeats,
        "concurrency": [int(c) for c in args.concurrency.split(",")],
    }
    cells = len(plan["concurrency"]) * (1 + 2 * len(signatures))
    noop = subprocess.Popen(
        [sys.executable, "-m", "bench.serving", "--noop-server", *args.set],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    work = tempfile.mkdtemp(prefix="bench-serving-")
    try:
        base = os.path.join(work, cfg.serving.model_name)
        os.makedirs(base)
        first = int(os.path.basename(version_path))
        _copy_version(version_path, base, first)
        server = ServerProcess(base, *[a for kv in args.set for a in ("--set", kv)])
        try:
            step(
                f"{args.repeats} repeats of {cells} cells of {args.seconds:g} s (no-op floor, in-process, gRPC "
                f"at concurrency {plan['concurrency']}), then a hot swap under load ({SWAP_THREADS} threads)"
            )
            out = run_client(
                {**plan, "noop": noop.stdout.readline().strip(), "server": server.address},
                on_loaded=lambda: _copy_version(version_path, base, first + 1),
            )
        finally:
            server.stop()
    finally:
        noop.stdin.close()
        noop.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    return report(out, plan, args.set)


def _median(runs: list) -> dict:
    """The median of each figure over the repeats, and the requests and failures summed."""
    out = {key: float(np.median([r[key] for r in runs])) for key in ("p50 ms", "p99 ms", "q/s")}
    out.update(
        requests=sum(r["requests"] for r in runs),
        failures=sum(r["failures"] for r in runs),
        **{"first failure": next((r["first failure"] for r in runs if r["failures"]), "")},
    )
    return out


def report(out: dict, plan: dict, settings) -> dict:
    med = {mode: {cell: _median(runs) for cell, runs in out[mode].items()} for mode in ("in-process", "grpc", "no-op")}
    rows, misses = [], []
    for c in plan["concurrency"]:
        for sig in ["no-op"] + plan["signatures"]:
            r = med["no-op" if sig == "no-op" else "grpc"][f"{sig}@{c}"]
            row = {
                "signature": sig,
                "concurrency": c,
                "requests": r["requests"],
                "failures": r["failures"],
                "grpc p50 ms": r["p50 ms"],
                "grpc p99 ms": r["p99 ms"],
                "grpc q/s": r["q/s"],
            }
            if sig != "no-op":
                local = med["in-process"][f"{sig}@{c}"]
                row.update(
                    {
                        "in-process p50 ms": local["p50 ms"],
                        "in-process p99 ms": local["p99 ms"],
                        "in-process q/s": local["q/s"],
                        "q/s ratio": r["q/s"] / local["q/s"],
                        "p99 ratio": r["p99 ms"] / local["p99 ms"],
                    }
                )
            if sig == "similar_by_id":
                row["vs no-op q/s"] = r["q/s"] / med["no-op"][f"no-op@{c}"]["q/s"]
                if row["vs no-op q/s"] < TARGETS["by_id vs no-op"]:
                    misses.append(f"similar_by_id at {c}: {row['vs no-op q/s']:.2f}x the no-op floor")
            elif sig != "no-op":
                if row["q/s ratio"] < TARGETS["q/s ratio"] or row["p99 ratio"] > TARGETS["p99 ratio"]:
                    misses.append(f"{sig} at {c}: {row['q/s ratio']:.2f}x the q/s, p99 {row['p99 ratio']:.2f}x")
            if r["failures"]:
                misses.append(f"{sig} at {c}: {r['failures']} failed requests ({r['first failure']})")
            rows.append(row)
    swap = out["swap"]
    if swap["failures"] or len(swap["versions"]) < 2:
        misses.append(
            f"hot swap: {swap['failures']} failed ({swap['first failure']}), versions seen {swap['versions']}"
        )
    print(
        f"gRPC server on loopback against in-process calls, k={K}, version {os.path.basename(plan['version'])}; "
        f"medians of {plan['repeats']} repeats of {plan['seconds']:g} s; one load process, one Client per thread "
        f"(the cores are shared); server settings: {', '.join(settings) or 'defaults'}"
    )
    print(table(rows, list(dict.fromkeys(c for r in rows for c in r))))
    print(
        f"hot swap under load ({SWAP_THREADS} threads of `similar`): {swap['requests']} requests in "
        f"{swap['seconds']:.1f} s, {swap['failures']} failed, answers by version {swap['versions']}"
    )
    print("targets: " + ("all met" if not misses else "missed: " + "; ".join(misses)))
    result = {"rows": rows, "swap": swap, "misses": misses, "plan": plan, "settings": settings, "runs": out}
    print("saved", save("serving", result))
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        client_main(json.loads(sys.argv[2]))
    elif sys.argv[1:2] == ["--noop-server"]:
        noop_main(sys.argv[2:])
    else:
        run(sys.argv[1:])
