"""Benchmark scripts; each prints its figures and runs on loopback or in-process only."""
