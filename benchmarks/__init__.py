"""Benchmarks of tilted engines against exact targets: run with `./run bench` (see docs/benchmarks.md)."""
