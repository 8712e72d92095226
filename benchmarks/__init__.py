"""Benchmarks of dkmeans against its peers (run as ``python -m benchmarks.<name>``)."""
