"""Extraction side of the pipeline: video I/O, face detection and landmarks, alignment, masks,
TensorStore facesets and the tools that manage them."""
