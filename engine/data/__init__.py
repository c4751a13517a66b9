"""The data layer: facesets -> sampled, batch-sharded device batches (see train_data.py).

sampler.py   which faces each position holds (shuffled epochs, uniform yaw, validation split)
sources.py   resident (gather on the devices) and streamed (TensorStore reads) faceset sources
prefetch.py  batches prepared ahead on background threads
"""
from engine.data.train_data import TrainData

__all__ = ["TrainData"]
