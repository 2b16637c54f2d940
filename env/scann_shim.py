"""Makes `import scann` safe under TensorFlow 2.21.

scann 1.4.2 ships TensorFlow custom ops compiled against another TF release;
loading them raises NotFoundError (undefined absl symbol). TFX imports TFRS,
which imports scann, in every process including Beam workers, so this module is
imported from a .pth file at interpreter start-up. It pre-registers an empty
`scann.scann_ops.py.scann_ops` so the broken op library is never loaded.
ScaNN itself stays fully usable through `scann.scann_ops_pybind`.
"""
import sys
import types

_NAME = "scann.scann_ops.py.scann_ops"


def _missing(attr):
    raise AttributeError(
        f"{_NAME}.{attr}: ScaNN's TensorFlow ops are disabled in this environment "
        "(built for another TF release); use scann.scann_ops_pybind instead")


if _NAME not in sys.modules:
    _stub = types.ModuleType(_NAME)
    _stub.__getattr__ = _missing
    sys.modules[_NAME] = _stub
