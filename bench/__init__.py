"""Benchmarks: each prints a table, writes JSON under bench/results/, and measures a baseline in the same run."""
