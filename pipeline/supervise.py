"""Runs the pipeline in a child process and watches it: which component runs (from MLMD), how long
each took, and the peak memory (PSS) of the child's whole process tree (Beam's workers included)
while each component ran. Memory is sampled every 0.5 s (less often when sampling is slow); a sample
counts for the component whose recorded start and end, in MLMD, hold its midpoint (None: too short
to be sampled). When the child dies, one line names the component and the cause (an exception,
or the signal that killed it: SIGKILL is what the kernel's out-of-memory killer sends), the report
of the components that finished is still written, and the log's path is given.

    python -m pipeline.supervise CONFIG_JSON UNTIL REPORT_JSON     (the child's side)
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

import psutil
from tqdm import tqdm

from collabfeat import progress, storage
from collabfeat.config import Config
from pipeline import report_html
from pipeline.data import paths, prepare_data
from pipeline.report import collect, executions, format_report, key_figure


class PipelineFailed(RuntimeError):
    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


class PipelineStopped(PipelineFailed):
    """The run was asked to stop (SIGTERM, SIGHUP or SIGINT to the supervising process)."""

    def __init__(self, message: str, report: dict, signum: int):
        super().__init__(message, report)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
STOP_GRACE = 10.0  # seconds a stopped process has to exit before it is killed


def _wait(child: subprocess.Popen, stopped: list[int]) -> int:
    """child.wait(), and then no process of the child's tree is left running.
    - A stop signal to this process (SIGTERM from a scheduler, SIGHUP, Ctrl-C) ends the child's whole
      tree, Beam's workers included. The signal's number is appended to `stopped`. (Without this, a
      SIGTERM ended only this process, and the pipeline and its workers ran on, orphaned.)
    - A child that ends any other way (killed by the out-of-memory killer, crashed) would leave its
      own children (Beam's workers) running, orphaned. The child leads a process group of its own
      (run() starts it so), which its descendants share unless they leave it; the tree is also
      noted every second. What is left of either when the child has ended is ended too.
    Ending: SIGTERM to each, SIGKILL to any still there after STOP_GRACE s."""
    tree: list[psutil.Process] = []

    def note():
        try:
            root = psutil.Process(child.pid)
            tree[:] = [p for p in tree if p.is_running()]
            tree.extend(p for p in [root] + root.children(recursive=True) if p not in tree)
        except psutil.Error:
            pass

    def stop(signum, frame):
        if not stopped:
            stopped.append(signum)
        note()
        for p in tree:
            try:
                p.terminate()
            except psutil.Error:
                pass

    previous = {}
    if threading.current_thread() is threading.main_thread():  # handlers can only be set there
        previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        since = None
        while True:
            try:
                return child.wait(timeout=1)
            except subprocess.TimeoutExpired:
                note()
                if stopped:
                    since = since or time.time()
                    if time.time() - since > STOP_GRACE:
                        child.kill()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        left = [p for p in tree[1:] if p.is_running()] + [  # descendants that outlived the child
            p for p in _group(child.pid) if p not in tree
        ]
        for p in left:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(left, timeout=STOP_GRACE)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass


def _group(pgid: int) -> list[psutil.Process]:
    """The processes of process group `pgid`."""
    found = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                found.append(p)
        except (OSError, psutil.Error):
            pass
    return found


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
    """Samples the child's tree every `interval` s (or less often, see _loop), keeping each sample's
    time (`peaks` attributes them to components).
    Tells `console` when a component starts and ends, and the progress its steps report."""

    def __init__(
        self,
        pid: int,
        metadata_path: str,
        since_ms: int,
        console: Console,
        progress_path: str = "",
        interval: float = 0.5,
    ):
        self.proc, self.metadata_path, self.since_ms = psutil.Process(pid), metadata_path, since_ms
        self.interval, self.console = interval, console
        self.progress = progress.Reader(progress_path) if progress_path else None
        self.samples: list[tuple[float, int]] = []  # (epoch seconds at the sample's midpoint, bytes)
        self.started: set = set()
        self.seen: set = set()
        self.ended: set = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _poll(self, final: bool = False):
        try:
            ran = executions(self.metadata_path, self.since_ms)
        except Exception:  # the child may be writing: try again at the next poll
            return
        for e in ran:  # in the order they started; one that was over between polls is still told
            if e["component"] not in self.started:
                if e["state"] == "running" and e["component"] not in self.seen and not final:
                    self.seen.add(e["component"])  # told at the next poll, unless TFX's cache answers it
                    continue
                self.started.add(e["component"])
                if e["state"] != "cached":
                    self.console.start(e)
            if e["state"] in ("complete", "cached", "failed") and e["component"] not in self.ended:
                self.ended.add(e["component"])
                self.console.end(e)

    def _loop(self):
        last_poll = 0.0
        while not self.stop.is_set():
            if time.time() - last_poll >= 1.0:
                last_poll = time.time()
                self._poll()
            if self.progress is not None:
                self.console.progress(self.progress.read())
            start, wall = time.perf_counter(), time.time()
            try:
                rss = tree_memory(self.proc)
            except psutil.Error:
                break
            took = time.perf_counter() - start
            self.samples.append((wall + took / 2, rss))
            # Reading PSS walks every process's page tables: about 0.1 s for a Beam pipeline's tree
            # here. Sampling waits at least 20x that long, so that watching costs under 5% of a core.
            self.stop.wait(max(self.interval, 20 * took))

    def peaks(self, ran: list[dict], until: float) -> dict[str, int]:
        """{component: its peak bytes} over the samples taken between its start and end as MLMD
        recorded them (`until` for one still running); a component no sample fell in is left out.
        Attributing by recorded times, not by which component the last poll (once a second) saw
        running, is what measures a component that ran for a second or two."""
        out: dict[str, int] = {}
        for e in ran:
            end = until if e["state"] == "running" else e["ended"]
            inside = [rss for t, rss in self.samples if e["started"] <= t <= end]
            if inside:
                out[e["component"]] = max(out.get(e["component"], 0), *inside)
        return out

    def largest_gap(self) -> float:
        """The longest time between two samples, in seconds: a component that ran longer than this
        has at least one."""
        times = [t for t, _ in self.samples]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)

    @property
    def peak(self) -> int:
        """The peak bytes over the whole run, between components included."""
        return max((rss for _, rss in self.samples), default=0)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        self._poll(final=True)  # the last component's end
        self.console.close()


class Console:
    """What the console shows of a run: a line when a component starts and when it ends (with its
    seconds and key figure), and, on a terminal, a progress bar (tqdm) per reported step."""

    def __init__(self, echo=print, bars: bool = False, started: float | None = None):
        self.echo, self.bars_on, self.started = echo, bars, started or time.time()
        self.bars: dict[str, object] = {}

    def say(self, line: str):
        if self.bars_on:
            tqdm.write(line)
        else:
            self.echo(line)

    def start(self, e: dict):
        """e: an execution (see `executions`); the times are the ones MLMD recorded."""
        self.say(f"[collabfeat] {e['started'] - self.started:6.0f} s  {e['component']} running")

    def end(self, e: dict):
        self.close()
        figure = key_figure(e["component"], e["outputs"]) if e["state"] in ("complete", "cached") else ""
        what = (
            "cached (inputs, settings and code unchanged: an earlier run's outputs)"
            if e["state"] == "cached"
            else f"{e['state']} after {e['ended'] - e['started']:.0f} s"
        )
        self.say(
            f"[collabfeat] {e['ended'] - self.started:6.0f} s  {e['component']} {what}"
            + (f": {figure}" if figure else "")
        )

    def progress(self, updates: dict):
        for message in updates.pop("warnings", []):
            self.say(f"[collabfeat] warning: {message}")
        if not self.bars_on:
            return

        for task, u in updates.items():
            bar = self.bars.get(task)
            if bar is None:
                bar = self.bars[task] = tqdm(
                    total=u["total"], desc=f"  {task}", unit=u["unit"], leave=False, dynamic_ncols=True
                )
            if u["total"] != bar.total:
                bar.total = u["total"]
            bar.update(u["done"] - bar.n)
            if u["total"] is not None and u["done"] >= u["total"]:
                self.bars.pop(task).close()

    def close(self):
        for bar in self.bars.values():
            bar.close()
        self.bars = {}


def write_html(report: dict, path: str) -> str:
    """The HTML run report (pipeline/report_html.py); a copy goes into the version this run pushed, for the explorer."""
    from serving.store import EXTRA  # lazy: serving.store imports TensorFlow, which the supervisor never needs

    report_html.write(report, format_report(report), path)
    push = report.get("push") or {}
    pushed_now = (report.get("components") or {}).get("Pusher", {}).get("state") == "complete"
    if push.get("pushed") and pushed_now:  # a cached Pusher's version is an earlier run's: left as it was
        storage.copy(path, os.path.join(push["destination"], EXTRA, "report.html"))
    return path


def describe_exit(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with status {returncode}"
    sig = signal.Signals(-returncode)
    why = {
        signal.SIGKILL: ": the kernel's out-of-memory killer sends this when memory runs out",
        signal.SIGSEGV: ": a crash in native code",
        signal.SIGABRT: ": native code aborted",
    }.get(sig, "")
    return f"killed by signal {-returncode} ({sig.name}{why})"


def run(cfg, until: str, log_path: str, echo=print, bars: bool = False) -> dict:
    """Runs the pipeline in a child process; -> the run report, with per-component "components"
    {name: {"state", "seconds", "peak_rss_mb"}}. Raises PipelineFailed naming the component and cause.
    `echo` gets a line as each component starts and ends; `bars`: progress bars (a terminal)."""

    cfg = prepare_data(cfg)
    root, metadata_path, report_path = paths(cfg)
    os.makedirs(root, exist_ok=True)
    config_path = os.path.join(root, "config.json")
    with open(config_path, "w") as f:
        f.write(cfg.to_json())
    failure_path = os.path.join(root, "failure.json")
    progress_path = os.path.join(root, "progress.jsonl")
    for stale in (report_path, failure_path, progress_path):
        if os.path.exists(stale):
            os.remove(stale)
    since = int(time.time() * 1000) - 1
    started = time.time()
    stopped: list[int] = []
    with open(log_path, "a") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "pipeline.supervise", config_path, until, report_path, failure_path],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, progress.ENV: progress_path},
            process_group=0,
        )  # its own group: what it leaves is found (_wait)
        with Watch(child.pid, metadata_path, since, Console(echo, bars, started), progress_path) as watch:
            returncode = _wait(child, stopped)
    exited = time.time()
    ran = executions(metadata_path, since)
    if returncode == 0 and os.path.exists(report_path):
        with open(report_path) as f:
            report = json.load(f)
    else:
        report = collect(cfg, ran)
    peaks = watch.peaks(ran, exited)
    report["components"] = {
        e["component"]: {  # a component still "running" ran until the child died
            "state": e["state"],
            "seconds": round((exited if e["state"] == "running" else e["ended"]) - e["started"], 1),
            "peak_rss_mb": round(peaks[e["component"]] / 2**20) if e["component"] in peaks else None,
        }
        for e in ran
    }
    report["peak_rss_mb"] = round(watch.peak / 2**20)
    report["memory_samples"] = {"count": len(watch.samples), "largest gap s": round(watch.largest_gap(), 2)}
    report["seconds"] = round(time.time() - started, 1)
    if returncode != 0 or not os.path.exists(report_path):
        failed = [e["component"] for e in ran if e["state"] in ("running", "failed")]
        where = (
            failed[-1]
            if failed
            else ("the pipeline (between components)" if ran else "the pipeline (before any component started)")
        )
        cause = describe_exit(returncode)
        if stopped:
            cause = f"{signal.Signals(stopped[0]).name}: the run was asked to stop, and its processes were ended"
        elif os.path.exists(failure_path):
            with open(failure_path) as f:
                cause = json.load(f)["error"]
        peak = peaks.get(failed[-1], 0) if failed else 0
        message = (
            f"{where} {'stopped' if stopped else 'failed'}: {cause}"
            + (f" (peak memory {peak / 2**30:.1f} GB)" if peak and not stopped else "")
            + f"; log: {log_path}"
        )
        report["failed"] = {"component": where, "cause": cause, "log": log_path}
    try:
        report["html"] = write_html(report, os.path.join(root, "report.html"))
    except Exception as e:  # the run's outcome stands; only its charts are missing
        report["html"] = None
        echo(f"[collabfeat] the HTML report could not be written: {type(e).__name__}: {e}")
    with open(report_path, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    if "failed" in report:
        raise PipelineStopped(message, report, stopped[0]) if stopped else PipelineFailed(message, report)
    return report


def _child(config_path: str, until: str, report_path: str, failure_path: str) -> int:
    from pipeline.run import run_local  # lazy: only the child imports TFX

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
