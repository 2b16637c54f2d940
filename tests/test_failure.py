"""A run that is stopped (SIGTERM, what a scheduler or `kill` sends) or whose component dies (SIGKILL,
as the kernel's out-of-memory killer would) ends with one line naming the component, the cause and
the log; the report of the components that finished is still written, and the next run resumes
where the last one ended. One test, two runs: the second resumes the first."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil

from tests.test_end_to_end import TINY

# TFX runs the feature-set nodes that need only the images (supervised, rotation, ImageNet) in the
# layer before LogTransform; this test stops and kills the run in the behaviour path, so it compares
# only with the baselines that train nothing.
SETTINGS = TINY + ["eval.baselines=[random,pixels]"]


def _start(tmp_path):
    cmd = [sys.executable, "-m", "collabfeat", "demo", "--set", f"runner.output_dir={tmp_path}"]
    for setting in SETTINGS:
        cmd += ["--set", setting]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(cli, text, deadline):
    lines = []
    for line in cli.stdout:
        lines.append(line)
        if text in line:
            return lines
        assert time.time() < deadline, "".join(lines)
    raise AssertionError(f"the console never said {text!r}:\n" + "".join(lines))


def _report(tmp_path):
    with open(os.path.join(tmp_path, "collabfeat", "report.json")) as f:
        return json.load(f)


def test_a_stopped_run_and_a_killed_component_are_named_and_the_next_run_resumes(tmp_path):
    log = os.path.join(tmp_path, "collabfeat", "pipeline.log")

    # 1. SIGTERM while LogsExampleGen runs: the pipeline and Beam's worker processes end too.
    cli = _start(tmp_path)
    deadline = time.time() + 400
    try:
        _wait_for(cli, "LogsExampleGen running", deadline)
        tree = []
        while time.time() < deadline:  # until Beam's workers are up
            tree = psutil.Process(cli.pid).children(recursive=True)
            if any("sdk_worker_main" in " ".join(_cmdline(p)) for p in tree):
                break
            time.sleep(0.1)
        assert len(tree) >= 2, tree
        cli.send_signal(signal.SIGTERM)
        out, err = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
    _, alive = psutil.wait_procs(tree, timeout=5)
    assert alive == [], f"processes of the stopped run still run: {[_cmdline(p) for p in alive]}"
    assert cli.returncode == 128 + signal.SIGTERM, err
    report = _report(tmp_path)
    stopped = report["failed"]["component"]
    assert report["components"][stopped]["state"] == "running"
    assert report["components"]["ImageImport"]["state"] == "complete"
    assert err.strip().splitlines()[-1] == (
        f"collabfeat: {stopped} stopped: SIGTERM: the run was asked to stop, and its processes were ended; log: {log}"
    )

    # 2. The same command again resumes: what had finished comes from TFX's cache. SIGKILL to the
    #    pipeline's process (as the out-of-memory killer would) while LogTransform's Beam workers run:
    #    the component is named, and its orphaned workers are ended too.
    cli = _start(tmp_path)
    try:
        said = _wait_for(cli, "LogTransform running", time.time() + 400)
        [pipeline] = psutil.Process(cli.pid).children()  # the supervised pipeline process
        workers = _beam_workers(pipeline, time.time() + 120)
        pipeline.send_signal(signal.SIGKILL)
        out, err = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert alive == [], f"the killed pipeline's workers still run: {[_cmdline(p) for p in alive]}"
    assert cli.returncode == 1
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(
        re.escape(
            "collabfeat: LogTransform failed: killed by signal 9 (SIGKILL: the kernel's "
            "out-of-memory killer sends this when memory runs out)"
        )
        + r"( \(peak memory \d+\.\d GB\))?"
        + re.escape(f"; log: {log}"),
        last,
    ), last
    assert os.path.exists(log)
    # The report of what finished: written, printed, and not mixed with the earlier run.
    report = _report(tmp_path)
    comps = report["components"]
    assert report["failed"]["component"] == "LogTransform"
    assert comps["LogTransform"]["state"] == "running" and comps["LogTransform"]["seconds"] > 0
    assert comps["ImageImport"]["state"] == "cached"
    assert comps[stopped]["state"] == "complete"
    assert sum(report["images"]["catalogue"]["counts"].values()) == report["datasheet"]["images"]["catalogue"]
    assert "logs" not in report and "mf" not in report and "push" not in report
    assert any("ImageImport cached" in line for line in said), said
    assert "FAILED: LogTransform: killed by signal 9" in out


def _beam_workers(pipeline, deadline):
    while time.time() < deadline:
        workers = [p for p in pipeline.children(recursive=True) if "sdk_worker_main" in " ".join(_cmdline(p))]
        if workers:
            return workers
        time.sleep(0.1)
    raise AssertionError("LogTransform's Beam workers never started")


def _cmdline(p):
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def test_a_component_of_a_second_is_measured_by_its_recorded_start_and_end(tmp_path):
    """The supervisor's memory samples count for the component whose recorded window holds them, so
    one that ran for about a second (between two of the once-a-second polls of MLMD) still gets its
    peak. A real child allocates 400 MB for one second between idle seconds; the windows are the
    times it wrote down."""
    from pipeline.supervise import Console, Watch

    times = tmp_path / "times.json"
    code = (
        "import json, time\n"
        "idle = time.time(); time.sleep(1.0)\n"
        "start = time.time(); block = bytearray(400 * 2**20); block[::4096] = b'x' * len(block[::4096])\n"
        "time.sleep(1.0); end = time.time(); del block\n"
        "time.sleep(1.0)\n"
        f"json.dump([idle, start, end, time.time()], open({str(times)!r}, 'w'))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    with Watch(child.pid, str(tmp_path / "none.sqlite"), 0, Console(echo=lambda line: None), interval=0.2) as watch:
        child.wait()
    idle, start, end, last = json.load(open(times))
    ran = [
        {"component": "Idle", "state": "complete", "started": idle, "ended": start - 0.05},
        {"component": "Allocates", "state": "complete", "started": start + 0.05, "ended": end},
        {"component": "After", "state": "complete", "started": end + 0.2, "ended": last},
        {"component": "Unsampled", "state": "complete", "started": last + 5, "ended": last + 6},
    ]
    peaks = watch.peaks(ran, until=time.time())
    mb = {name: peak / 2**20 for name, peak in peaks.items()}
    assert mb["Allocates"] > mb["Idle"] + 350 and mb["After"] < mb["Idle"] + 50, mb
    assert "Unsampled" not in peaks and watch.peak == peaks["Allocates"]
