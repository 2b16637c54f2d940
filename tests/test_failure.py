"""A component that dies (here: the pipeline's process killed with SIGKILL while MFTrainer runs, as
the kernel's out-of-memory killer would) ends the run with one line naming the component, the cause
and the log, and the report of the components that finished is still written."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil

from collabfeat import config as config_lib
from collabfeat.pipeline import supervise
from tests.test_end_to_end import TINY


def test_a_killed_component_is_named_with_its_cause_and_the_finished_ones_are_reported(tmp_path):
    cmd = [sys.executable, "-m", "collabfeat", "demo", "--set", f"runner.output_dir={tmp_path}"]
    for setting in TINY + ["mf.epochs=400"]:      # MFTrainer long enough to be caught running
        cmd += ["--set", setting]
    cli = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, deadline = [], time.time() + 400
    try:
        for line in cli.stdout:
            lines.append(line)
            if "MFTrainer running" in line:
                break
            assert time.time() < deadline, "".join(lines)
        else:
            raise AssertionError("the console never said that MFTrainer runs:\n" + "".join(lines))
        [pipeline] = psutil.Process(cli.pid).children()   # the supervised pipeline process
        pipeline.send_signal(signal.SIGKILL)
        out, err = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
    log = os.path.join(tmp_path, "collabfeat", "pipeline.log")
    assert cli.returncode == 1
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(re.escape("collabfeat: MFTrainer failed: killed by signal 9 (SIGKILL: the kernel's "
                                  "out-of-memory killer sends this when memory runs out)")
                        + r"( \(peak memory \d+\.\d GB\))?" + re.escape(f"; log: {log}"), last), last
    assert os.path.exists(log)
    # The report of what finished: written, printed, and not mixed with any earlier run.
    report = json.load(open(os.path.join(tmp_path, "collabfeat", "report.json")))
    assert report["failed"]["component"] == "MFTrainer"
    assert report["components"]["MFTrainer"]["state"] == "running"
    assert report["components"]["MFTrainer"]["seconds"] > 0
    assert report["components"]["LogTransform"]["state"] == "complete"
    assert report["logs"]["rows_total"] == report["datasheet"]["rows"]
    assert "mf" not in report and "cnn" not in report and "push" not in report
    assert "behaviour logs:" in out and "FAILED: MFTrainer: killed by signal 9" in out


def test_a_stop_signal_ends_the_whole_tree_and_names_where_the_run_stopped(tmp_path):
    """SIGTERM to the command (what a scheduler or `kill` sends) stops the pipeline and Beam's worker
    processes too, not only the supervising process, and the report of what finished is written."""
    cmd = [sys.executable, "-m", "collabfeat", "demo", "--set", f"runner.output_dir={tmp_path}"]
    for setting in TINY:
        cmd += ["--set", setting]
    cli = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, deadline = [], time.time() + 400
    try:
        for line in cli.stdout:
            lines.append(line)
            if "LogsExampleGen running" in line:
                break
            assert time.time() < deadline, "".join(lines)
        else:
            raise AssertionError("the console never said that LogsExampleGen runs:\n" + "".join(lines))
        tree = []
        while time.time() < deadline:    # until Beam's workers are up
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
    report = json.load(open(os.path.join(tmp_path, "collabfeat", "report.json")))
    where = report["failed"]["component"]
    assert report["components"][where]["state"] == "running"
    assert report["components"]["ImageImport"]["state"] == "complete"
    log = os.path.join(tmp_path, "collabfeat", "pipeline.log")
    assert err.strip().splitlines()[-1] == (f"collabfeat: {where} stopped: SIGTERM: the run was asked to stop, "
                                            f"and its processes were ended; log: {log}")
    # The next run resumes where this one stopped: what had finished is reused from TFX's cache.
    cfg = config_lib.load(overrides=TINY + [f"runner.output_dir={tmp_path}"])
    resumed = supervise.run(cfg, "validate", log)
    assert resumed["components"]["ImageImport"]["state"] == "cached"
    assert resumed["components"][where]["state"] == "complete"


def _cmdline(p):
    try:
        return p.cmdline()
    except psutil.Error:
        return []
