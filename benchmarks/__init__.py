"""Throughput and scaling programs; results are recorded in benchmarks/RESULTS.md."""
