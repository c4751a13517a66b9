"""Detector-training data sets from real clips and their face swaps (`python -m engine.dataset_export`).

Detector research needs fakes with exact labels: which video is fake, which frames, which pixels,
whose faces, made how. A data set folder holds

    clips/real_NNNN/c23.mp4, c40.mp4          each distinct real clip, re-encoded at each crf
    clips/fake_NNNN/c23.mp4, c40.mp4          each swap, re-encoded at each crf
    clips/fake_NNNN/mask.mp4                  the binarised merge alpha, lossless (libx264rgb crf 0)
    manifest.json                             labels, identities, provenance, splits, sha256 of every file

* pairs.py reads and checks the pairs file (real, fake, mask, identities) before anything is written;
* splits.py assigns identities to train/val/test so that no identity is in two splits;
* encode.py runs ffmpeg with fixed, single-threaded, bit-exact settings (same seed, same bytes);
* masks.py turns the merge's mask output into binary masks and frame labels;
* export.py writes the folder and its manifest.
"""
