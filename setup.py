"""Installs the package `collabfeat`; its subpackages live in the top-level folders."""

import re
from pathlib import Path

from setuptools import setup

SUBPACKAGES = ["pipeline", "transform", "trainer", "serving", "kubeflow"]
here = Path(__file__).parent
version = re.search(r'__version__ = "([^"]+)"', (here / "collabfeat" / "__init__.py").read_text()).group(1)
requirements = [line.split("#")[0].strip() for line in (here / "env" / "requirements.in").read_text().splitlines()]

setup(
    name="collabfeat",
    version=version,
    description="Collaborative feature learning: image features from user behaviour, "
    "with TFX, TFRS, ScaNN and TF Serving",
    python_requires=">=3.11",
    packages=["collabfeat"] + [f"collabfeat.{p}" for p in SUBPACKAGES],
    package_dir={"collabfeat": "collabfeat", **{f"collabfeat.{p}": p for p in SUBPACKAGES}},
    package_data={
        "collabfeat.transform": ["*.pbtxt"],
        "collabfeat.serving": ["static/*", "static/**/*"],
        "collabfeat.kubeflow": ["*.yaml", "Dockerfile"],
    },
    install_requires=[r for r in requirements if r],
    entry_points={"console_scripts": ["collabfeat=collabfeat.cli:main"]},
)
