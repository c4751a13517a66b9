"""Shared pytest setup: a persistent JAX compilation cache so a second run compiles nothing."""
import os

os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "jax"),
)
