"""Implementations in other frameworks, used only to time ours side by side (benchmarks.compare_torch).

They must not import the engine or JAX: they run in their own interpreter (e.g. a Python 3.11
virtualenv that has torch) and only share the data and the shapes.
"""
