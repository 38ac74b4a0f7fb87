"""Benchmarks that put vidtune's components side by side with the alternatives (``vidtune bench``)."""
