"""Benchmarks: run as modules, print tables; never asserted in tests."""
