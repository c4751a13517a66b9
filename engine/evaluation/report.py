"""Evaluation results: the summary of per-frame records, the JSON file and a PNG of the curves.

The PNG is drawn with OpenCV (already a dependency) rather than matplotlib, which the project
does not install. JSON has no infinity or NaN: +inf (PSNR of identical pixels) is written as the
string "inf" and NaN (no face to measure) as null.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

import cv2
import numpy as np

from engine.evaluation.quality import psnr_from_mse

# (record key, label, colour BGR) of the curves in the PNG, one panel each.
CURVES = (
    ("sim_src", "identity: cosine to src", (40, 140, 40)),
    ("sim_dst", "identity: cosine to dst", (40, 40, 200)),
    ("pose_error", "pose error, mean |deg| over axes", (160, 80, 0)),
    ("expression_error", "expression error (IOD)", (140, 0, 140)),
    ("ssim", "SSIM in face mask", (0, 120, 200)),
)
_PANEL_H, _PANEL_W, _PAD = 150, 900, 28


def _mean(values: Sequence[float | None]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarise(records: Sequence[dict[str, Any]], temporal: dict[str, float]) -> dict[str, Any]:
    """Whole-video numbers from per-frame records (see engine.evaluate) plus the temporal ones.

    PSNR is that of the mean masked MSE over frames (so one identical frame does not make it inf).
    """
    frames = len(records)
    both = [r for r in records if r["input_face"] and r["output_face"]]
    embedded = [r for r in both if r["sim_src"] is not None]
    errors = np.array([r["pose_delta"] for r in both], dtype=np.float64).reshape(-1, 3)
    mses = [r["mse"] for r in records if r["mse"] is not None]
    return {
        "frames": frames,
        "input_faces": sum(r["input_face"] for r in records),
        "output_faces": sum(r["output_face"] for r in records),
        "detected_fraction": sum(r["output_face"] for r in records) / frames if frames else float("nan"),
        "compared_frames": len(both),
        "identity": {
            "embedded_frames": len(embedded),
            "sim_src": _mean([r["sim_src"] for r in embedded]),
            "sim_dst": _mean([r["sim_dst"] for r in embedded]),
            "retrieval_accuracy": _mean([float(r["sim_src"] > r["sim_dst"]) for r in embedded]),
        },
        "pose_error_deg": {
            **{axis: _mean(list(np.abs(errors[:, i]))) for i, axis in enumerate(("pitch", "yaw", "roll"))},
            "mean": _mean(list(np.abs(errors).mean(1))),
            "bias": {axis: _mean(list(errors[:, i])) for i, axis in enumerate(("pitch", "yaw", "roll"))},
        },
        "expression_error_iod": _mean([r["expression_error"] for r in both]),
        "ssim": _mean([r["ssim"] for r in records]),
        "psnr_db": psnr_from_mse(float(np.mean(mses))) if mses else float("nan"),
        **temporal,
    }


def to_json_safe(value: Any) -> Any:
    """A copy with +-inf as the strings "inf"/"-inf", NaN as None and NumPy scalars as Python."""
    if isinstance(value, dict):
        return {k: to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return None
        return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: str, result: dict[str, Any]) -> None:
    """Writes the result atomically (temp file + rename): a half-written report never looks done."""
    tmp = f"{path}.partial"
    with open(tmp, "w") as f:
        json.dump(to_json_safe(result), f, indent=1, allow_nan=False)
    os.replace(tmp, path)


def plot_curves(records: Sequence[dict[str, Any]]) -> np.ndarray:
    """The per-frame curves as a BGR uint8 image, one panel per metric with its own y range."""
    n = max(len(records), 2)
    canvas = np.full((_PANEL_H * len(CURVES), _PANEL_W, 3), 255, np.uint8)
    for p, (key, label, colour) in enumerate(CURVES):
        top = p * _PANEL_H
        values = np.array([np.nan if r[key] is None else r[key] for r in records], dtype=np.float64)
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        half = (hi - lo) / 2.0 if hi - lo > 1e-9 * max(1.0, abs(hi)) else 1.0  # a flat curve: mid-panel
        x = _PAD + np.arange(len(values)) * (_PANEL_W - 2 * _PAD) / (n - 1)
        y = top + _PANEL_H / 2.0 - (values - (lo + hi) / 2.0) / half * (_PANEL_H / 2.0 - _PAD)
        cv2.rectangle(canvas, (_PAD, top + _PAD), (_PANEL_W - _PAD, top + _PANEL_H - _PAD), (200, 200, 200), 1)
        ok = np.isfinite(y)
        for i in range(len(values) - 1):  # NaN (no face) breaks the line
            if ok[i] and ok[i + 1]:
                cv2.line(canvas, (round(x[i]), round(y[i])), (round(x[i + 1]), round(y[i + 1])), colour, 2, cv2.LINE_AA)
        cv2.putText(canvas, f"{label}   [{lo:.3g}, {hi:.3g}]   frames 0-{len(values) - 1}",
                    (_PAD, top + _PAD - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def write_report(folder: str, result: dict[str, Any]) -> tuple[str, str]:
    """metrics.json and curves.png in `folder` (created); returns their paths."""
    os.makedirs(folder, exist_ok=True)
    json_path, png_path = os.path.join(folder, "metrics.json"), os.path.join(folder, "curves.png")
    if not cv2.imwrite(png_path, plot_curves(result["frames"])):
        raise OSError(f"{png_path}: cannot write the plot")
    write_json(json_path, result)
    return json_path, png_path
