"""Benchmarks: `./run bench [mf|ann|serving]`. Results go to bench/results/."""
