"""Installs collabfeat: the core package `collabfeat` and the layers above it, one top-level package per folder."""

import re
from pathlib import Path

from setuptools import setup

PACKAGES = ["collabfeat", "transform", "trainer", "serving", "serving.build", "pipeline", "kubeflow"]
here = Path(__file__).parent
version = re.search(r'__version__ = "([^"]+)"', (here / "collabfeat" / "__init__.py").read_text()).group(1)
requirements = [line.split("#")[0].strip() for line in (here / "env" / "requirements.in").read_text().splitlines()]

setup(
    name="collabfeat",
    version=version,
    description="Collaborative feature learning: image features from user behaviour, "
    "with TFX, TFRS, ScaNN and TF Serving",
    python_requires=">=3.11",
    packages=PACKAGES,
    package_data={
        "transform": ["*.pbtxt"],
        "serving": ["static/*", "static/**/*"],
        "kubeflow": ["*.yaml", "Dockerfile"],
    },
    install_requires=[r for r in requirements if r],
    entry_points={"console_scripts": ["collabfeat=collabfeat.cli:main"]},
)
