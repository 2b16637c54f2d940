"""Kubeflow Pipelines: the compiled spec (runner.py) and a local executor of it (local.py)."""
