"""Benchmarks: commands that print throughput and latency, with a baseline in the same run."""
