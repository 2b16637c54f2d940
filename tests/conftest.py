import os

import pytest

from collabfeat import config as config_lib


@pytest.fixture
def cfg():
    return config_lib.Config()


def find_artifact(pipeline_root, component, output):
    """The single artifact directory a LocalDagRunner run wrote for component.output."""
    base = os.path.join(pipeline_root, component, output)
    runs = sorted(os.listdir(base), key=int)
    return os.path.join(base, runs[-1])
