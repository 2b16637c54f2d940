"""Progress from inside the components to the console (collabfeat/progress.py, pipeline/supervise.Console)."""

import json

import numpy as np

from collabfeat import progress
from pipeline.supervise import Console


def test_updates_are_throttled_and_read_back_newest_first(tmp_path, monkeypatch):
    path = tmp_path / "progress.jsonl"
    monkeypatch.setenv(progress.ENV, str(path))
    for i in range(1, 1001):  # 1000 updates within far less than EVERY seconds
        progress.update("a task", i, 1000)
    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert 2 <= len(written) < 10 and written[-1]["done"] == 1000  # the end is always written
    assert list(progress.iterate(range(7), "counting")) == list(range(7))
    reader = progress.Reader(str(path))
    newest = reader.read()
    assert newest["a task"]["done"] == 1000 and newest["counting"] == {
        "task": "counting",
        "done": 7,
        "total": 7,
        "unit": "batches",
    }
    with open(path, "a") as f:  # a line still being written is read once it is whole
        f.write('{"task": "late", "done": 1, "tot')
    assert reader.read() == {}
    with open(path, "a") as f:
        f.write('al": 2, "unit": "steps"}\n')
    assert reader.read() == {"late": {"task": "late", "done": 1, "total": 2, "unit": "steps"}}
    progress.warn("first")
    progress.update("late", 2, 2, "steps")
    progress.warn("second")
    assert reader.read() == {
        "warnings": ["first", "second"],
        "late": {"task": "late", "done": 2, "total": 2, "unit": "steps"},
    }
    monkeypatch.delenv(progress.ENV)
    progress.update("nowhere", 1, 1)  # without the variable: nothing, no error
    progress.warn("nowhere")


def test_keras_fit_reports_every_batch_of_every_epoch_as_one_task(tmp_path, monkeypatch):
    import tensorflow as tf

    path = tmp_path / "progress.jsonl"
    monkeypatch.setenv(progress.ENV, str(path))
    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((40, 3), np.float32)
    model.fit(x, x[:, :1], batch_size=8, epochs=3, verbose=0, callbacks=[progress.keras_callback("fit")])
    last = [json.loads(line) for line in path.read_text().splitlines()][-1]
    assert (last["done"], last["total"]) == (15, 15)  # 5 batches x 3 epochs


def test_console_lines_use_the_recorded_times_and_bars_only_on_request():
    lines = []
    c = Console(lines.append, bars=False, started=100.0)
    c.start({"component": "Transform", "started": 112.4})
    c.progress({"x": {"task": "x", "done": 1, "total": 2, "unit": "steps"}})  # no bars: nothing
    c.progress({"warnings": ["Evaluator: not blessed"]})  # warnings: always
    c.end({"component": "Transform", "state": "failed", "started": 112.4, "ended": 130.0, "outputs": {}})
    assert lines == [
        "[collabfeat]     12 s  Transform running",
        "[collabfeat] warning: Evaluator: not blessed",
        "[collabfeat]     30 s  Transform failed after 18 s",
    ]
    c = Console(lines.append, bars=True, started=100.0)
    c.progress({"x": {"task": "x", "done": 1, "total": 2, "unit": "steps"}})
    assert c.bars["x"].n == 1 and c.bars["x"].total == 2
    c.progress({"x": {"task": "x", "done": 2, "total": 2, "unit": "steps"}})
    assert c.bars == {}  # done: the bar is gone


def test_the_console_drops_tensorflow_start_up_noise_and_keeps_everything_else(tmp_path):
    """collabfeat/quiet.py in a real process: what it and its child write to stderr reaches the
    console without absl's and TensorFlow's start-up lines, in order."""
    import subprocess
    import sys

    noise = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1796404821.344949   18021 port.cc:153] oneDNN custom operations are on.\n"
        "E0000 00:00:1796408476.885512   14631 cuda_platform.cc:52] failed call to cuInit\n"
    )
    (tmp_path / "noise.txt").write_text(noise)
    child = tmp_path / "child.py"
    child.write_text(f"import os\nos.write(2, open({str(tmp_path / 'noise.txt')!r}, 'rb').read() + b'child\\n')\n")
    parent = tmp_path / "parent.py"
    parent.write_text(
        "import os, subprocess, sys\nfrom collabfeat import quiet\nquiet.start()\n"
        f"os.write(2, open({str(tmp_path / 'noise.txt')!r}, 'rb').read() + b'first\\n')\n"
        f"subprocess.run([sys.executable, {str(child)!r}], check=True)\n"
        "os.write(2, b'last, no newline')\nquiet.stop()\nos.write(2, b'\\nafter')\n"
    )
    done = subprocess.run([sys.executable, str(parent)], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr.decode() == "first\nchild\nlast, no newline\nafter"
    from collabfeat.quiet import keep

    assert all(not keep(line.encode()) for line in noise.splitlines())
    assert keep(b"collabfeat: MFTrainer failed: killed by signal 9") and keep(b"I0000 is not a log line")
