"""Benchmarks: `make bench` (or `python -m bench [mf|ann]`). Results go to bench/results/."""
