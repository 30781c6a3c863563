"""Benchmarks, run on demand from the repository root (``python3 -m bench.run``), never in CI."""
