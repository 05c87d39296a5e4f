"""Benchmarks: reproducible training runs whose figures go to docs/benchmarks.md."""
