"""Benchmarks of sm_tracing's hot paths: run ``python benchmarks/run.py``."""
