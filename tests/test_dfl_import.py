"""DeepFaceLab interchange: DFLJPG metadata, faceset.pak, the restricted unpickler and import_dfl.

References: OpenCV's JPEG decoder (pixels), float64 NumPy (PSNR, coordinate scaling), skimage.draw
(an independently rasterised XSeg mask), raw byte offsets of the files we write, and zarr-python
reading the imported faceset.
"""
from __future__ import annotations

import builtins
import collections
import contextlib
import enum
import json
import logging
import os
import pickle
import struct
import sys
import types

import cv2
import numpy as np
import pytest
import zarr
from skimage.draw import disk

from preprocessing.errors import UserError
from preprocessing.face_types import FaceType
from preprocessing.faceset.dfljpg import (
    APP15, encode_dfljpg, parse_segments, read_dfljpg, with_dfl_metadata, write_dfljpg,
)
from preprocessing.faceset.dflpak import read_pak, write_pak
from preprocessing.faceset.import_dfl import import_dfl
from preprocessing.faceset.safe_pickle import UnsafePickleError, dumps_for_numpy1, safe_loads
from preprocessing.pose import LANDMARKS_68_3D
from preprocessing.samples import astronaut_rgb

MASK_SIZE = 256  # DFL stores applied XSeg masks at 256x256


# ----------------------------------------------------------------------------- test data


def _face(k: int, size: int) -> np.ndarray:
    """A real face crop from the astronaut portrait, shifted a little per k."""
    img = astronaut_rgb()
    crop = img[20 + 3 * k:260 + 3 * k, 120 + 3 * k:360 + 3 * k]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def _xseg_png(k: int) -> np.ndarray:
    """A 256x256 binary disk mask encoded as PNG, the way DFL stores `xseg_mask`."""
    mask = np.zeros((MASK_SIZE, MASK_SIZE), np.uint8)
    mask[disk((128 + k, 120), 90, shape=mask.shape)] = 255
    ok, buf = cv2.imencode(".png", mask)
    assert ok
    return buf


def _meta(k: int, size: int, *, xseg: bool = True) -> dict:
    """A DFL metadata dict with consistent landmarks, matrix and source landmarks."""
    landmarks = LANDMARKS_68_3D[:, :2] * (0.3 * size) + size / 2 + 0.37 * k
    angle, scale = 0.1 + 0.05 * k, size / 300.0
    mat = np.array([[scale * np.cos(angle), -scale * np.sin(angle), 7.25 + k],
                    [scale * np.sin(angle), scale * np.cos(angle), -3.5]])
    inv = cv2.invertAffineTransform(mat)
    source_landmarks = landmarks @ inv[:, :2].T + inv[:, 2]
    include = np.array([[10, 12], [size - 9, 11.5], [size - 20, size - 14], [15, size - 10]],
                       np.float32) + k
    exclude = np.array([[40.5, 40.25], [60, 45], [50, 70]], np.float32)
    return {
        "face_type": "whole_face",
        "landmarks": landmarks.tolist(),
        "source_filename": f"{k:05d}.png",
        "source_rect": np.array([11.0 + k, 22.0, 333.5, 344.0]),
        "source_landmarks": source_landmarks.tolist(),
        "image_to_face_mat": mat,
        "eyebrows_expand_mod": 1.0 + 0.25 * k,
        "seg_ie_polys": {"polys": [{"type": 1, "pts": include}, {"type": 0, "pts": exclude}]},
        "xseg_mask": _xseg_png(k) if xseg else None,
    }


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse))


def _decode(path_or_bytes) -> np.ndarray:
    if isinstance(path_or_bytes, (bytes, bytearray)):
        bgr = cv2.imdecode(np.frombuffer(path_or_bytes, np.uint8), cv2.IMREAD_COLOR)
    else:
        bgr = cv2.imread(path_or_bytes, cv2.IMREAD_COLOR)
    return bgr[:, :, ::-1]


class _CallsFunction:
    """Pickles as a call of `func(*args)`: what a malicious metadata payload looks like."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# ----------------------------------------------------------------------------- DFLJPG


def test_dfljpg_round_trip_keeps_every_field(tmp_path):
    rgb, meta = _face(0, 256), _meta(0, 256)
    path = str(tmp_path / "00000_0.jpg")
    write_dfljpg(path, rgb, meta, quality=95)

    face = read_dfljpg(path)
    m = face.meta
    assert face.name == "00000_0.jpg"
    assert m.face_type == FaceType.WHOLE_FACE
    np.testing.assert_array_equal(m.landmarks, np.array(meta["landmarks"]))
    np.testing.assert_array_equal(m.source_landmarks, np.array(meta["source_landmarks"]))
    np.testing.assert_array_equal(m.source_rect, meta["source_rect"])
    np.testing.assert_array_equal(m.image_to_face_mat, meta["image_to_face_mat"])
    assert m.source_filename == "00000.png"
    assert m.eyebrows_expand_mod == 1.0
    assert [p.type for p in m.seg_ie_polys] == [1, 0]
    for poly, ref in zip(m.seg_ie_polys, meta["seg_ie_polys"]["polys"]):
        np.testing.assert_array_equal(poly.pts, ref["pts"])
    mask = m.xseg_mask()
    assert mask.shape == (MASK_SIZE, MASK_SIZE, 1) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask[:, :, 0], cv2.imdecode(meta["xseg_mask"], cv2.IMREAD_GRAYSCALE))
    assert m.extra == {}
    assert face.image.shape == (256, 256, 3)
    assert _psnr(face.image, rgb) > 35.0


def test_standard_decoder_reads_dfljpg_and_app15_follows_last_appn():
    rgb = _face(1, 192)
    ok, plain = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    meta = {**_meta(1, 192), "unused_key": None}
    dfl = encode_dfljpg(rgb, meta, quality=90)
    np.testing.assert_array_equal(_decode(dfl), _decode(plain.tobytes()))

    # Byte layout: SOI, APP0 (JFIF, from OpenCV), then APP15 holding a protocol-4 pickle.
    assert dfl[:4] == b"\xff\xd8\xff\xe0"
    app15 = 4 + struct.unpack(">H", dfl[4:6])[0]
    assert dfl[app15:app15 + 2] == b"\xff\xef"
    length = struct.unpack(">H", dfl[app15 + 2:app15 + 4])[0]
    payload = dfl[app15 + 4:app15 + 2 + length]
    assert payload[:2] == b"\x80\x04"
    # Arrays are named the numpy 1.x way, which DFL's numpy 1.19 can import.
    assert b"numpy.core.multiarray" in payload and b"numpy._core" not in payload
    stored = pickle.loads(payload)  # our own bytes, so the plain unpickler is fine here
    assert "unused_key" not in stored
    np.testing.assert_array_equal(stored["xseg_mask"], meta["xseg_mask"])
    np.testing.assert_array_equal(stored["image_to_face_mat"], meta["image_to_face_mat"])
    assert dfl[app15 + 2 + length:] == plain.tobytes()[4 + struct.unpack(">H", dfl[4:6])[0]:]


def test_segments_of_progressive_restart_jpeg_round_trip():
    rgb = astronaut_rgb()
    ok, buf = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1,
                                         cv2.IMWRITE_JPEG_RST_INTERVAL, 4])
    data = buf.tobytes()
    segments = parse_segments(data, "p.jpg")
    assert b"".join(s.to_bytes() for s in segments) == data
    assert sum(s.marker == 0xDA for s in segments) > 1  # several scans
    assert sum(s.marker == 0xDD for s in segments) == 1  # DRI
    retagged = with_dfl_metadata(data, {"face_type": "head"}, "p.jpg")
    np.testing.assert_array_equal(_decode(retagged), _decode(data))
    assert [s.marker for s in parse_segments(retagged, "p.jpg")][:3] == [0xD8, 0xE0, APP15]


def test_old_list_form_of_seg_ie_polys(tmp_path):
    include = np.array([[1.5, 2.0], [30, 4], [20, 25]], np.float32)
    exclude = np.array([[5, 5], [9, 5], [7, 8.25]], np.float32)
    meta = {**_meta(2, 128, xseg=False), "seg_ie_polys": [(1, include), (0, exclude)]}
    path = str(tmp_path / "old.jpg")
    write_dfljpg(path, _face(2, 128), meta)
    polys = read_dfljpg(path).meta.seg_ie_polys
    assert [p.type for p in polys] == [1, 0]
    np.testing.assert_array_equal(polys[0].pts, include)
    np.testing.assert_array_equal(polys[1].pts, exclude)
    assert read_dfljpg(path).meta.xseg_mask() is None


def test_plain_or_corrupt_jpeg_is_a_user_error(tmp_path):
    plain = str(tmp_path / "plain.jpg")
    cv2.imwrite(plain, _face(0, 64))
    with pytest.raises(UserError, match=r"plain\.jpg: no DeepFaceLab metadata"):
        read_dfljpg(plain)
    data = encode_dfljpg(_face(0, 64), _meta(0, 64))
    truncated = str(tmp_path / "cut.jpg")
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut\.jpg: corrupt JPEG"):
        read_dfljpg(truncated)
    with pytest.raises(UserError, match=r"cut\.jpg: not a JPEG"):
        parse_segments(b"\x89PNG....", "cut.jpg")


# ----------------------------------------------------------------------------- unpickler


@pytest.mark.parametrize("func, arg", [(os.system, "touch {marker}"),
                                       (builtins.eval, "open({marker!r}, 'w').close()")])
def test_pickle_that_calls_a_function_is_refused_without_side_effect(tmp_path, func, arg):
    marker = str(tmp_path / "pwned")
    payload = _CallsFunction(func, arg.format(marker=marker))
    # The payload is live: the plain unpickler runs it.
    pickle.loads(pickle.dumps(payload))
    assert os.path.exists(marker)
    os.remove(marker)

    path = str(tmp_path / "evil.jpg")
    write_dfljpg(path, _face(0, 64), {**_meta(0, 64), "source_filename": payload})
    with pytest.raises(UnsafePickleError, match=rf"evil\.jpg: refused to unpickle '\w+\.{func.__name__}'"):
        read_dfljpg(path)
    assert not os.path.exists(marker)
    assert issubclass(UnsafePickleError, UserError)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_pickles_load(protocol):
    data = {
        "f32": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
        "big_endian": np.array([1, -2, 300], ">i4"),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "scalar": np.float64(2.5),
        "encoded": np.frombuffer(b"\x89PNG\r\n\x1a\n", np.uint8),
        "plain": [1, 2.5, "s", b"b", None, True, (1, 2), {3}, frozenset({4}), 1 + 2j],
    }
    loaded = safe_loads(pickle.dumps(data, protocol=protocol))
    for key in ("f32", "big_endian", "fortran", "encoded"):
        assert loaded[key].dtype.kind == data[key].dtype.kind
        np.testing.assert_array_equal(loaded[key], data[key])
    assert loaded["scalar"] == 2.5 and isinstance(loaded["scalar"], np.float64)
    assert loaded["plain"] == data["plain"]


@pytest.mark.parametrize("protocol", [3, 4])
def test_numpy1_module_paths_load(protocol):
    """DFL's files were written by numpy 1.19, which names `numpy.core.multiarray`."""
    blob = pickle.dumps({"a": np.array([[1.5, 2.5]], np.float32), "s": np.int64(7)}, protocol)
    new, old = b"numpy._core.multiarray", b"numpy.core.multiarray"
    if protocol == 3:  # GLOBAL opcode: newline-terminated text
        assert blob.count(new + b"\n") == 2
        blob = blob.replace(new + b"\n", old + b"\n")
    else:  # one memoised SHORT_BINUNICODE string inside a FRAME whose length shrinks by one
        assert blob.count(bytes([len(new)]) + new) == 1 and blob[2] == 0x95
        blob = blob.replace(bytes([len(new)]) + new, bytes([len(old)]) + old)
        blob = blob[:3] + struct.pack("<Q", struct.unpack("<Q", blob[3:11])[0] - 1) + blob[11:]
    assert new not in blob
    loaded = safe_loads(blob)
    np.testing.assert_array_equal(loaded["a"], [[1.5, 2.5]])
    assert loaded["s"] == 7 and loaded["a"].dtype == np.float32


def test_numpy1_compatible_pickler_across_frames():
    """A large bytes value is written outside protocol-4 frames; arrays after it land in a later
    frame whose length must shrink with the rewritten module name."""
    data = {"blob": bytes(range(256)) * 400, "a": np.arange(7, dtype=np.int16),
            "b": [np.float32(0.5), np.eye(3)], "c": np.frombuffer(b"\x89PNG", np.uint8)}
    blob = dumps_for_numpy1(data)
    assert b"numpy._core" not in blob and b"numpy.core.multiarray" in blob
    for loaded in (pickle.loads(blob), safe_loads(blob)):  # plain loads: our own bytes
        assert loaded["blob"] == data["blob"] and loaded["b"][0] == 0.5
        np.testing.assert_array_equal(loaded["a"], data["a"])
        np.testing.assert_array_equal(loaded["b"][1], np.eye(3))
        np.testing.assert_array_equal(loaded["c"], data["c"])


@pytest.mark.parametrize("obj, name", [
    (collections.OrderedDict(a=1), "collections.OrderedDict"),
    (collections.Counter("ab"), "collections.Counter"),
    (np.ma.masked_array([1, 2]), "numpy.ma.core._mareconstruct"),
    (UserError("x"), "preprocessing.errors.UserError"),
])
def test_non_plain_classes_are_refused(obj, name):
    with pytest.raises(UnsafePickleError, match=rf"^meta\.dat: refused to unpickle '{name}'"):
        safe_loads(pickle.dumps(obj, protocol=4), source="meta.dat")


def test_numpy_constructors_cannot_be_called_directly():
    """Only numpy's own pickling pattern is accepted: no direct call that allocates memory."""
    with pytest.raises(UnsafePickleError, match=r"big\.dat: refused .*'numpy\.ndarray'"):
        safe_loads(pickle.dumps(_CallsFunction(np.ndarray, (10 ** 12,))), source="big.dat")
    from numpy._core.multiarray import _reconstruct
    with pytest.raises(UnsafePickleError, match=r"big\.dat: refused .*_reconstruct"):
        safe_loads(pickle.dumps(_CallsFunction(_reconstruct, np.ndarray, (10 ** 12,), b"b")),
                   source="big.dat")


def test_corrupt_pickle_is_a_user_error():
    with pytest.raises(UserError, match="x.jpg: corrupt metadata pickle"):
        safe_loads(pickle.dumps({"a": [1, 2, 3]})[:-4], source="x.jpg")


# ----------------------------------------------------------------------------- faceset.pak


@contextlib.contextmanager
def _dfl_enum_modules():
    """Stand-ins for DFL's `facelib.FaceType.FaceType` and `samplelib.Sample.SampleType`, so the
    sample configs below pickle exactly as DFL pickles its enum members."""
    face_type = enum.IntEnum("FaceType", {"FULL": 2, "WHOLE_FACE": 4, "HEAD": 10})
    sample_type = enum.IntEnum("SampleType", {"IMAGE": 0, "FACE": 1})
    made = {}
    for module_name, cls in (("facelib.FaceType", face_type), ("samplelib.Sample", sample_type)):
        parent, _, child = module_name.partition(".")
        made[parent] = types.ModuleType(parent)
        made[module_name] = types.ModuleType(module_name)
        setattr(made[module_name], cls.__name__, cls)
        cls.__module__ = module_name
    sys.modules.update(made)
    try:
        yield face_type, sample_type
    finally:
        for name in made:
            sys.modules.pop(name, None)


def _write_dfl_pak(path: str, faces: list[tuple[bytes, dict]],
                   config_landmarks_offset: float = 0.0) -> None:
    """Writes (jpeg, meta) faces as DFL's packer does: each config repeats the per-face metadata
    (without source rect/landmarks/matrix), holds DFL enum members and spells the encoded mask
    `xseg_mask_compressed`."""
    with _dfl_enum_modules() as (dfl_face_type, dfl_sample_type):
        samples = []
        for k, (jpeg, meta) in enumerate(faces):
            config = {
                "sample_type": dfl_sample_type.FACE,
                "filename": f"{k:05d}_0.jpg",
                "face_type": dfl_face_type[FaceType.from_dfl_name(meta["face_type"]).name],
                "shape": _decode(jpeg).shape,
                "landmarks": (np.array(meta["landmarks"]) + config_landmarks_offset).tolist(),
                "seg_ie_polys": meta["seg_ie_polys"],
                "xseg_mask": None,
                "xseg_mask_compressed": meta["xseg_mask"],
                "eyebrows_expand_mod": meta["eyebrows_expand_mod"],
                "source_filename": meta["source_filename"],
                "person_name": None,
            }
            samples.append((config, jpeg))
        blob = pickle.dumps([c for c, _ in samples], protocol=4)
        assert b"facelib.FaceType" in blob and b"samplelib.Sample" in blob
        write_pak(path, samples)


def test_pak_round_trip_with_absolute_last_offset(tmp_path):
    faces = [(encode_dfljpg(_face(k, 128), _meta(k, 128, xseg=k != 1), quality=92),
              _meta(k, 128, xseg=k != 1)) for k in range(3)]
    path = str(tmp_path / "faceset.pak")
    # The configs' landmarks differ from the embedded ones by +0.5: the config must win.
    _write_dfl_pak(path, faces, config_landmarks_offset=0.5)

    with open(path, "rb") as f:
        raw = f.read()
    version, n = struct.unpack("<QQ", raw[:16])
    assert version == 1
    assert b"numpy._core" not in raw[16:16 + n]  # configs loadable by DFL's numpy 1.x
    offsets = struct.unpack("<4Q", raw[16 + n:16 + n + 32])
    data_start = 16 + n + 32
    lengths = [len(jpeg) for jpeg, _ in faces]
    assert list(offsets[:3]) == [0, lengths[0], lengths[0] + lengths[1]]
    assert offsets[3] == len(raw) == data_start + sum(lengths)  # the QUIRK: absolute

    loaded = read_pak(path)
    assert [f.name for f in loaded] == ["00000_0.jpg", "00001_0.jpg", "00002_0.jpg"]
    for face, (jpeg, meta) in zip(loaded, faces):
        np.testing.assert_array_equal(face.image, _decode(jpeg))
        m = face.meta
        assert m.face_type == FaceType.WHOLE_FACE
        np.testing.assert_array_equal(m.landmarks, np.array(meta["landmarks"]) + 0.5)
        np.testing.assert_array_equal(m.source_rect, meta["source_rect"])  # from the JPEG
        np.testing.assert_array_equal(m.image_to_face_mat, meta["image_to_face_mat"])
        assert m.source_filename == meta["source_filename"]
        assert m.eyebrows_expand_mod == meta["eyebrows_expand_mod"]
        assert len(m.seg_ie_polys) == 2
        assert m.has_xseg_mask == (meta["xseg_mask"] is not None)
        assert m.extra["sample_type"] == 1 and m.extra["shape"] == (128, 128, 3)


def test_pak_with_relative_last_offset_and_truncated_pak(tmp_path):
    faces = [(encode_dfljpg(_face(k, 64), _meta(k, 64)), _meta(k, 64)) for k in range(2)]
    path = str(tmp_path / "faceset.pak")
    _write_dfl_pak(path, faces)
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    n = struct.unpack("<Q", raw[8:16])[0]
    last = 16 + n + 16
    # A writer without the quirk stores the last offset relative to the data start.
    raw[last:last + 8] = struct.pack("<Q", sum(len(j) for j, _ in faces))
    fixed = str(tmp_path / "relative.pak")
    with open(fixed, "wb") as f:
        f.write(raw)
    assert [f.image.shape for f in read_pak(fixed)] == [(64, 64, 3)] * 2
    cut = str(tmp_path / "cut.pak")
    with open(cut, "wb") as f:
        f.write(raw[:16 + n + 8])
    with pytest.raises(UserError, match=r"cut\.pak: corrupt faceset\.pak"):
        read_pak(cut)


# ----------------------------------------------------------------------------- import_dfl


def _read_faceset(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    with open(os.path.join(path, "manifest.json")) as f:
        manifest = json.load(f)
    count = manifest["count"]
    names = [n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n, "zarr.json"))]
    arrays = {n: zarr.open_array(os.path.join(path, n), mode="r")[:count] for n in names}
    return manifest, arrays


@pytest.fixture(scope="module")
def dfl_folder(tmp_path_factory):
    """Five 128-px DFLJPGs (face 3 without an XSeg mask) plus one plain JPEG."""
    folder = tmp_path_factory.mktemp("aligned")
    metas = []
    for k in range(5):
        meta = _meta(k, 128, xseg=k != 3)
        write_dfljpg(str(folder / f"{k:05d}_0.jpg"), _face(k, 128), meta, quality=95)
        metas.append(meta)
    cv2.imwrite(str(folder / "zz_not_dfl.jpg"), _face(9, 128))
    return str(folder), metas


def _check_import(out: str, metas: list[dict], files: list[str], size: int, dfl_size: int = 128):
    scale = size / dfl_size
    manifest, a = _read_faceset(out)
    assert manifest["count"] == len(metas) == 5
    assert a["faces"].shape == (5, size, size, 3)
    for k, (meta, file) in enumerate(zip(metas, files)):
        np.testing.assert_allclose(a["landmarks"][k], np.array(meta["landmarks"]) * scale,
                                   rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(a["matrices"][k], meta["image_to_face_mat"] * scale,
                                   rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(a["source_rects"][k], meta["source_rect"], rtol=1e-6)
        np.testing.assert_allclose(a["source_landmarks"][k], meta["source_landmarks"], rtol=1e-6)
        # The scaled matrix still maps source landmarks onto the face landmarks.
        mapped = cv2.transform(a["source_landmarks"][k][None].astype(np.float64),
                               a["matrices"][k].astype(np.float64))[0]
        np.testing.assert_allclose(mapped, a["landmarks"][k], atol=2e-3)
        decoded = _decode(file)
        if size == dfl_size:
            np.testing.assert_array_equal(a["faces"][k], decoded)
        else:
            reference = cv2.resize(decoded, (size, size), interpolation=cv2.INTER_AREA)
            assert _psnr(a["faces"][k], reference) > 30.0
    np.testing.assert_array_equal(a["score"], np.ones(5, np.float32))
    assert np.all(np.isfinite(a["pose"])) and np.all(np.isfinite(a["blur"]))
    assert set(np.unique(a["masks"])) == {0, 255}

    with open(os.path.join(out, "polygons.json")) as f:
        polygons = json.load(f)
    assert sorted(polygons, key=int) == ["0", "1", "2", "3", "4"]
    for k, meta in enumerate(metas):
        ref = meta["seg_ie_polys"]["polys"]
        assert [p["type"] for p in polygons[str(k)]] == [1, 0]
        for poly, r in zip(polygons[str(k)], ref):
            np.testing.assert_allclose(poly["pts"], r["pts"].astype(np.float64) * scale, rtol=1e-12)

    # Applied masks: the stored disk matches a disk rasterised at the faceset size (edge pixels
    # may differ by interpolation); face 3 has none and gets its hull mask.
    assert manifest["extras"]["xseg_masks_missing"] == [3]
    for k in (0, 1, 2, 4):
        ref = np.zeros((size, size), bool)
        ref[disk(((128 + k) * size / 256, 120 * size / 256), 90 * size / 256, shape=ref.shape)] = True
        agree = np.mean((a["xseg_masks"][k, :, :, 0] >= 128) == ref)
        assert agree > 0.985, (k, agree)
    np.testing.assert_array_equal(a["xseg_masks"][3], a["masks"][3])
    return manifest, a


def test_import_folder(dfl_folder, tmp_path, caplog):
    folder, metas = dfl_folder
    out = str(tmp_path / "fs")
    with caplog.at_level(logging.WARNING):
        summary = import_dfl(folder, out, progress=False)
    assert summary.count == 5 and summary.size == 128 and summary.skipped == ["zz_not_dfl.jpg"]
    assert summary.face_type == FaceType.WHOLE_FACE
    assert summary.with_polygons == 5 and summary.with_xseg_mask == 4 and summary.resized == 0
    assert any("zz_not_dfl.jpg: no DeepFaceLab metadata" in r.getMessage() for r in caplog.records)
    files = [os.path.join(folder, f"{k:05d}_0.jpg") for k in range(5)]
    manifest, a = _check_import(out, metas, files, size=128)
    assert manifest["face_type"] == "whole_face" and manifest["size"] == 128
    assert manifest["sources"][0]["files"] == [f"{k:05d}_0.jpg" for k in range(5)]


def test_import_pak_resized(dfl_folder, tmp_path):
    folder, metas = dfl_folder
    files = [os.path.join(folder, f"{k:05d}_0.jpg") for k in range(5)]
    faces = []
    for file, meta in zip(files, metas):
        with open(file, "rb") as f:
            faces.append((f.read(), meta))
    pak = str(tmp_path / "faceset.pak")
    _write_dfl_pak(pak, faces)
    out = str(tmp_path / "fs64")
    summary = import_dfl(pak, out, size=64, progress=False)
    assert summary.count == 5 and summary.resized == 5 and summary.size == 64
    _check_import(out, metas, files, size=64)


def test_import_mixed_sizes_uses_most_common_and_refuses_mixed_types(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for k, size in enumerate((96, 96, 64)):
        write_dfljpg(str(folder / f"{k}.jpg"), _face(k, size), _meta(k, size, xseg=False))
    summary = import_dfl(str(folder), str(tmp_path / "fs"), progress=False)
    assert summary.size == 96 and summary.resized == 1
    _, a = _read_faceset(str(tmp_path / "fs"))
    np.testing.assert_allclose(a["landmarks"][2], np.array(_meta(2, 64)["landmarks"]) * 1.5,
                               rtol=1e-6)
    assert "xseg_masks" not in a

    write_dfljpg(str(folder / "3.jpg"), _face(3, 96), {**_meta(3, 96), "face_type": "head"})
    with pytest.raises(UserError, match=r"mixed: faces of several face types \(3 whole_face, 1 head\)"):
        import_dfl(str(folder), str(tmp_path / "fs2"), progress=False)
    assert not os.path.exists(tmp_path / "fs2")


def test_import_without_source_data_stores_nan(tmp_path):
    """Old or mark_only DFL faces lack the source rect, source landmarks and matrix."""
    folder = tmp_path / "old"
    folder.mkdir()
    meta = _meta(0, 64, xseg=False)
    for key in ("source_rect", "source_landmarks", "image_to_face_mat", "seg_ie_polys"):
        del meta[key]
    write_dfljpg(str(folder / "a.jpg"), _face(0, 64), meta)
    summary = import_dfl(str(folder), str(tmp_path / "fs"), progress=False)
    assert summary.count == 1 and summary.with_polygons == 0
    _, a = _read_faceset(str(tmp_path / "fs"))
    for name in ("source_rects", "source_landmarks", "matrices"):
        assert np.all(np.isnan(a[name][0])), name
    np.testing.assert_allclose(a["landmarks"][0], meta["landmarks"], rtol=1e-6)
    assert not os.path.exists(tmp_path / "fs" / "polygons.json")
