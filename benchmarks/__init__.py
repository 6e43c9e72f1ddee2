"""Benchmarks of cusparseconv against its peers (``python -m benchmarks.run``)."""
