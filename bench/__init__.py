"""Benchmarks: every figure a ratio or difference against a reference measured in the same run."""
