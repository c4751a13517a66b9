"""Provenance of merged outputs: the pixel watermark (watermark.py) and the checker that reads
every marker back (verify.py, `python -m engine.provenance verify FILE`)."""
