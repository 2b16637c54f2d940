"""The suite runs on pytest-xdist's workers (pytest.ini: one per core, at most 4), one test file per
worker at a time, so a module's fixture (the end-to-end run) is made once.

- Each worker has a temporary directory of its own (TMPDIR, inherited by every process a test
  starts), so a test that checks what a run leaves in the temporary directory sees only its own.
- Tiers: `./run test -m "not slow"` is the unit tier (about a minute); the tests of the files in
  SLOW_FILES (whole pipelines, a browser, killed processes) and those marked @pytest.mark.slow
  are the slow tier. `./run test` runs both.
- The longest files are handed out first, so the workers finish together rather than one waiting
  for the last long file; the order is measured (`--durations`), not needed for correctness.
"""

import os
import shutil
import tempfile

import pytest

LONGEST_FIRST = [
    "test_runtime.py",
    "test_end_to_end.py",
    "test_failure.py",
    "test_explorer.py",
    "test_transform.py",
    "test_examplegen.py",
]


def pytest_configure(config):
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        config._collabfeat_tmp = tempfile.mkdtemp(prefix=f"collabfeat-tests-{worker}-")
        os.environ["TMPDIR"] = config._collabfeat_tmp
        tempfile.tempdir = None  # tempfile reads TMPDIR again


def pytest_unconfigure(config):
    tmp = getattr(config, "_collabfeat_tmp", None)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


SLOW_FILES = {
    "test_runtime.py",
    "test_end_to_end.py",
    "test_failure.py",
    "test_explorer.py",
    "test_kubeflow.py",
    "test_serving.py",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)

    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file's tests keep their order
