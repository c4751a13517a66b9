"""DFLJPG: DeepFaceLab's aligned-face JPEG with a pickled metadata dict in APP15 (DFL_SPEC §1.8).

The file is an ordinary JPEG, so any viewer shows the face; DFL adds one APP15 (0xFFEF) segment
right after the last APPn segment. We split the file into its marker segments, read that payload
with the restricted unpickler, and write it back the same way (pickle protocol 4, numpy arrays
under numpy 1.x names, None values dropped) so faces we export open in DFL and DeepFaceLive.
"""
from __future__ import annotations

import dataclasses
import os
import struct

import cv2
import numpy as np

from preprocessing.errors import UserError, read_bytes
from preprocessing.faceset.dfl_meta import DflMeta
from preprocessing.faceset.safe_pickle import dumps_for_numpy1, safe_loads

SOI, EOI, SOS, APP0, APP15 = 0xD8, 0xD9, 0xDA, 0xE0, 0xEF
# Frame headers (SOF0..SOF15) carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM and RST0..RST7 (SOI and EOI are handled on their own).
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_MAX_SEGMENT_PAYLOAD = 65533  # a segment's u16 length counts itself (2 bytes)


@dataclasses.dataclass(frozen=True)
class Segment:
    """One marker segment. `scan` holds the entropy-coded data after an SOS header (RST markers
    inside a scan stay in it); it is empty for every other marker."""

    marker: int  # the byte after 0xFF, e.g. 0xEF for APP15
    payload: bytes = b""
    scan: bytes = b""

    def to_bytes(self) -> bytes:
        if self.marker in (SOI, EOI) or self.marker in _STANDALONE:
            return bytes((0xFF, self.marker))
        return bytes((0xFF, self.marker)) + struct.pack(">H", len(self.payload) + 2) + \
            self.payload + self.scan


@dataclasses.dataclass
class DflFace:
    """A decoded DFL aligned face: its file (or pak sample) name, RGB pixels and metadata."""

    name: str
    image: np.ndarray  # uint8 [H, W, 3] RGB
    meta: DflMeta


def parse_segments(data: bytes, source: str, headers_only: bool = False) -> list[Segment]:
    """Splits a JPEG into marker segments, SOI through EOI; bytes after EOI are ignored.

    `headers_only` stops at the first SOS header, which is all a metadata scan needs.
    """
    n = len(data)
    if data[:2] != b"\xff\xd8":
        raise UserError(f"{source}: not a JPEG file (no SOI marker)")
    segments = [Segment(SOI)]
    pos = 2
    while True:
        if pos >= n or data[pos] != 0xFF:
            raise UserError(f"{source}: corrupt JPEG (no marker at byte {pos}; truncated file?)")
        while pos < n and data[pos] == 0xFF:  # fill bytes may precede any marker
            pos += 1
        if pos >= n:
            raise UserError(f"{source}: corrupt JPEG (truncated before EOI)")
        marker = data[pos]
        pos += 1
        if marker == EOI:
            segments.append(Segment(EOI))
            return segments
        if marker in _STANDALONE:
            segments.append(Segment(marker))
            continue
        if marker in (0x00, SOI) or pos + 2 > n:
            raise UserError(f"{source}: corrupt JPEG (bad marker 0xFF{marker:02X} at byte {pos - 2})")
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2 or pos + length > n:
            raise UserError(f"{source}: corrupt JPEG (segment 0xFF{marker:02X} overruns the file)")
        payload = data[pos + 2:pos + length]
        pos += length
        if marker == SOS and headers_only:
            segments.append(Segment(marker, payload))
            return segments
        scan_end = _scan_end(data, pos, source) if marker == SOS else pos
        segments.append(Segment(marker, payload, data[pos:scan_end]))
        pos = scan_end


def _scan_end(data: bytes, pos: int, source: str) -> int:
    """End of entropy-coded data: the first 0xFF not followed by a stuffed 0x00 or an RST marker."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            raise UserError(f"{source}: corrupt JPEG (scan data runs to the end of the file)")
        follower = data[pos + 1]
        if follower != 0x00 and not 0xD0 <= follower <= 0xD7:
            return pos
        pos += 2


@dataclasses.dataclass(frozen=True)
class JpegHeader:
    """What a DFLJPG says before its pixels: the image size and the raw DFL metadata dict."""

    height: int
    width: int
    dfl: dict | None  # None when the JPEG has no APP15 metadata


def read_header(data: bytes, source: str) -> JpegHeader:
    """Size (from the frame header) and unpickled APP15 dict, without decoding pixels."""
    segments = parse_segments(data, source, headers_only=True)
    sof = next((s for s in segments if s.marker in _SOF_MARKERS and len(s.payload) >= 5), None)
    if sof is None:
        raise UserError(f"{source}: corrupt JPEG (no frame header)")
    height, width = struct.unpack_from(">HH", sof.payload, 1)
    app15 = next((s for s in segments if s.marker == APP15), None)
    if app15 is None:
        return JpegHeader(height, width, None)
    meta = safe_loads(app15.payload, source)
    if not isinstance(meta, dict):
        raise UserError(f"{source}: APP15 metadata is a {type(meta).__name__}, not a dict")
    return JpegHeader(height, width, meta)


def decode_rgb(data: bytes, source: str) -> np.ndarray:
    """JPEG bytes -> RGB uint8 [H, W, 3]; EXIF orientation is ignored (landmarks refer to the
    stored pixel grid)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8),
                         cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise UserError(f"{source}: corrupt JPEG (cannot decode the image)")
    return image


def read_dfljpg(path: str) -> DflFace:
    """Reads a DFL aligned JPEG: pixels and metadata. No metadata or a corrupt file -> UserError."""
    return parse_dfljpg(read_bytes(path), path, os.path.basename(path))


def parse_dfljpg(data: bytes, source: str, name: str) -> DflFace:
    """DflFace from the bytes of a DFLJPG; `source` names it in errors, `name` in the record."""
    header = read_header(data, source)
    if header.dfl is None:
        raise UserError(f"{source}: no DeepFaceLab metadata (not an aligned DFL face)")
    return DflFace(name, decode_rgb(data, source), DflMeta.from_dict(header.dfl, source))


def with_dfl_metadata(jpeg: bytes, meta: dict, source: str) -> bytes:
    """Returns the JPEG with its APP15 replaced by `meta` (None values dropped), inserted right
    after the last APPn segment as DFL does (after SOI when there is none)."""
    payload = dumps_for_numpy1({k: v for k, v in meta.items() if v is not None})
    if len(payload) > _MAX_SEGMENT_PAYLOAD:
        raise UserError(f"{source}: DFL metadata is {len(payload)} bytes, "
                        f"more than a JPEG segment holds ({_MAX_SEGMENT_PAYLOAD})")
    segments = [s for s in parse_segments(jpeg, source) if s.marker != APP15]
    last_app = max(i for i, s in enumerate(segments) if s.marker == SOI or APP0 <= s.marker <= APP15)
    segments.insert(last_app + 1, Segment(APP15, payload))
    return b"".join(s.to_bytes() for s in segments)


def encode_dfljpg(rgb: np.ndarray, meta: dict, quality: int = 90, source: str = "image") -> bytes:
    """RGB uint8 [H, W, 3] + DFL metadata dict -> DFLJPG bytes; `source` names it in errors."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected RGB uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("OpenCV could not encode the image as JPEG")
    return with_dfl_metadata(buf.tobytes(), meta, source)


def write_dfljpg(path: str, rgb: np.ndarray, meta: dict, quality: int = 90) -> None:
    """Writes a DFL aligned JPEG that DeepFaceLab (and any JPEG viewer) can open."""
    data = encode_dfljpg(rgb, meta, quality, source=path)
    with open(path, "wb") as f:
        f.write(data)
