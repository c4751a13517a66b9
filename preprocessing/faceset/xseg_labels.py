"""XSeg labels: polygons from LabelMe / COCO files or DFL, rasterised into the faceset, and PNG export.

Users label with standard tools instead of DFL's editor, on the PNGs `export` writes (named by
face index: 00012.png labels face 12). Each polygon is INCLUDE or EXCLUDE: a LabelMe label or
COCO category named in `exclude_labels` (default: exclude, ex, hole, -; case-insensitive) is
EXCLUDE, every other name INCLUDE. LabelMe polygons, rectangles and circles are read; COCO
polygon segmentations are read, RLE is refused. Points are scaled onto the face when the labelled
image's size differs from the faceset's (pixel-centre convention, like cv2.resize).

polygons.json (the DFL importer's schema) is the source of truth: an import updates it, then
re-rasterises every face into `xseg_labels` (uint8 [S, S, 1], 0/255) and `xseg_labelled` (1 =
has polygons). Merging (default) appends a file's polygons to those a face already has (dropping
exact duplicates, so importing a file twice changes nothing); `replace` gives each face named in
the file exactly the file's polygons. Faces the file does not name keep theirs either way. The
polygons stay in polygons.json so sort/filter/resize carry them along.

Write order keeps every crash point safe: `xseg_labelled` is unlisted first and added last, so
its presence means the labels match polygons.json; a bad label file fails before any write.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Iterable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from preprocessing.errors import UserError
from preprocessing.faceset import manifest as mf
from preprocessing.faceset import schema
from preprocessing.faceset.edit import add_array, remove_array
from preprocessing.faceset.export import _prepare_folder, _write_image
from preprocessing.faceset.face_stats import BATCH
from preprocessing.faceset.reader import Faceset
from preprocessing.faceset.subset import read_polygons

EXCLUDE, INCLUDE = 0, 1  # DFL's SegIEPolyType values, as stored in polygons.json
DEFAULT_EXCLUDE_LABELS = ("exclude", "ex", "hole", "-")
LABEL_FORMATS = ("auto", "labelme", "coco")
EXPORT_KINDS = ("labels", "masks", "overlay")
LABELLED = "xseg_labelled"
LABELS = "xseg_labels"

_CIRCLE_MIN_POINTS = 64  # a 64-gon holds 99.8% of its circle's area
_OVERLAY_TINT = np.array([0, 255, 0], np.float32)
_OVERLAY_ALPHA = 0.45

# Face index -> its polygons {"type": EXCLUDE|INCLUDE, "pts": [[x, y], ...]} in face pixels.
Labels = dict[int, list[dict]]


# ------------------------------------------------------------------------------------------ rasterising
def rasterise(polygons: Iterable[dict], size: int) -> np.ndarray:
    """DFL's rasterisation (DFL_SPEC §2.2) -> uint8 [size, size, 1] in {0, 255}.

    INCLUDE polygons are filled first, then EXCLUDE ones with 0, whatever the order given, so
    excludes always win. Points are rounded to the nearest pixel; cv2.fillPoly also fills the
    boundary pixels. Polygons under 3 points (DFL's editor can leave them) fill nothing.
    """
    mask = np.zeros((size, size), np.uint8)
    for poly in sorted(polygons, key=lambda p: p["type"] != INCLUDE):  # stable: includes first
        pts = np.asarray(poly["pts"], np.float64).reshape(-1, 2)
        if len(pts) >= 3:
            cv2.fillPoly(mask, [np.rint(pts).astype(np.int32)], 255 if poly["type"] == INCLUDE else 0)
    return mask[..., None]


def is_labelled(polygons: Iterable[dict]) -> bool:
    """Whether any polygon is drawable (>= 3 points): the faces XSeg training may use."""
    return any(len(p["pts"]) >= 3 for p in polygons)


def merged_polygons(old: dict[str, list], new: Labels, *, replace: bool = False) -> dict[str, list]:
    """polygons.json after importing `new` (see the module doc for merge and replace)."""
    out = dict(old)
    for index, polys in new.items():
        key = str(index)
        combined = list(polys) if replace else [*out.get(key, []), *polys]
        unique = list({_polygon_key(p): p for p in combined}.values())
        if unique:
            out[key] = unique
        else:
            out.pop(key, None)
    return dict(sorted(out.items(), key=lambda item: int(item[0])))


def _polygon_key(poly: dict) -> tuple:
    return int(poly["type"]), tuple(tuple(float(v) for v in pt) for pt in poly["pts"])


# ------------------------------------------------------------------------------------------ label files
def read_labels(path: str, *, size: int, count: int, exclude_labels: Sequence[str] = DEFAULT_EXCLUDE_LABELS,
                label_format: str = "auto") -> Labels:
    """The polygons in a LabelMe or COCO JSON file, or in every .json file of a folder.

    Faces are `size` px and numbered [0, count). Every file is checked in full before anything
    is returned; a problem raises a one-line UserError naming the file and the entry.
    """
    if label_format not in LABEL_FORMATS:
        raise UserError(f"{path}: unknown label format {label_format!r}; use one of {', '.join(LABEL_FORMATS)}")
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith(".json"))
        if not files:
            raise UserError(f"{path}: no .json label files in this folder")
    elif os.path.isfile(path):
        files = [path]
    else:
        raise UserError(f"{path}: no such label file or folder")
    excluded = {name.strip().lower() for name in exclude_labels}
    labels: Labels = {}
    for file in files:
        doc = _load_json(file)
        kind = _detect_format(doc, file) if label_format == "auto" else label_format
        reader = _labelme_labels if kind == "labelme" else _coco_labels
        for index, polys in reader(doc, file, size=size, count=count, excluded=excluded).items():
            labels.setdefault(index, []).extend(polys)
    return labels


def face_index(image_name: str, count: int, where: str) -> int:
    """The face a labelled image shows, from its name as `export` wrote it (00012.png -> 12)."""
    stem = os.path.splitext(re.split(r"[\\/]", image_name)[-1])[0]
    if not re.fullmatch(r"[0-9]+", stem):
        raise UserError(f"{where}: image {image_name!r} is not named like an exported face (00012.png), "
                        "so it maps to no face")
    index = int(stem)
    if index >= count:
        raise UserError(f"{where}: image {image_name!r} maps to face {index}, but the faceset has {count} faces")
    return index


def _load_json(file: str) -> dict:
    try:
        with open(file, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise UserError(f"{file}: cannot read ({e.strerror})") from None
    except ValueError as e:
        raise UserError(f"{file}: not a JSON file ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{file}: expected a JSON object (a LabelMe or COCO file), got {type(doc).__name__}")
    return doc


def _detect_format(doc: dict, file: str) -> str:
    if "shapes" in doc:
        return "labelme"
    if "images" in doc or "annotations" in doc:
        return "coco"
    raise UserError(f"{file}: neither a LabelMe file (no 'shapes') nor a COCO file (no 'images'/'annotations')")


_TYPE_NAMES = {list: "a list", str: "a string", dict: "an object", int: "an integer"}


def _get(obj: object, key: str, kind: type | tuple[type, ...], where: str):
    """obj[key], checked to be `kind` (bool never passes for a number)."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise UserError(f"{where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        raise UserError(f"{where}: {key!r} must be {' or '.join(_TYPE_NAMES[k] for k in kinds)}")
    return value


def _image_size(obj: dict, width_key: str, height_key: str, where: str) -> tuple[int, int]:
    width, height = _get(obj, width_key, int, where), _get(obj, height_key, int, where)
    if width < 1 or height < 1:
        raise UserError(f"{where}: image size {width}x{height} is not positive")
    return width, height


def _numbers(values: list, where: str) -> np.ndarray:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise UserError(f"{where}: coordinates must be numbers")
    out = np.asarray(values, np.float64)
    if not np.all(np.isfinite(out)):
        raise UserError(f"{where}: coordinates must be finite")
    return out


def _pairs(points: list, key: str, where: str) -> np.ndarray:
    """[[x, y], ...] -> float64 [N, 2]."""
    if not all(isinstance(p, list) and len(p) == 2 for p in points):
        raise UserError(f"{where}: {key!r} must be a list of [x, y] pairs")
    return _numbers([v for p in points for v in p], where).reshape(-1, 2)


def _polygon(outline: np.ndarray, name: str, excluded: set[str], image_size: tuple[int, int], size: int) -> dict:
    """A polygon in face pixels: labelled-image pixel centres mapped onto the face's (as cv2.resize)."""
    scale = np.array([size / image_size[0], size / image_size[1]])
    pts = (outline + 0.5) * scale - 0.5
    return {"type": EXCLUDE if name.strip().lower() in excluded else INCLUDE, "pts": pts.tolist()}


def _too_few(n: int, where: str) -> UserError:
    return UserError(f"{where}: polygon with {n} point{'s' * (n != 1)} (needs at least 3)")


# LabelMe: {"imagePath", "imageWidth", "imageHeight", "shapes": [{"label", "points", "shape_type"}]}
def _labelme_labels(doc: dict, where: str, *, size: int, count: int, excluded: set[str]) -> Labels:
    index = face_index(_get(doc, "imagePath", str, where), count, where)
    image_size = _image_size(doc, "imageWidth", "imageHeight", where)
    polys = []
    for k, shape in enumerate(_get(doc, "shapes", list, where)):
        at = f"{where}: shapes[{k}]"
        label = _get(shape, "label", str, at)
        pts = _pairs(_get(shape, "points", list, at), "points", at)
        outline = _labelme_outline(shape.get("shape_type") or "polygon", pts, at)
        polys.append(_polygon(outline, label, excluded, image_size, size))
    return {index: polys}


def _labelme_outline(shape_type: object, pts: np.ndarray, where: str) -> np.ndarray:
    """The polygon of a LabelMe shape: its points, a rectangle's corners or a circle's n-gon."""
    if shape_type == "polygon":
        if len(pts) < 3:
            raise _too_few(len(pts), where)
        return pts
    if shape_type in ("rectangle", "circle") and len(pts) != 2:
        raise UserError(f"{where}: a {shape_type} needs 2 points, got {len(pts)}")
    if shape_type == "rectangle":
        (x0, y0), (x1, y1) = pts
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    if shape_type == "circle":  # LabelMe: centre, then a point on the circle
        radius = float(np.hypot(*(pts[1] - pts[0])))
        if radius == 0:
            raise UserError(f"{where}: circle of radius 0")
        n = max(_CIRCLE_MIN_POINTS, math.ceil(2 * math.pi * radius))
        angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return pts[0] + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    raise UserError(f"{where}: shape_type {shape_type!r} is not supported (polygon, rectangle or circle)")


# COCO: {"images": [{id, file_name, width, height}], "categories": [{id, name}],
#        "annotations": [{image_id, category_id, segmentation: [[x1, y1, x2, y2, ...], ...]}]}
def _coco_labels(doc: dict, where: str, *, size: int, count: int, excluded: set[str]) -> Labels:
    ids = (int, str)
    categories = {}
    for k, category in enumerate(_get(doc, "categories", list, where)):
        at = f"{where}: categories[{k}]"
        categories[_get(category, "id", ids, at)] = _get(category, "name", str, at)
    images, labels = {}, {}
    for k, image in enumerate(_get(doc, "images", list, where)):
        at = f"{where}: images[{k}]"
        index = face_index(_get(image, "file_name", str, at), count, at)
        images[_get(image, "id", ids, at)] = index, _image_size(image, "width", "height", at)
        labels.setdefault(index, [])
    for k, annotation in enumerate(_get(doc, "annotations", list, where)):
        at = f"{where}: annotations[{k}]"
        image_id, category_id = _get(annotation, "image_id", ids, at), _get(annotation, "category_id", ids, at)
        if image_id not in images:
            raise UserError(f"{at}: image_id {image_id!r} is not in 'images'")
        if category_id not in categories:
            raise UserError(f"{at}: category_id {category_id!r} is not in 'categories'")
        segmentation = _get(annotation, "segmentation", (list, dict), at)
        if isinstance(segmentation, dict):
            raise UserError(f"{at}: RLE segmentation is not supported; export polygons "
                            "([[x1, y1, x2, y2, ...]]) instead")
        index, image_size = images[image_id]
        for j, flat in enumerate(segmentation):
            labels[index].append(_polygon(_coco_outline(flat, f"{at}: segmentation[{j}]"),
                                          categories[category_id], excluded, image_size, size))
    return labels


def _coco_outline(flat: object, where: str) -> np.ndarray:
    if not isinstance(flat, list):
        raise UserError(f"{where}: a polygon must be a list [x1, y1, x2, y2, ...]")
    if len(flat) % 2:
        raise UserError(f"{where}: odd number of coordinates ({len(flat)})")
    if len(flat) < 6:
        raise _too_few(len(flat) // 2, where)
    return _numbers(flat, where).reshape(-1, 2)


# ------------------------------------------------------------------------------------------ faceset
@dataclasses.dataclass
class XsegImportSummary:
    faceset: str
    faces_in_file: int  # faces the label file(s) named (0 for --from_dfl)
    labelled: int  # faces with labels after the import
    polygons: int  # polygons in polygons.json after the import
    seconds: float

    def line(self) -> str:
        return (f"xseg-import: {self.faces_in_file} faces in the label files; {self.labelled} faces labelled "
                f"({self.polygons} polygons) in {self.seconds:.1f}s -> {self.faceset}")


def import_xseg_labels(fs: Faceset, labels: Labels | None, *, replace: bool = False) -> XsegImportSummary:
    """Merges `labels` (None: only what polygons.json holds, e.g. DFL's) into polygons.json and
    rewrites `xseg_labels` and `xseg_labelled` from it; other arrays are untouched."""
    start = time.time()
    old = _checked_polygons(read_polygons(fs), os.path.join(fs.path, schema.POLYGONS_FILE), fs.count)
    if labels is None and not old:
        raise UserError(f"{fs.path}: has no XSeg polygons to rasterise (import-dfl keeps DeepFaceLab's "
                        f"in {schema.POLYGONS_FILE}); pass a label file instead")
    labels = labels or {}
    polygons = merged_polygons(old, labels, replace=replace)
    size = fs.size
    labelled = np.array([is_labelled(polygons.get(str(i), ())) for i in range(fs.count)], np.uint8)

    def rows(first: int, stop: int) -> np.ndarray:
        return np.stack([rasterise(polygons.get(str(i), ()), size) for i in range(first, stop)])

    if LABELLED in fs.array_names:
        remove_array(fs.path, LABELLED)
    if polygons != old:
        _write_polygons_atomic(fs.path, polygons)
    add_array(fs.path, LABELS, rows, overwrite=True)
    add_array(fs.path, LABELLED, labelled, overwrite=True)
    return XsegImportSummary(fs.path, len(labels), int(labelled.sum()),
                             sum(len(p) for p in polygons.values()), time.time() - start)


def _checked_polygons(polygons: dict, where: str, count: int) -> dict[str, list]:
    """polygons.json, checked so rasterising cannot fail half-way (a bad entry is a UserError)."""
    for key, polys in polygons.items():
        if not re.fullmatch(r"[0-9]+", key) or int(key) >= count:
            raise UserError(f"{where}: key {key!r} is not a face index in [0, {count})")
        if not isinstance(polys, list):
            raise UserError(f"{where}: face {key}: expected a list of polygons")
        for k, poly in enumerate(polys):
            at = f"{where}: face {key} polygon {k}"
            if _get(poly, "type", int, at) not in (EXCLUDE, INCLUDE):
                raise UserError(f"{at}: type must be {EXCLUDE} (exclude) or {INCLUDE} (include)")
            _pairs(_get(poly, "pts", list, at), "pts", at)
    return polygons


def remove_xseg_labels(faceset_path: str) -> str:
    """Drops `xseg_labelled`, `xseg_labels` and polygons.json (in that order); returns a summary line."""
    names = [n for n in (LABELLED, LABELS) if n in mf.load_manifest(faceset_path)["arrays"]]
    has_polygons = os.path.isfile(os.path.join(faceset_path, schema.POLYGONS_FILE))
    if not names and not has_polygons:
        raise UserError(f"{faceset_path}: has no XSeg labels to remove")
    for name in names:
        remove_array(faceset_path, name)
    _write_polygons_atomic(faceset_path, {})
    removed = ", ".join(names + [schema.POLYGONS_FILE] * has_polygons)
    return f"xseg-remove-labels: removed {removed} from {faceset_path}"


def _write_polygons_atomic(folder: str, polygons: dict[str, list]) -> None:
    """Replaces polygons.json in place (compact JSON, temp file + rename); no polygons: no file."""
    path = os.path.join(folder, schema.POLYGONS_FILE)
    try:
        with mf.folder_lock(folder):
            if polygons:
                with open(path + ".tmp", "w", encoding="utf-8") as f:
                    json.dump(polygons, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(path + ".tmp", path)
            elif os.path.exists(path):
                os.remove(path)
            mf.fsync_folder(folder)
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e})") from None


# ------------------------------------------------------------------------------------------ export
@dataclasses.dataclass
class XsegExportSummary:
    output_dir: str
    what: str
    source: str  # the array shown
    files: int
    seconds: float

    def line(self) -> str:
        return (f"xseg-export: wrote {self.files} {self.what} PNGs of {self.source} in {self.seconds:.1f}s "
                f"-> {self.output_dir}")


def overlay(face: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The face (RGB uint8 [S, S, 3]) with the mask (uint8 [S, S, 1]) tinted green over it."""
    alpha = mask.astype(np.float32) / 255.0 * _OVERLAY_ALPHA
    return np.clip(face * (1 - alpha) + _OVERLAY_TINT * alpha + 0.5, 0, 255).astype(np.uint8)


def export_xseg(fs: Faceset, output_dir: str, *, what: str = "labels", progress: bool = True) -> XsegExportSummary:
    """PNGs named by face index, like `export`'s: `labels` (labelled faces), `masks` (the applied
    `xseg_masks`) or `overlay` (each face with `xseg_masks` tinted, or its labels when the faceset
    has no applied masks)."""
    start = time.time()
    if what not in EXPORT_KINDS:
        raise UserError(f"{output_dir}: unknown --what={what!r}; use one of {', '.join(EXPORT_KINDS)}")
    source = "xseg_masks" if what == "masks" or (what == "overlay" and "xseg_masks" in fs.array_names) else LABELS
    if source == LABELS and LABELLED not in fs.array_names:
        raise UserError(f"{fs.path}: has no XSeg labels; run `xseg-import` first")
    if source not in fs.array_names:
        raise UserError(f"{fs.path}: has no xseg_masks array; run `engine.xseg_apply` first")
    if source == LABELS:
        indices = np.flatnonzero(fs.to_numpy(LABELLED))
    else:  # a DFL import fills in the hull for faces without an XSeg mask; those are not XSeg's
        missing = fs.manifest.get("extras", {}).get("xseg_masks_missing", [])
        indices = np.setdiff1d(np.arange(fs.count), np.asarray(missing, np.int64))
    _prepare_folder(output_dir)
    names = [source, "faces"] if what == "overlay" else [source]
    with tqdm(total=len(indices), desc="xseg-export", unit="face", disable=not progress) as bar:
        for first in range(0, len(indices), BATCH):
            chunk = indices[first:first + BATCH]
            batch = fs.read_many(names, chunk)
            for k, index in enumerate(chunk):
                image = overlay(batch["faces"][k], batch[source][k]) if what == "overlay" else batch[source][k]
                _write_image(os.path.join(output_dir, f"{index:05d}.png"), image, [])
            bar.update(len(chunk))
    return XsegExportSummary(output_dir, what, source, len(indices), time.time() - start)
