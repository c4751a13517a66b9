"""The persistent XLA compilation cache the commands use unless JAX_COMPILATION_CACHE_DIR is set."""
from __future__ import annotations

import os

DEFAULT_DIR = os.path.expanduser("~/.cache/faceswap_jax/xla")


def use_default_compilation_cache() -> None:
    """On by default, so a resumed or repeated run skips compiling; call before JAX is imported."""
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", DEFAULT_DIR)
