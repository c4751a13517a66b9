"""`info`: what a faceset holds, as a dict (for --json) and as a short human-readable report."""
from __future__ import annotations

import math
import os

import numpy as np

from preprocessing.faceset import face_stats
from preprocessing.faceset.reader import Faceset

YAW_BINS = 9  # 20-degree bins over [-90, 90]
_BAR_WIDTH = 40


def bytes_on_disk(path: str) -> int:
    """Total size of the files under `path`."""
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def _stats(values: np.ndarray) -> dict[str, float] | None:
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    return {"min": float(values.min()), "mean": float(values.mean()),
            "median": float(np.median(values)), "max": float(values.max())}


def yaw_histogram(yaw_radians: np.ndarray, bins: int = YAW_BINS) -> list[dict]:
    """Face counts per equal yaw bin over [-90, 90] degrees (angles beyond go to the end bins)."""
    degrees = np.degrees(np.asarray(yaw_radians, np.float64))
    index = np.clip(np.floor((degrees + 90.0) / 180.0 * bins), 0, bins - 1).astype(np.int64)
    counts = np.bincount(index, minlength=bins)
    edges = np.linspace(-90.0, 90.0, bins + 1)
    return [{"from": float(edges[k]), "to": float(edges[k + 1]), "count": int(counts[k])} for k in range(bins)]


def _source_summary(source: dict) -> dict:
    name = source.get("name") or os.path.basename(str(source.get("path", ""))) or "?"
    frames = source.get("frames", source.get("frame_count"))
    return {"name": name, "frames": frames, "fps": source.get("fps")}


def faceset_info(fs: Faceset) -> dict:
    """Everything `info` reports, JSON-able."""
    n = len(fs)
    arrays = {name: {"dtype": a["dtype"], "shape": [n, *a["shape"]]} for name, a in fs.manifest["arrays"].items()}
    disk = bytes_on_disk(fs.path)
    return {
        "path": fs.path,
        "count": n,
        "face_type": fs.face_type.dfl_name,
        "size": fs.size,
        "sources": [_source_summary(s) for s in fs.sources],
        "arrays": arrays,
        "bytes_on_disk": disk,
        "bytes_per_face": disk / n if n else None,
        "score": _stats(face_stats.column(fs, "score")) if n else None,
        "blur": _stats(face_stats.column(fs, "blur")) if n else None,
        "yaw_histogram": yaw_histogram(face_stats.column(fs, "pose")[:, 1] if n else np.zeros(0)),
    }


def _format_stats(s: dict | None) -> str:
    if s is None:
        return "-"
    return "min {min:.4g}  mean {mean:.4g}  median {median:.4g}  max {max:.4g}".format(**s)


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_info(info: dict) -> str:
    """The report printed by `info` without --json."""
    lines = [
        f"faceset {info['path']}",
        f"  faces      {info['count']}",
        f"  face type  {info['face_type']}, {info['size']}x{info['size']} px",
        f"  on disk    {_format_bytes(info['bytes_on_disk'])}"
        + (f" ({_format_bytes(info['bytes_per_face'])} per face)" if info["bytes_per_face"] else ""),
        f"  score      {_format_stats(info['score'])}",
        f"  blur       {_format_stats(info['blur'])}",
        "  sources",
    ]
    for s in info["sources"]:
        fps = f", {s['fps']:.3g} fps" if isinstance(s["fps"], (int, float)) else ""
        frames = f"{s['frames']} frames" if s["frames"] is not None else "? frames"
        lines.append(f"    {s['name']}: {frames}{fps}")
    lines.append("  arrays")
    for name, a in info["arrays"].items():
        lines.append(f"    {name:18s} {a['dtype']} {a['shape']}")
    lines.append("  yaw (degrees)")
    top = max((b["count"] for b in info["yaw_histogram"]), default=0)
    for b in info["yaw_histogram"]:
        bar = "#" * (math.ceil(b["count"] / top * _BAR_WIDTH) if top else 0)
        lines.append(f"    {b['from']:+4.0f} .. {b['to']:+4.0f}  {b['count']:6d}  {bar}")
    return "\n".join(lines)
