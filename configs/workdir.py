"""The config a run folder was trained (or imported) with: `--config=configs/workdir.py:WORKDIR`.

Reads `WORKDIR/config.json`, so a run started elsewhere (e.g. by engine.import_dfl) continues with
its own model shape and options without retyping them; override fields as usual
(`--config.train.batch_size=16`).
"""
from __future__ import annotations

import json
import os

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    path = os.path.join(arg.strip(), "config.json")
    if not arg.strip() or not os.path.isfile(path):
        raise ValueError(f"configs/workdir.py:{arg}: no {path}; pass a run folder holding config.json")
    with open(path, encoding="utf-8") as f:
        return ml_collections.ConfigDict(json.load(f))
