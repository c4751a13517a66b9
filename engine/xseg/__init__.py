"""XSeg segmentation: training data and augmentation, the jitted steps, the training loop, and
model loading for apply and merge (DFL_SPEC §2). The network is engine.models.xseg."""
