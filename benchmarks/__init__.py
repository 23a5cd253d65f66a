"""Benchmarks of docs/performance.md: ``python -m benchmarks.run`` or ``perceptio bench``."""
