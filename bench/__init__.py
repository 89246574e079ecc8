"""Benchmarks (`make bench`): each module measures one path and writes its numbers."""
