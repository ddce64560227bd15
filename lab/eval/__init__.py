"""Evaluation engine: benchmarks, sandbox, run store and runner."""
