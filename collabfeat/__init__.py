"""collabfeat: image features learned from user behaviour, served for visual similarity search.

The package's parts live in the repository's top-level folders and are installed as
subpackages: collabfeat.pipeline, .transform, .trainer, .serving, .kubeflow (see setup.py).
In a source checkout the same names resolve to those folders directly.
"""

import os as _os

__version__ = "0.1.0"

_top = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_top, "setup.py")) and _top not in __path__:
    __path__.append(_top)


def __getattr__(name):
    """collabfeat.ScannIndex, the Indexer's artifact type: on Kubeflow a custom artifact type is found
    again by importing its type name (KFP allows only `module.Class`), and it lives in
    collabfeat.pipeline.components (imported only when asked, as it imports TFX)."""
    if name == "ScannIndex":
        from collabfeat.pipeline.components import ScannIndex

        return ScannIndex
    raise AttributeError(f"module 'collabfeat' has no attribute {name!r}")
