"""Flax NNX networks of the training engine: SAEHD (DF / LIAE) and their building blocks."""
from engine.models.saehd import (SAEHD, Archi, Decoder, Encoder, Inter, param_counts, parse_archi,
                                 validate_model_config)

__all__ = ["SAEHD", "Archi", "Decoder", "Encoder", "Inter", "param_counts", "parse_archi",
           "validate_model_config"]
