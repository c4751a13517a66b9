"""Swap-quality metrics for `python -m engine.evaluate` (issue 9, DFL_SPEC §5).

identity (dlib face embeddings), geometry_metrics (pose, expression, landmark jitter), quality
(masked SSIM/PSNR, colour flicker) and report (summary, JSON, PNG curves). All of it runs on the
host on one frame pair at a time: the models (dlib, OpenCV's TFLite detector) are CPU libraries
and the metrics are a few small reductions per frame, so there is nothing to gain from jitting.
"""
