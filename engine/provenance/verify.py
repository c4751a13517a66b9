"""What marks a file carries that say it is a face-swap: container tags, sidecar JSON, watermark.

`examine(path)` reads a video, an image or a folder of images and gathers the markers that
`python -m engine.merge` writes (see engine/merge/outputs.py, watermark.py, c2pa_manifest.py);
`Findings.lines()` is the report `python -m engine.provenance verify` prints.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from engine.provenance import watermark
from preprocessing.errors import UserError
from preprocessing.images import open_source

try:
    from engine.provenance import c2pa_manifest
except ImportError:  # the optional [c2pa] extra is not installed
    c2pa_manifest = None

TOOL = "faceswap-jax"
SYNTHETIC_WORD = "synthetic"  # engine.merge.outputs.SYNTHETIC_MARK starts with it
_TAGS = ("comment", "description")


@dataclasses.dataclass
class Findings:
    path: str
    kind: str  # 'video' | 'images' | 'image'
    tags: dict[str, str]  # container comment/description (videos only)
    sidecar_path: str
    sidecar: dict[str, Any] | None  # the parsed sidecar, None when absent or unreadable
    sidecar_error: str | None
    reading: watermark.Reading
    skipped_frames: int  # unreadable images, or frames too small to carry the watermark
    c2pa: dict[str, Any] | None  # c2pa_manifest.read_manifest's summary, None when absent or unread
    c2pa_note: str | None  # why no manifest was read, when that is not simply its absence

    @property
    def tag_marked(self) -> bool:
        return SYNTHETIC_WORD in self.tags.get("comment", "").lower()

    @property
    def sidecar_marked(self) -> bool:
        return bool(self.sidecar and self.sidecar.get("synthetic"))

    @property
    def markers(self) -> list[str]:
        found = [("container tag", self.tag_marked), ("sidecar", self.sidecar_marked),
                 ("watermark", self.reading.payload is not None),
                 ("C2PA manifest", bool(self.c2pa and self.c2pa["ai_generated"]))]
        return [name for name, present in found if present]

    def lines(self) -> list[str]:
        out = [f"{self.path}: {self.kind}"]
        if self.kind == "video":
            out += [f"container {k}: {self.tags[k]}" for k in _TAGS if k in self.tags] or ["container tags: none"]
        if self.sidecar is not None:
            model, tool = self.sidecar.get("model") or {}, self.sidecar.get("tool") or {}
            out.append(f"sidecar {self.sidecar_path}: synthetic={self.sidecar.get('synthetic')}, "
                       f"model {model.get('workdir')} step {model.get('step')}, "
                       f"tool {tool.get('name')} {tool.get('version')}, created {self.sidecar.get('created_utc', '?')}")
        else:
            out.append(f"sidecar {self.sidecar_path}: {self.sidecar_error or 'absent'}")
        out.append(self._watermark_line())
        out.append(self._c2pa_line())
        out.append(f"verdict: marked synthetic by {', '.join(self.markers)}" if self.markers
                   else "verdict: no provenance marker found")
        return out

    def _watermark_line(self) -> str:
        r = self.reading
        skipped = f", {self.skipped_frames} frames skipped" if self.skipped_frames else ""
        if r.frames == 0:
            return f"watermark: no frame could be read{skipped}"
        votes = f"bit accuracy ~{r.bit_accuracy:.3f} over {r.frames} frames{skipped}"
        if r.payload is None:
            return f"watermark: none found ({votes}; 0.5-0.65 is chance)"
        notes = []
        if r.payload[:2] == watermark.payload_for(TOOL, "")[:2]:
            notes.append(f"tool {TOOL}")
        if self.sidecar is not None:
            try:
                same = r.payload == watermark.payload_for_record(self.sidecar)
                notes.append("model matches the sidecar" if same else "model differs from the sidecar")
            except (KeyError, TypeError):
                notes.append("sidecar names no model")
        detail = f" ({', '.join(notes)})" if notes else ""
        return f"watermark: payload {r.payload.hex()}{detail}, {votes}"


    def _c2pa_line(self) -> str:
        m = self.c2pa
        if m is None:
            return f"C2PA manifest: {self.c2pa_note or 'absent'}"
        declared = "declares AI-generated content" if m["ai_generated"] else "makes no AI-generated declaration"
        problems = f" ({', '.join(m['validation_problems'])})" if m["validation_problems"] else ""
        return (f"C2PA manifest: {declared} ({', '.join(m['digital_source_types']) or 'no source type'}), "
                f"signed by {m['signer'].get('common_name')} ({m['signer'].get('issuer')}), "
                f"signature {m['validation_state']}{problems}, record {'present' if m['record'] else 'absent'}")


def _read_c2pa(path: str, kind: str) -> tuple[dict[str, Any] | None, str | None]:
    if kind == "images":
        return None, "not applicable to a folder"
    if c2pa_manifest is None:
        return None, "not checked (pip install faceswap-jax[c2pa])"
    try:
        return c2pa_manifest.read_manifest(path), None
    except UserError as e:
        return None, f"unreadable ({e})"


def _read_sidecar(path: str) -> tuple[dict[str, Any] | None, str | None]:
    if not os.path.isfile(path):
        return None, None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"unreadable ({e})"
    if not isinstance(record, dict):
        return None, "unreadable (not a JSON object)"
    return record, None


def examine(path: str, max_frames: int = 0, strength: float = watermark.STRENGTH) -> Findings:
    """All provenance markers of a video, image or image folder; reads at most `max_frames`
    frames for the watermark vote (0: all). UserError if the input cannot be read."""
    source = open_source(path)
    sidecar_path = os.path.normpath(path) + ".provenance.json"
    sidecar, sidecar_error = _read_sidecar(sidecar_path)
    tags = {k: v for k, v in (source.info.tags if source.info else {}).items() if k in _TAGS}
    tally, skipped = watermark.Tally(strength), 0
    for index, _pts, image in source.iter_frames():
        if max_frames and index >= max_frames:
            break
        if image is None or not watermark.fits(*image.shape[:2]):
            skipped += 1
            continue
        tally.add(image)
    return Findings(path, source.kind, tags, sidecar_path, sidecar, sidecar_error, tally.reading(), skipped,
                    *_read_c2pa(path, source.kind))
