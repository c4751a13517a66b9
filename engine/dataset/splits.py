"""Train/val/test splits by identity: a detector must not be tested on faces it was trained on.

A swap ties two identities together (the face put in and the person it was put on), so the unit
of assignment is a connected group of identities: every identity reachable through swaps goes to
the same split. Groups are shuffled by the seed and dealt, one at a time, to the split furthest
below its target share of clips.
"""
from __future__ import annotations

import numpy as np

from preprocessing.errors import UserError

SPLITS = ("train", "val", "test")


def parse_fractions(text: str) -> dict[str, float]:
    """'0.7,0.15,0.15' -> {'train': 0.7, 'val': 0.15, 'test': 0.15}; they must sum to 1."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--split={text}: expected three numbers like 0.7,0.15,0.15") from None
    if len(values) != len(SPLITS) or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise UserError(f"--split={text}: expected three fractions >= 0 (train,val,test) that sum to 1")
    return dict(zip(SPLITS, values))


def _groups(links: list[tuple[str, str]]) -> list[list[str]]:
    """Connected groups of identities (union-find), each sorted, sorted by their first name."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in links:
        parent[root(a)] = root(b)
    groups: dict[str, list[str]] = {}
    for name in parent:
        groups.setdefault(root(name), []).append(name)
    return sorted(sorted(g) for g in groups.values())


def assign_splits(links: list[tuple[str, str]], fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Split name of every identity. `links` holds one (identity_src, identity_dst) per clip; a
    group's weight is its number of clips, so the fractions hold for clips, not identities."""
    groups = _groups(links)
    weight = {name: 0 for group in groups for name in group}
    for a, _b in links:
        weight[a] += 1
    total = len(links)
    filled = dict.fromkeys(SPLITS, 0)
    used = [s for s in SPLITS if fractions[s] > 0]
    split_of: dict[str, str] = {}
    for i in np.random.default_rng(seed).permutation(len(groups)):
        group = groups[i]
        target = max(used, key=lambda s: fractions[s] * total - filled[s])  # ties: the earlier split
        filled[target] += sum(weight[name] for name in group)
        split_of.update((name, target) for name in group)
    return split_of
