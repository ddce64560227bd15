"""Benchmarks that print their numbers and write results files: `python -m lab.bench --help`."""
