"""DeepFaceLab's `faceset.pak`: a whole aligned folder in one file (DFL_SPEC §1.13).

Layout, all integers little-endian u64 (DFL writes native order; every DFL platform is x86):
version (=1), N = byte length of the pickled list of sample configs, the pickle (protocol 4),
an offset table of count+1 values, then the JPEG files back to back. QUIRK: offsets are relative
to the start of the JPEG data except the last one, which DFL writes as an absolute file position.
We read the last sample up to the end of the file (or up to its relative end when that lies
earlier); JPEG parsing stops at EOI anyway. Our writer reproduces the quirk so DFL reads our paks.

Each sample's metadata comes from its config; keys the config lacks (source rect, source
landmarks, matrix) come from the APP15 of the embedded JPEG.
"""
from __future__ import annotations

import dataclasses
import os
import struct
from typing import Any, Sequence

from preprocessing.errors import UserError
from preprocessing.faceset.dfl_meta import DflMeta
from preprocessing.faceset.dfljpg import DflFace, JpegHeader, decode_rgb, read_header
from preprocessing.faceset.safe_pickle import dumps_for_numpy1, safe_loads

PAK_VERSION = 1
_U64 = struct.Struct("<Q")


class DflPak:
    """An open faceset.pak: sample configs read up front, JPEG bytes read on demand."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._file = open(path, "rb")
        except OSError as e:
            raise UserError(f"{path}: cannot read ({e.strerror})") from None
        try:
            self.configs, self._spans = self._read_header(os.fstat(self._file.fileno()).st_size)
        except BaseException:
            self._file.close()
            raise

    def _read_header(self, size: int) -> tuple[list[dict], list[tuple[int, int]]]:
        f, path = self._file, self.path
        head = f.read(16)
        if len(head) < 16:
            raise UserError(f"{path}: not a DeepFaceLab faceset.pak (file too short)")
        version, n = _U64.unpack_from(head, 0)[0], _U64.unpack_from(head, 8)[0]
        if version != PAK_VERSION:
            raise UserError(f"{path}: unsupported faceset.pak version {version} (expected 1)")
        if n > size - 16:
            raise UserError(f"{path}: corrupt faceset.pak (config block overruns the file)")
        configs = safe_loads(f.read(n), path)
        if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
            raise UserError(f"{path}: corrupt faceset.pak (sample configs are not a list of dicts)")
        count = len(configs)
        table = f.read(8 * (count + 1))
        if len(table) != 8 * (count + 1):
            raise UserError(f"{path}: corrupt faceset.pak (offset table overruns the file)")
        offsets = struct.unpack(f"<{count + 1}Q", table)
        data_start = 16 + n + len(table)
        # The last offset is absolute (QUIRK), so read relative to data_start it points past EOF;
        # the last sample then simply ends at EOF.
        ends = [data_start + o for o in offsets[1:-1]] + [min(size, data_start + offsets[-1])]
        spans = [(data_start + o, end) for o, end in zip(offsets[:-1], ends)]
        for i, (start, end) in enumerate(spans):
            if not start <= end <= size:
                raise UserError(f"{path}: corrupt faceset.pak (sample {i} lies outside the file)")
        return configs, spans

    def __len__(self) -> int:
        return len(self.configs)

    def name(self, i: int) -> str:
        """The sample's original file name (DFL keeps it in the config)."""
        filename = self.configs[i].get("filename")
        return os.path.basename(filename) if isinstance(filename, str) else f"{i:05d}.jpg"

    def source(self, i: int) -> str:
        """How errors name a sample: the pak path and the sample's file name."""
        return f"{self.path} [{self.name(i)}]"

    def jpeg(self, i: int) -> bytes:
        start, end = self._spans[i]
        self._file.seek(start)
        return self._file.read(end - start)

    def header(self, i: int, jpeg: bytes) -> JpegHeader:
        """The embedded JPEG's header with the sample's config merged over its APP15 dict (the
        config wins); `dfl` is never None, since the config alone is metadata."""
        header = read_header(jpeg, self.source(i))
        merged = merge_config(self.configs[i], header.dfl or {})
        return dataclasses.replace(header, dfl=merged)

    def face(self, i: int) -> DflFace:
        jpeg = self.jpeg(i)
        meta = DflMeta.from_dict(self.header(i, jpeg).dfl, self.source(i))
        return DflFace(self.name(i), decode_rgb(jpeg, self.source(i)), meta)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "DflPak":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def merge_config(config: dict, embedded: dict) -> dict:
    """A pak sample config laid over DFLJPG metadata. The config spells the encoded XSeg mask
    `xseg_mask_compressed` (its `xseg_mask` may be a decoded array); both map to `xseg_mask`."""
    merged = dict(embedded)
    for key, value in config.items():
        if value is None:
            continue
        if key == "xseg_mask_compressed":
            merged["xseg_mask"] = value
        elif key == "xseg_mask" and config.get("xseg_mask_compressed") is not None:
            continue
        else:
            merged[key] = value
    return merged


def read_pak(path: str) -> list[DflFace]:
    """Every face of a faceset.pak, decoded (for small paks; `DflPak` streams large ones)."""
    with DflPak(path) as pak:
        return [pak.face(i) for i in range(len(pak))]


def write_pak(path: str, samples: Sequence[tuple[dict, bytes]]) -> None:
    """Writes (config, jpeg bytes) samples as DFL does, absolute last offset included."""
    configs = dumps_for_numpy1([config for config, _ in samples])
    header = _U64.pack(PAK_VERSION) + _U64.pack(len(configs)) + configs
    data_start = len(header) + 8 * (len(samples) + 1)
    offsets, position = [], 0
    for _, jpeg in samples:
        offsets.append(position)
        position += len(jpeg)
    offsets.append(data_start + position)  # QUIRK: absolute, as DFL writes it
    with open(path, "wb") as f:
        f.write(header)
        f.write(struct.pack(f"<{len(offsets)}Q", *offsets))
        for _, jpeg in samples:
            f.write(jpeg)
