"""Faceset storage: sharded TensorStore zarr v3 arrays plus manifest.json (see writer.py)."""
from preprocessing.faceset.edit import add_array, remove_array
from preprocessing.faceset.reader import Faceset
from preprocessing.faceset.schema import RESERVED_ARRAYS, STANDARD_ARRAYS
from preprocessing.faceset.writer import FacesetWriter

__all__ = ["Faceset", "FacesetWriter", "add_array", "remove_array", "STANDARD_ARRAYS", "RESERVED_ARRAYS"]
