"""Batching of concurrent embedding calls into one run of the model."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np


class Batcher:
    """Runs fn(array) -> array once for the concatenation of concurrent calls, with no thread of
    its own: the first caller leads, runs the calls queued so far (up to batch_size rows) on its
    own thread and answers them; when more calls queued meanwhile, it hands the lead to the oldest.
    So a lone call runs at once on its own thread (no hand-off, no wait), and under load each
    batch holds what arrived while the previous one ran. `wait_s` > 0 makes a leader wait that long
    for company first. A failed batch is retried call by call, so one bad call fails alone."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], batch_size: int, wait_s: float = 0.0):
        self.fn, self.batch_size, self.wait_s = fn, batch_size, wait_s
        self.lock = threading.Lock()
        self.pending: list[_Call] = []
        self.leading = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if len(x) >= self.batch_size:
            return self.fn(x)
        call = _Call(x)
        with self.lock:
            self.pending.append(call)
            call.lead = not self.leading
            self.leading = True
        while not call.answered.is_set():
            if call.lead:
                call.lead = False
                self._lead()
            else:
                call.woken.wait()
                call.woken.clear()
        if call.error is not None:
            raise call.error
        return call.result

    def _lead(self):
        try:
            if self.wait_s > 0:
                time.sleep(self.wait_s)
            with self.lock:
                batch, rows = [], 0
                while self.pending and (not batch or rows + len(self.pending[0].x) <= self.batch_size):
                    batch.append(self.pending.pop(0))
                    rows += len(batch[-1].x)
            self._run(batch)
        finally:  # the oldest waiting call leads next, or nobody leads
            with self.lock:
                if self.pending:
                    self.pending[0].lead = True
                    self.pending[0].woken.set()
                else:
                    self.leading = False

    def _run(self, batch: list[_Call]):
        if len(batch) > 1:
            try:
                out = self.fn(np.concatenate([c.x for c in batch]))
                start = 0
                for c in batch:
                    c.answer(result=out[start : start + len(c.x)])
                    start += len(c.x)
                return
            except Exception:  # find the culprit: run each call on its own
                pass
        for c in batch:
            try:
                c.answer(result=self.fn(c.x))
            except Exception as e:
                c.answer(error=e)


class _Call:
    __slots__ = ("x", "result", "error", "lead", "answered", "woken")

    def __init__(self, x):
        self.x, self.result, self.error, self.lead = x, None, None, False
        self.answered, self.woken = threading.Event(), threading.Event()

    def answer(self, result=None, error=None):
        self.result, self.error = result, error
        self.answered.set()
        self.woken.set()
