"""The TFX pipeline: the DAG (pipeline.py), its thin components (components.py), running and reporting it."""


def __getattr__(name):
    """pipeline.ScannIndex, the Indexer's artifact type (TYPE_NAME "pipeline.ScannIndex"): Kubeflow finds
    a custom artifact type again by importing its type name, which its compiler allows only as
    `module.Class`. Imported when asked only, as components.py imports TFX."""
    if name == "ScannIndex":
        from pipeline.components import ScannIndex  # lazy: components.py imports TFX, wanted only here

        return ScannIndex
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
