"""The suite runs on pytest-xdist's workers (pytest.ini: one per core, at most 4), one test file per
worker at a time, so a module's fixture (the end-to-end run) is made once.

- Each worker has a temporary directory of its own (TMPDIR, inherited by every process a test
  starts), so a test that checks what a run leaves in the temporary directory sees only its own.
- The longest files are handed out first, so the workers finish together rather than one waiting
  for the last long file; the order is measured (`--durations`), not needed for correctness.
"""
import os
import shutil
import tempfile

LONGEST_FIRST = ["test_runtime.py", "test_end_to_end.py", "test_failure.py", "test_explorer.py",
                 "test_transform.py", "test_examplegen.py"]


def pytest_configure(config):
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        config._collabfeat_tmp = tempfile.mkdtemp(prefix=f"collabfeat-tests-{worker}-")
        os.environ["TMPDIR"] = config._collabfeat_tmp
        tempfile.tempdir = None          # tempfile reads TMPDIR again


def pytest_unconfigure(config):
    tmp = getattr(config, "_collabfeat_tmp", None)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)      # stable: each file's tests keep their order
