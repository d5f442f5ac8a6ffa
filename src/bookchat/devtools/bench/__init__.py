"""Benchmarks run by `bookchat bench`."""
