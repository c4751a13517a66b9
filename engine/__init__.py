"""Training and merging engine (JAX/Flax). Filled in by the training and merge issues."""
