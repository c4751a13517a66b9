"""XSeg labels: LabelMe / COCO / DFL polygons -> xseg_labels + xseg_labelled, export, removal.

References: the shoelace formula in float64 (analytic polygon areas), skimage.draw.polygon (an
independent rasteriser, for where the mask lies), cv2.imread (exported PNGs) and SHA-256 digests
of the faceset's files (what an import may and may not touch).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import skimage.data
from skimage.draw import polygon as sk_polygon

from preprocessing.errors import UserError
from preprocessing.face_types import FaceType
from preprocessing.faceset import Faceset, FacesetWriter, add_array
from preprocessing.faceset.subset import write_polygons
from preprocessing.faceset.xseg_labels import (
    EXCLUDE, INCLUDE, export_xseg, import_xseg_labels, rasterise, read_labels, remove_xseg_labels,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 256  # cv2.fillPoly fills boundary pixels too (+ half the perimeter): 1% needs radii ~100 px
COUNT = 4
# The rasterised area may differ from the analytic one by 1% (issue #5): for the shapes below the
# boundary pixels fillPoly adds come to 0.4-0.9%.
AREA_RTOL = 0.01
LABEL_ARRAYS = {"xseg_labels", "xseg_labelled"}


# ------------------------------------------------------------------------------------------ helpers
def regular_polygon(cx: float, cy: float, r: float, n: int = 360) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def shoelace(pts: np.ndarray) -> float:
    x, y = np.asarray(pts, np.float64).T
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def reference_mask(include: list[np.ndarray], exclude: list[np.ndarray], size: int = SIZE) -> np.ndarray:
    """skimage's rasteriser (pixel centres inside), includes then excludes: bool [size, size]."""
    mask = np.zeros((size, size), bool)
    for pts, value in [(p, True) for p in include] + [(p, False) for p in exclude]:
        rr, cc = sk_polygon(pts[:, 1], pts[:, 0], shape=mask.shape)
        mask[rr, cc] = value
    return mask


def assert_mask_matches(mask: np.ndarray, include: list[np.ndarray], exclude: list[np.ndarray]) -> None:
    """Area within 1% of the analytic one, and the mask where skimage puts it (the pixels the two
    rasterisers disagree on are the boundary ring: < 2% of the area)."""
    assert mask.shape == (SIZE, SIZE, 1) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    analytic = sum(map(shoelace, include)) - sum(map(shoelace, exclude))
    area = int((mask > 0).sum())
    assert abs(area - analytic) <= AREA_RTOL * analytic, (area, analytic)
    disagree = int(((mask[..., 0] > 0) != reference_mask(include, exclude)).sum())
    assert disagree < 0.02 * analytic, disagree


def tree_digest(path: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def untouched_part(digest: dict[str, str]) -> dict[str, str]:
    """Every file an XSeg label import must leave byte-identical."""
    return {k: v for k, v in digest.items()
            if k.split(os.sep)[0] not in LABEL_ARRAYS and k not in ("manifest.json", "polygons.json")}


def write_json(path, doc) -> str:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f)
    return str(path)


def labelme(image: str, shapes: list[dict], width: int = SIZE, height: int = SIZE) -> dict:
    return {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image, "imageData": None,
            "imageWidth": width, "imageHeight": height}


def shape(label: str, pts, shape_type: str = "polygon") -> dict:
    return {"label": label, "points": np.asarray(pts).tolist(), "group_id": None, "shape_type": shape_type,
            "flags": {}}


def import_file(path: str, labels_path: str, **kw) -> None:
    fs = Faceset.open(path)
    labels = read_labels(labels_path, size=fs.size, count=fs.count,
                         **{k: v for k, v in kw.items() if k != "replace"})
    import_xseg_labels(fs, labels, replace=kw.get("replace", False))


def labels_of(path: str) -> tuple[np.ndarray, np.ndarray]:
    fs = Faceset.open(path)
    return fs.to_numpy("xseg_labels"), fs.to_numpy("xseg_labelled")


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def template(tmp_path_factory) -> str:
    """A 4-face faceset of real photographs (faces + hull-like masks), written by FacesetWriter."""
    path = str(tmp_path_factory.mktemp("xseg") / "template")
    images = [skimage.data.astronaut()[0:300, 100:400], skimage.data.chelsea()[0:300, 50:350],
              skimage.data.coffee()[50:350, 150:450], skimage.data.astronaut()[100:400, 150:450]]
    with FacesetWriter(path, size=SIZE, face_type=FaceType.WHOLE_FACE, producer={"program": "test"},
                       arrays=["faces", "masks"]) as w:
        sid = w.add_source({"kind": "test", "sha256": "0" * 64})
        for i, image in enumerate(images):
            face = cv2.resize(np.ascontiguousarray(image), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
            mask = np.zeros((SIZE, SIZE, 1), np.uint8)
            cv2.circle(mask, (128, 128), 90 + 5 * i, 255, -1)
            w.add_frame(sid, i, {"faces": face[None], "masks": mask[None]})
    return path


@pytest.fixture
def faceset(template, tmp_path) -> str:
    path = str(tmp_path / "faceset")
    shutil.copytree(template, path)
    return path


# ------------------------------------------------------------------------------------------ rasterising
def test_exclude_wins_whatever_the_order():
    include, hole = regular_polygon(128, 128, 110), regular_polygon(140, 120, 40)
    polys = [{"type": INCLUDE, "pts": include.tolist()}, {"type": EXCLUDE, "pts": hole.tolist()}]
    forward, backward = rasterise(polys, SIZE), rasterise(polys[::-1], SIZE)
    np.testing.assert_array_equal(forward, backward)
    assert forward[120, 140, 0] == 0 and forward[128, 60, 0] == 255
    assert_mask_matches(forward, [include], [hole])


# ------------------------------------------------------------------------------------------ LabelMe
def test_labelme_polygons_rectangles_circles(faceset, tmp_path):
    include, hole = regular_polygon(128, 128, 110), regular_polygon(140, 120, 40)
    folder = tmp_path / "labelme"
    folder.mkdir()
    # Face 1: the exclude polygon comes first in the file; face 3 (named by a Windows relative
    # path) has a rectangle and an "EX" circle (centre, point on the circle).
    write_json(folder / "00001.json", labelme("00001.png", [shape("exclude", hole), shape("face", include)]))
    write_json(folder / "00003.json", labelme("..\\faces\\00003.png", [
        shape("face", [[20, 20], [235, 230]], "rectangle"),
        shape("EX", [[100, 110], [100, 160]], "circle")]))
    (folder / "notes.txt").write_text("not a label file")
    import_file(faceset, str(folder))

    labels, labelled = labels_of(faceset)
    np.testing.assert_array_equal(labelled, [0, 1, 0, 1])
    assert not labels[[0, 2]].any()
    assert_mask_matches(labels[1], [include], [hole])
    rect = np.array([[20, 20], [235, 20], [235, 230], [20, 230]], np.float64)
    assert_mask_matches(labels[3], [rect], [regular_polygon(100, 110, 50, 1000)])
    with open(os.path.join(faceset, "polygons.json")) as f:
        stored = json.load(f)
    assert [p["type"] for p in stored["1"]] == [EXCLUDE, INCLUDE]  # the file's order, DFL's schema
    np.testing.assert_allclose(stored["1"][1]["pts"], include, atol=1e-9)  # same size: unscaled


def test_labels_named_in_the_flag_are_exclude(faceset, tmp_path):
    inner = regular_polygon(128, 128, 40)
    doc = labelme("00002.png", [shape("face", regular_polygon(128, 128, 110)), shape("Hole", inner)])
    path = write_json(tmp_path / "a.json", doc)
    import_file(faceset, path, exclude_labels=["nothing"])  # "Hole" is then an include
    assert labels_of(faceset)[0][2, 128, 128, 0] == 255
    import_file(faceset, path, exclude_labels=["hole"], replace=True)
    assert labels_of(faceset)[0][2, 128, 128, 0] == 0


# ------------------------------------------------------------------------------------------ COCO
def test_coco_scaled_from_twice_the_face_size(faceset, tmp_path):
    big_include, big_hole = regular_polygon(256, 256, 220), regular_polygon(280, 240, 80)
    doc = {
        "images": [{"id": 7, "file_name": "faces/00002.png", "width": 2 * SIZE, "height": 2 * SIZE},
                   {"id": 8, "file_name": "00000.png", "width": 2 * SIZE, "height": 2 * SIZE}],
        "categories": [{"id": 1, "name": "face"}, {"id": 2, "name": "hole"}],
        "annotations": [  # the exclude first
            {"id": 1, "image_id": 7, "category_id": 2, "iscrowd": 0, "segmentation": [big_hole.ravel().tolist()]},
            {"id": 2, "image_id": 7, "category_id": 1, "iscrowd": 0, "segmentation": [big_include.ravel().tolist()]},
        ],
    }
    import_file(faceset, write_json(tmp_path / "coco.json", doc))
    labels, labelled = labels_of(faceset)
    np.testing.assert_array_equal(labelled, [0, 0, 1, 0])  # image 8 has no annotations
    # Pixel centres map as in cv2.resize: x_face = (x + 0.5) / 2 - 0.5 (areas scale by 1/4 exactly).
    include, hole = (big_include + 0.5) / 2 - 0.5, (big_hole + 0.5) / 2 - 0.5
    assert abs(shoelace(include) - shoelace(big_include) / 4) < 1e-6 * shoelace(include)
    assert_mask_matches(labels[2], [include], [hole])
    with open(os.path.join(faceset, "polygons.json")) as f:
        stored = json.load(f)["2"]
    np.testing.assert_allclose(stored[1]["pts"], include, atol=1e-9)


# ------------------------------------------------------------------------------------------ DFL polygons
def test_dfl_polygons_from_the_importer(faceset):
    include, hole = regular_polygon(120, 130, 105), regular_polygon(110, 140, 30)
    # What import-dfl keeps (its own writer); face 3 holds only an unfinished 2-point polygon.
    write_polygons(faceset, {"0": [{"type": EXCLUDE, "pts": hole.tolist()}, {"type": INCLUDE, "pts": include.tolist()}],
                             "3": [{"type": INCLUDE, "pts": [[1.0, 2.0], [50.0, 60.0]]}]})
    before = tree_digest(faceset)
    import_xseg_labels(Faceset.open(faceset), None)
    labels, labelled = labels_of(faceset)
    np.testing.assert_array_equal(labelled, [1, 0, 0, 0])
    assert_mask_matches(labels[0], [include], [hole])
    assert not labels[1:].any()
    after = tree_digest(faceset)
    assert after["polygons.json"] == before["polygons.json"]  # nothing new to merge
    assert untouched_part(after) == untouched_part(before)


# ------------------------------------------------------------------------------------------ storage
def test_import_touches_only_the_label_arrays(faceset, tmp_path):
    before = tree_digest(faceset)
    manifest_before = Faceset.open(faceset).manifest
    path = write_json(tmp_path / "l.json", labelme("00001.png", [shape("face", regular_polygon(128, 128, 100))]))
    import_file(faceset, path)
    after = tree_digest(faceset)
    assert untouched_part(after) == untouched_part(before)
    assert {k.split(os.sep)[0] for k in set(after) - set(before)} == LABEL_ARRAYS | {"polygons.json"}
    fs = Faceset.open(faceset)
    assert {k: v for k, v in fs.manifest["arrays"].items() if k not in LABEL_ARRAYS} == manifest_before["arrays"]
    assert fs.manifest["arrays"]["xseg_labels"] == {"dtype": "uint8", "shape": [SIZE, SIZE, 1]}
    assert fs.manifest["arrays"]["xseg_labelled"] == {"dtype": "uint8", "shape": []}
    assert fs.count == COUNT


def test_merge_replace_and_remove(faceset, tmp_path):
    big, hole, small = regular_polygon(128, 128, 110), regular_polygon(128, 128, 40), regular_polygon(60, 60, 30)
    a = write_json(tmp_path / "a.json", labelme("00001.png", [shape("face", big)]))
    b = tmp_path / "b"
    b.mkdir()
    write_json(b / "1.json", labelme("00001.png", [shape("ex", hole)]))
    write_json(b / "2.json", labelme("00002.png", [shape("face", small)]))
    import_file(faceset, a)
    import_file(faceset, str(b))  # merge: face 1 gains the hole, face 2 its first label
    labels, labelled = labels_of(faceset)
    np.testing.assert_array_equal(labelled, [0, 1, 1, 0])
    assert_mask_matches(labels[1], [big], [hole])
    np.testing.assert_array_equal(labels[2], rasterise([{"type": INCLUDE, "pts": small.tolist()}], SIZE))

    polygons_before = tree_digest(faceset)["polygons.json"]
    import_file(faceset, str(b))  # the same file again: exact duplicates are dropped
    assert tree_digest(faceset)["polygons.json"] == polygons_before
    np.testing.assert_array_equal(labels_of(faceset)[0], labels)

    c = write_json(tmp_path / "c.json", labelme("00001.png", [shape("face", small)]))
    import_file(faceset, c, replace=True)  # face 1: only c's polygon; face 2 keeps its label
    replaced, labelled = labels_of(faceset)
    np.testing.assert_array_equal(labelled, [0, 1, 1, 0])
    np.testing.assert_array_equal(replaced[1], labels[2])
    np.testing.assert_array_equal(replaced[2], labels[2])

    empty = write_json(tmp_path / "e.json", labelme("00002.png", []))
    import_file(faceset, empty, replace=True)  # a face named with no shapes loses its labels
    np.testing.assert_array_equal(labels_of(faceset)[1], [0, 1, 0, 0])

    before = tree_digest(faceset)
    assert "removed xseg_labelled, xseg_labels, polygons.json" in remove_xseg_labels(faceset)
    fs = Faceset.open(faceset)
    assert not LABEL_ARRAYS & set(fs.array_names)
    after = tree_digest(faceset)
    assert not any(k.split(os.sep)[0] in LABEL_ARRAYS | {"polygons.json"} for k in after)
    assert untouched_part(after) == untouched_part(before)
    with pytest.raises(UserError, match="has no XSeg labels"):
        remove_xseg_labels(faceset)


# ------------------------------------------------------------------------------------------ export
def test_export_labels_masks_and_overlay(faceset, tmp_path):
    include = regular_polygon(128, 128, 90)
    folder = tmp_path / "l"
    folder.mkdir()
    for i in (0, 2):
        write_json(folder / f"{i}.json", labelme(f"{i:05d}.png", [shape("face", include + 10 * i)]))
    import_file(faceset, str(folder))
    fs = Faceset.open(faceset)
    labels, faces = fs.to_numpy("xseg_labels"), fs.to_numpy("faces")

    export_xseg(fs, str(tmp_path / "labels"), what="labels", progress=False)
    assert sorted(os.listdir(tmp_path / "labels")) == ["00000.png", "00002.png"]  # labelled faces only
    for i in (0, 2):
        np.testing.assert_array_equal(cv2.imread(str(tmp_path / "labels" / f"{i:05d}.png"), cv2.IMREAD_UNCHANGED),
                                      labels[i, ..., 0])

    export_xseg(fs, str(tmp_path / "overlay"), what="overlay", progress=False)  # no xseg_masks: the labels
    tinted = cv2.imread(str(tmp_path / "overlay" / "00002.png"))[..., ::-1].astype(np.float64)
    inside = labels[2, ..., 0] > 0
    expected = faces[2] * 0.55 + np.array([0, 255, 0]) * 0.45  # float64 blend, 45% green
    assert np.abs(tinted[inside] - expected[inside]).max() <= 1  # rounding to uint8
    np.testing.assert_array_equal(tinted[~inside], faces[2][~inside])

    with pytest.raises(UserError, match="no xseg_masks array"):
        export_xseg(fs, str(tmp_path / "none"), what="masks", progress=False)
    masks = np.stack([cv2.GaussianBlur(m, (0, 0), 3)[..., None] for m in labels])
    add_array(faceset, "xseg_masks", masks)
    export_xseg(Faceset.open(faceset), str(tmp_path / "masks"), what="masks", progress=False)
    assert len(os.listdir(tmp_path / "masks")) == COUNT
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "masks" / "00002.png"), cv2.IMREAD_UNCHANGED),
                                  masks[2, ..., 0])


# ------------------------------------------------------------------------------------------ bad files
_TRIANGLE = [[10, 10], [100, 10], [50, 90]]
_GOOD_COCO = {"images": [{"id": 1, "file_name": "00001.png", "width": SIZE, "height": SIZE}],
              "categories": [{"id": 1, "name": "face"}],
              "annotations": [{"image_id": 1, "category_id": 1, "segmentation": [sum(_TRIANGLE, [])]}]}


def _coco(**changes) -> dict:
    doc = json.loads(json.dumps(_GOOD_COCO))
    for key, value in changes.items():
        if key in ("images", "categories", "annotations") and value is None:
            del doc[key]
        elif key in doc:
            doc[key] = value
        else:
            doc["annotations"][0][key] = value
    return doc


BAD_FILES = {
    "not json": ("{'shapes': [", "not a JSON file"),
    "json list": ([1, 2], "expected a JSON object"),
    "neither format": ({"foo": 1}, "neither a LabelMe file"),
    "labelme no imagePath": ({"shapes": [], "imageWidth": 256, "imageHeight": 256}, "missing key 'imagePath'"),
    "labelme no size": ({"shapes": [], "imagePath": "00001.png"}, "missing key 'imageWidth'"),
    "labelme bad size": (labelme("00001.png", [], 0, 256), "image size 0x256 is not positive"),
    "labelme shapes not a list": ({**labelme("00001.png", []), "shapes": {}}, "'shapes' must be a list"),
    "labelme no label": (labelme("00001.png", [{"points": _TRIANGLE}]), r"shapes\[0\]: missing key 'label'"),
    "name maps to no face": (labelme("face.png", []), "maps to no face"),
    "index out of range": (labelme("00099.png", []), "maps to face 99, but the faceset has 4 faces"),
    "two-point polygon": (labelme("00001.png", [shape("face", _TRIANGLE[:2])]), "polygon with 2 points"),
    "bad points": (labelme("00001.png", [shape("face", [[1, 2, 3]] * 3)]), r"list of \[x, y\] pairs"),
    "text points": (labelme("00001.png", [{"label": "f", "points": [["a", "b"]] * 3}]), "must be numbers"),
    "nan points": (labelme("00001.png", [shape("face", [[np.nan, 1]] * 3)]), "must be finite"),
    "line shape": (labelme("00001.png", [shape("face", _TRIANGLE[:2], "line")]), "shape_type 'line' is not"),
    "rectangle of 3": (labelme("00001.png", [shape("face", _TRIANGLE, "rectangle")]), "rectangle needs 2 points"),
    "zero circle": (labelme("00001.png", [shape("face", [[5, 5], [5, 5]], "circle")]), "circle of radius 0"),
    "coco RLE": (_coco(segmentation={"counts": [0, 5, 10], "size": [256, 256]}), "RLE segmentation is not supported"),
    "coco odd": (_coco(segmentation=[[1, 2, 3, 4, 5, 6, 7]]), "odd number of coordinates"),
    "coco two points": (_coco(segmentation=[[1, 2, 3, 4]]), "polygon with 2 points"),
    "coco unknown image": (_coco(image_id=5), "image_id 5 is not in 'images'"),
    "coco unknown category": (_coco(category_id=3), "category_id 3 is not in 'categories'"),
    "coco no categories": (_coco(categories=None), "missing key 'categories'"),
    "coco no segmentation": ({**_GOOD_COCO, "annotations": [{"image_id": 1, "category_id": 1}]},
                             "missing key 'segmentation'"),
    "coco bool size": (_coco(images=[{"id": 1, "file_name": "00001.png", "width": True, "height": 256}]),
                       "'width' must be an integer"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_label_file_is_one_clear_line_and_writes_nothing(faceset, tmp_path, case):
    content, message = BAD_FILES[case]
    folder = tmp_path / "labels"
    folder.mkdir()
    write_json(folder / "00000.json", labelme("00000.png", [shape("face", _TRIANGLE)]))  # a good file first
    bad = folder / "00001.json"
    if isinstance(content, str):
        bad.write_text(content)
    else:
        write_json(bad, content)
    before = tree_digest(faceset)
    with pytest.raises(UserError, match=message) as error:
        import_file(faceset, str(folder))
    assert "\n" not in str(error.value) and str(bad) in str(error.value)
    assert tree_digest(faceset) == before


def test_bad_label_paths(faceset, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .json label files"):
        import_file(faceset, str(tmp_path / "empty"))
    with pytest.raises(UserError, match="no such label file or folder"):
        import_file(faceset, str(tmp_path / "missing.json"))
    coco = write_json(tmp_path / "coco.json", _GOOD_COCO)
    with pytest.raises(UserError, match="missing key 'imagePath'"):  # a forced format is not guessed
        import_file(faceset, coco, label_format="labelme")


BAD_POLYGONS = {
    "not json": ("{", "unreadable polygons file"),
    "key not an index": ({"x": []}, "key 'x' is not a face index"),
    "key out of range": ({"9": []}, r"key '9' is not a face index in \[0, 4\)"),
    "not a list": ({"1": {}}, "face 1: expected a list of polygons"),
    "bad type": ({"1": [{"type": 2, "pts": _TRIANGLE}]}, "type must be 0 \\(exclude\\) or 1"),
    "no pts": ({"1": [{"type": 1}]}, "missing key 'pts'"),
    "text pts": ({"1": [{"type": 1, "pts": [[1, "a"]] * 3}]}, "coordinates must be numbers"),
}


@pytest.mark.parametrize("case", sorted(BAD_POLYGONS))
def test_bad_polygons_json_is_one_clear_line_and_writes_nothing(faceset, case):
    content, message = BAD_POLYGONS[case]
    with open(os.path.join(faceset, "polygons.json"), "w") as f:
        f.write(content if isinstance(content, str) else json.dumps(content))
    before = tree_digest(faceset)
    with pytest.raises(UserError, match=message) as error:
        import_xseg_labels(Faceset.open(faceset), None)
    assert "\n" not in str(error.value) and "polygons.json" in str(error.value)
    assert tree_digest(faceset) == before


def test_from_dfl_without_polygons(faceset):
    with pytest.raises(UserError, match="has no XSeg polygons to rasterise"):
        import_xseg_labels(Faceset.open(faceset), None)
    assert "xseg_labels" not in Faceset.open(faceset).array_names


# ------------------------------------------------------------------------------------------ CLI
def test_cli_import_export_remove(faceset, tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "preprocessing.faceset", *args, "--noprogress"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)

    path = write_json(tmp_path / "coco.json", _GOOD_COCO)
    done = run("xseg-import", f"--faceset={faceset}", f"--labels={path}")
    assert done.returncode == 0, done.stderr
    assert "1 faces labelled" in done.stdout
    np.testing.assert_array_equal(labels_of(faceset)[1], [0, 1, 0, 0])
    done = run("xseg-export", f"--faceset={faceset}", f"--output_dir={tmp_path / 'out'}", "--what=labels")
    assert done.returncode == 0, done.stderr
    assert os.listdir(tmp_path / "out") == ["00001.png"]
    bad = write_json(tmp_path / "bad.json", _coco(segmentation={"counts": "abc", "size": [2, 2]}))
    done = run("xseg-import", f"--faceset={faceset}", f"--labels={bad}")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith("error: ") and "RLE" in done.stderr
    done = run("xseg-import", f"--faceset={faceset}")
    assert done.returncode == 2 and "either --labels" in done.stderr
    done = run("xseg-remove-labels", f"--faceset={faceset}")
    assert done.returncode == 0, done.stderr
    assert "xseg_labels" not in Faceset.open(faceset).array_names
