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
