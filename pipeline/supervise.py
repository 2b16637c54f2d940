"""Runs the pipeline in a child process and watches it: which component runs (from MLMD), how long
each took, and the peak memory (PSS) of the child's whole process tree (Beam's workers included)
while each component ran (None: too short to be sampled, every 0.5 s). When the child dies, one line names the component and the cause (an exception,
or the signal that killed it: SIGKILL is what the kernel's out-of-memory killer sends), the report
of the components that finished is still written, and the log's path is given.

    python -m collabfeat.pipeline.supervise CONFIG_JSON UNTIL REPORT_JSON     (the child's side)
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Dict, List, Optional

import psutil

STATES = {0: "unknown", 1: "new", 2: "running", 3: "complete", 4: "failed", 5: "cached", 6: "canceled"}


class PipelineFailed(RuntimeError):
    def __init__(self, message: str, report: Dict):
        super().__init__(message)
        self.report = report


def executions(metadata_path: str, since_ms: int) -> List[Dict]:
    """The executions of the newest pipeline run started after since_ms, oldest first:
    {"component", "state", "started", "ended" (epoch seconds), "outputs": {key: [uri, ...]}}."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    if not os.path.exists(metadata_path):
        return []
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    runs = [r for r in store.get_contexts_by_type("pipeline_run") if r.create_time_since_epoch >= since_ms]
    if not runs:
        return []
    run = max(runs, key=lambda r: r.create_time_since_epoch)
    nodes = {c.id: c.name.split(".", 1)[-1] for c in store.get_contexts_by_type("node")}
    out = []
    for e in sorted(store.get_executions_by_context(run.id), key=lambda e: e.id):
        component = next((nodes[c.id] for c in store.get_contexts_by_execution(e.id) if c.id in nodes), e.type)
        outputs: Dict[str, List[str]] = {}
        events = [ev for ev in store.get_events_by_execution_ids([e.id])
                  if ev.type == metadata_store_pb2.Event.OUTPUT]
        uris = {a.id: a.uri for a in store.get_artifacts_by_id([ev.artifact_id for ev in events])} if events else {}
        for ev in events:
            outputs.setdefault(ev.path.steps[0].key, []).append(uris[ev.artifact_id])
        out.append({"component": component, "state": STATES.get(e.last_known_state, str(e.last_known_state)),
                    "started": e.create_time_since_epoch / 1000, "ended": e.last_update_time_since_epoch / 1000,
                    "outputs": outputs})
    return out


def tree_memory(proc: psutil.Process) -> int:
    """Memory of a process and all its descendants, in bytes: the sum of their proportional set
    sizes (PSS), so that pages they share (TensorFlow's libraries in every Beam worker) count once.
    RSS where PSS cannot be read."""
    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            try:
                total += p.memory_full_info().pss
            except (psutil.AccessDenied, AttributeError):
                total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


class Watch:
    """Samples the child's tree every `interval` s; attributes each sample to the running component."""

    def __init__(self, pid: int, metadata_path: str, since_ms: int, interval: float = 0.5,
                 on_start=None):
        self.proc, self.metadata_path, self.since_ms = psutil.Process(pid), metadata_path, since_ms
        self.interval, self.on_start = interval, on_start
        self.peak: Dict[str, int] = {}
        self.running: Optional[str] = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        last_poll = 0.0
        while not self.stop.is_set():
            if time.time() - last_poll >= 1.0:
                last_poll = time.time()
                try:
                    now = [e["component"] for e in executions(self.metadata_path, self.since_ms)
                           if e["state"] == "running"]
                except Exception:   # the child may be writing: try again at the next poll
                    now = [self.running] if self.running else []
                current = now[-1] if now else None
                if current and current != self.running and self.on_start:
                    self.on_start(current)
                self.running = current
            try:
                rss = tree_memory(self.proc)
            except psutil.Error:
                break
            key = self.running or "(between components)"
            self.peak[key] = max(self.peak.get(key, 0), rss)
            self.stop.wait(self.interval)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)


def describe_exit(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with status {returncode}"
    sig = signal.Signals(-returncode)
    why = {signal.SIGKILL: ": the kernel's out-of-memory killer sends this when memory runs out",
           signal.SIGSEGV: ": a crash in native code",
           signal.SIGABRT: ": native code aborted"}.get(sig, "")
    return f"killed by signal {-returncode} ({sig.name}{why})"


def run(cfg, until: str, log_path: str, echo=print) -> Dict:
    """Runs the pipeline in a child process; -> the run report, with per-component "components"
    {name: {"state", "seconds", "peak_rss_mb"}}. Raises PipelineFailed naming the component and cause."""
    from collabfeat.pipeline.run import collect, paths, prepare_data

    cfg = prepare_data(cfg)
    root, metadata_path, report_path = paths(cfg)
    os.makedirs(root, exist_ok=True)
    config_path = os.path.join(root, "config.json")
    with open(config_path, "w") as f:
        f.write(cfg.to_json())
    failure_path = os.path.join(root, "failure.json")
    for stale in (report_path, failure_path):
        if os.path.exists(stale):
            os.remove(stale)
    since = int(time.time() * 1000) - 1
    started = time.time()
    with open(log_path, "a") as log:
        child = subprocess.Popen([sys.executable, "-m", "collabfeat.pipeline.supervise", config_path, until,
                                  report_path, failure_path], stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        def announce(component):
            echo(f"[collabfeat] {time.time() - started:6.0f} s  {component} running")

        with Watch(child.pid, metadata_path, since, on_start=announce) as watch:
            returncode = child.wait()
    exited = time.time()
    ran = executions(metadata_path, since)
    if returncode == 0 and os.path.exists(report_path):
        with open(report_path) as f:
            report = json.load(f)
    else:
        report = collect(cfg, ran)
    report["components"] = {e["component"]: {   # a component still "running" ran until the child died
        "state": e["state"], "seconds": round((exited if e["state"] == "running" else e["ended"]) - e["started"], 1),
        "peak_rss_mb": round(watch.peak[e["component"]] / 2 ** 20) if e["component"] in watch.peak else None}
        for e in ran}
    report["peak_rss_mb"] = round(max(watch.peak.values(), default=0) / 2 ** 20)
    report["seconds"] = round(time.time() - started, 1)
    if returncode != 0 or not os.path.exists(report_path):
        failed = [e["component"] for e in ran if e["state"] in ("running", "failed")]
        where = failed[-1] if failed else "the pipeline (before any component started)"
        cause = describe_exit(returncode)
        if os.path.exists(failure_path):
            with open(failure_path) as f:
                cause = json.load(f)["error"]
        peak = watch.peak.get(failed[-1], 0) if failed else 0
        message = (f"{where} failed: {cause}" + (f" (peak memory {peak / 2 ** 30:.1f} GB)" if peak else "")
                   + f"; log: {log_path}")
        report["failed"] = {"component": where, "cause": cause, "log": log_path}
    with open(report_path, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    if "failed" in report:
        raise PipelineFailed(message, report)
    return report


def _child(config_path: str, until: str, report_path: str, failure_path: str) -> int:
    from collabfeat.config import Config
    from collabfeat.pipeline.run import run_local

    with open(config_path) as f:
        cfg = Config.from_json(f.read())
    try:
        report = run_local(cfg, until)
    except BaseException as e:
        traceback.print_exc()
        with open(failure_path, "w") as f:
            json.dump({"error": f"{type(e).__name__}: {e}".strip()[:2000]}, f)
        return 1
    with open(report_path, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:5]))
