"""The docs: results.md is what the committed results give, and every file a doc cites exists."""

import glob
import os
import re

from bench import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CITED = re.compile(
    r"(?<![\w/.-])((?:bench|docs|env|kubeflow|pipeline|serving|trainer|transform|collabfeat|tests|\.ci)"
    r"/[\w./-]*\w\.(?:json|md|py|sh|yaml|html|png|txt|in|lock))\b"
)


def test_results_md_is_generated_from_the_committed_results():
    with open(report.TARGET) as f:
        assert f.read() == report.render(), "docs/results.md is stale: run ./run bench report"


def test_every_file_the_docs_cite_exists():
    docs = [os.path.join(ROOT, "README.md")] + glob.glob(os.path.join(ROOT, "docs", "*.md"))
    missing = []
    for doc in docs:
        with open(doc) as f:
            for path in CITED.findall(f.read()):
                if not os.path.exists(os.path.join(ROOT, path)):
                    missing.append(f"{os.path.relpath(doc, ROOT)} cites {path}")
    assert not missing, "\n".join(missing)


def test_the_citation_pattern_finds_paths_and_misses_prose():
    text = "see `bench/results/quality.json`, docs/design.md and (serving/server.py); not a/b or v1.2/x"
    assert CITED.findall(text) == ["bench/results/quality.json", "docs/design.md", "serving/server.py"]
