"""collabfeat: image features learned from user behaviour, served for visual similarity search.

This package is the core: configuration, data formats and storage, the simulated and packaged data. The
layers above it are the repository's top-level packages, each importing only those below it
(docs/design.md, "Layers"): transform and trainer (the model and data code), serving (the build-time
code in serving.build, the server in serving), pipeline (the TFX DAG and its thin components) and
kubeflow. collabfeat.cli, the command line, is the one module that sits on top of them all.
"""

__version__ = "0.1.0"
