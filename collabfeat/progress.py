"""How far the long steps inside the pipeline's components are, for the console.

The components run in a child process whose output goes to the log file. A step that knows how far
it is calls `update(task, done, total)`. Warnings that matter to the user go the same way
(`warn`). The updates go, as JSON lines, to the file named by
$COLLABFEAT_PROGRESS, at most every half second per task (and always at the end); without that
variable nothing is written. The supervisor (pipeline/supervise.py) reads the file and draws one
progress bar per task (tqdm) when the console is a terminal.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator

ENV = "COLLABFEAT_PROGRESS"
EVERY = 0.5
_last: dict = {}


def update(task: str, done: int, total: int | None = None, unit: str = "steps") -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    now = time.time()
    if total is None or done < total:
        if now - _last.get(task, 0.0) < EVERY:
            return
    _last[task] = now
    with open(path, "a") as f:
        f.write(
            json.dumps({"task": task, "done": int(done), "total": None if total is None else int(total), "unit": unit})
            + "\n"
        )


def warn(message: str) -> None:
    """A warning the user should see on the console (not only in the log)."""
    path = os.environ.get(ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"warning": message}) + "\n")


def iterate(items: Iterable, task: str, total: int | None = None, unit: str = "batches") -> Iterator:
    """`items`, passed through, counting them as the task's progress."""
    done = 0
    for done, item in enumerate(items, 1):
        update(task, done - 1, total, unit)
        yield item
    update(task, done, done, unit)  # finished: the count is the total


def keras_callback(task: str):
    """A Keras callback that reports the batches of all epochs of a fit() as one task."""
    import tensorflow as tf  # lazy: TensorFlow's start-up (seconds), only on this path

    class Progress(tf.keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.steps, self.epochs = self.params.get("steps"), self.params.get("epochs", 1)
            self.done = 0

        def on_train_batch_end(self, batch, logs=None):
            self.done += 1
            update(task, self.done, self.epochs * self.steps if self.steps else None, "batches")

        def on_train_end(self, logs=None):
            update(task, self.done, self.done, "batches")

    return Progress()


class Reader:
    """The supervisor's side: the updates appended since the last read, one task's newest each,
    and the warnings (under the key "warnings", in order)."""

    def __init__(self, path: str):
        self.path, self.offset = path, 0

    def read(self) -> dict:
        if not os.path.exists(self.path):
            return {}
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time
        self.offset += len(complete)
        newest = {}
        for line in complete.decode().splitlines():
            try:
                u = json.loads(line)
            except ValueError:
                continue
            if "warning" in u:
                newest.setdefault("warnings", []).append(u["warning"])
            else:
                newest[u["task"]] = u
        return newest
