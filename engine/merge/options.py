"""Merge options (DFL_SPEC §4.2): names, ranges, validation, and per-frame keyframes.

Options split in two kinds, because the merge program is compiled:
* static options (`STATIC`: modes and switches) choose the compiled program; a keyframe that
  changes one costs one more compilation;
* numeric options (`NUMERIC`, with DFL's ranges) are traced inputs, one value per face, so a
  keyframe file may change them on every frame without recompiling. `output_face_scale` changes
  the face matrices on the host and never reaches the device as a number.

A keyframe file replaces DFL's interactive per-frame tweaking: a JSON list of
`{"start": FRAME, "end": FRAME, "options": {NAME: VALUE, ...}}` (end inclusive; later entries
override earlier ones on the frames they share), applied over the command line's options.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, NamedTuple

from engine import color_transfer
from preprocessing.errors import UserError

MODES = ("original", "overlay", "hist-match", "seamless", "seamless-hist-match", "raw-rgb", "raw-predict")
MASK_MODES = ("full", "dst", "learned-prd", "learned-dst", "learned-prd*learned-dst", "learned-prd+learned-dst",
              "xseg-prd", "xseg-dst", "xseg-prd*xseg-dst", "learned-prd*learned-dst*xseg-prd*xseg-dst")


def uses_xseg(mask_mode: str) -> bool:
    """Whether the mask mode needs a trained XSeg model (`--xseg`)."""
    return "xseg" in mask_mode
COLOR_TRANSFERS = ("none",) + tuple(color_transfer.MODES)
SHARPEN_MODES = ("none", "box", "gaussian")
INTERPOLATIONS = ("cubic", "linear")

# name: (low, high) inclusive, DFL's ranges. super_resolution_power is an extension point: no
# face enhancer ships with the engine, so only 0 is accepted.
NUMERIC: dict[str, tuple[float, float]] = {
    "erode": (-400, 400),
    "blur": (0, 400),
    "motion_blur_power": (0, 100),
    "output_face_scale": (-50, 50),
    "hist_match_threshold": (0, 255),
    "blursharpen_amount": (-100, 100),
    "image_denoise_power": (0, 500),
    "bicubic_degrade_power": (0, 100),
    "color_degrade_power": (0, 100),
    "super_resolution_power": (0, 0),
}
STATIC: dict[str, tuple] = {
    "mode": MODES,
    "mask_mode": MASK_MODES,
    "color_transfer": COLOR_TRANSFERS,
    "sharpen_mode": SHARPEN_MODES,
    "masked_hist_match": (False, True),
    "interpolation": INTERPOLATIONS,
}
NAMES = tuple(STATIC) + tuple(NUMERIC)
# Fields of configs/merge.py that say how the program runs, not what it does to a face.
RUN_SETTINGS = ("batch_size", "chunk_frames", "compute_dtype", "smooth_landmarks", "step", "crf", "seed", "watermark")


def from_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The face options of a merge config (configs/merge.py), without its run settings."""
    return {k: v for k, v in cfg.items() if k not in RUN_SETTINGS}


class StaticOptions(NamedTuple):
    """The options that pick a compiled program (hashable: a jit static argument)."""

    mode: str
    mask_mode: str
    color_transfer: str
    sharpen_mode: str
    masked_hist_match: bool
    interpolation: str


def validate(options: Mapping[str, Any], where: str = "merge options") -> dict[str, Any]:
    """Checks names, choices and ranges; returns a plain dict (numbers as float, bools as bool)."""
    out: dict[str, Any] = {}
    for name, value in options.items():
        if name in STATIC:
            choices = STATIC[name]
            if isinstance(value, str):
                value = value.strip().lower()
            if value not in choices:
                raise UserError(f"{where}: {name}={value!r} is not one of {', '.join(map(str, choices))}")
            out[name] = bool(value) if name == "masked_hist_match" else value
        elif name in NUMERIC:
            low, high = NUMERIC[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"{where}: {name} must be a number, got {value!r}")
            if not low <= value <= high:
                extra = " (no super-resolution model ships with the engine)" if name == "super_resolution_power" else ""
                raise UserError(f"{where}: {name}={value} is outside [{low:g}, {high:g}]{extra}")
            out[name] = float(value)
        else:
            raise UserError(f"{where}: unknown option {name!r}; known: {', '.join(NAMES)}")
    return out


def split(options: Mapping[str, Any]) -> tuple[StaticOptions, dict[str, float]]:
    """A full option set -> (static part, numeric part)."""
    static = StaticOptions(**{name: options[name] for name in StaticOptions._fields})
    return static, {name: options[name] for name in NUMERIC}


class Keyframes:
    """Per-frame overrides from a keyframe file (see the module docstring)."""

    def __init__(self, base: Mapping[str, Any], entries: list[tuple[int, int, dict[str, Any]]]):
        self._base = validate(base)
        missing = set(NAMES) - set(self._base)
        if missing:
            raise ValueError(f"base merge options lack {sorted(missing)}")
        self._entries = entries
        self._cache: dict[tuple[int, ...], dict[str, Any]] = {}

    @classmethod
    def load(cls, base: Mapping[str, Any], path: str | None) -> "Keyframes":
        if not path:
            return cls(base, [])
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except OSError as e:
            raise UserError(f"{path}: cannot read keyframe file ({e.strerror})") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(raw, list):
            raise UserError(f"{path}: a keyframe file is a JSON list of {{start, end, options}} objects")
        entries = []
        for n, item in enumerate(raw):
            where = f"{path}: entry {n}"
            if not isinstance(item, dict) or set(item) - {"start", "end", "options"} or "options" not in item:
                raise UserError(f"{where}: expected {{\"start\": F, \"end\": F, \"options\": {{...}}}}")
            start, end = item.get("start", 0), item.get("end", 2**31 - 1)
            if not (isinstance(start, int) and isinstance(end, int)) or start < 0 or end < start:
                raise UserError(f"{where}: start/end must be frame numbers with 0 <= start <= end")
            if not isinstance(item["options"], dict):
                raise UserError(f"{where}: options must be an object")
            entries.append((start, end, validate(item["options"], where)))
        return cls(base, entries)

    def values(self, name: str) -> set:
        """Every value option `name` takes on some frame (the base value and each override)."""
        return {self._base[name]} | {opts[name] for _, _, opts in self._entries if name in opts}

    def options_for(self, frame: int) -> dict[str, Any]:
        """The merged option set of one frame (shared dicts: do not modify)."""
        active = tuple(n for n, (start, end, _) in enumerate(self._entries) if start <= frame <= end)
        if active not in self._cache:
            options = dict(self._base)
            for n in active:
                options.update(self._entries[n][2])
            self._cache[active] = options
        return self._cache[active]
