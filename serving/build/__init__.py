"""Build time: what the pipeline nodes make for serving: the feature and serving SavedModels (export),
the ScaNN index (index) and the pushed version (push)."""
