"""Faceset storage: exact round trips, random reads, zarr-python interop and the commit protocol,
for extraction (add_frame) and for derived facesets (add_faces, write_subset).

The reference is always the NumPy data handed to the writer; every comparison is exact (the
format is lossless). Faces are tiny (8 px) and shards small (8 faces) so many shards, partial
shards and straddling frames are exercised in milliseconds.
"""
from __future__ import annotations

import copy
import errno
import gc
import json
import os
import re
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import tensorstore as ts

from preprocessing.errors import UserError
from preprocessing.face_types import FaceType
from preprocessing.faceset import Faceset, FacesetWriter, STANDARD_ARRAYS, add_array, remove_array
from preprocessing.faceset import manifest as mf
from preprocessing.faceset import store
from preprocessing.faceset.schema import WRITER_FILLED
from preprocessing.faceset.subset import write_faces, write_subset

SIZE = 8
SHARD = 8
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (source, frame, faces in it): two sources; frames with 0 faces, frames straddling shard
# boundaries (e.g. faces 6..9) and one frame larger than a shard (faces 18..36).
PLAN = [(0, f, k) for f, k in enumerate([3, 0, 3, 4, 0, 0, 2, 1, 5, 19, 0, 1, 2])] + \
       [(1, f, k) for f, k in enumerate([0, 2, 6, 0, 1, 3])]
SOURCES = [{"path": "a.mp4", "kind": "video", "sha256": "a" * 64, "frames": 13},
           {"path": "b.mp4", "kind": "video", "sha256": "b" * 64, "frames": 6}]


def frame_faces(source: int, frame: int, k: int) -> dict[str, np.ndarray]:
    """Deterministic per-frame data (a function of source and frame, so reruns regenerate it)."""
    rng = np.random.default_rng(1000 * source + frame)
    return {
        "faces": rng.integers(0, 256, (k, SIZE, SIZE, 3), dtype=np.uint8),
        "masks": rng.integers(0, 256, (k, SIZE, SIZE, 1), dtype=np.uint8),
        "eyes_mouth_masks": rng.integers(0, 256, (k, SIZE, SIZE, 1), dtype=np.uint8),
        "landmarks": rng.normal(size=(k, 68, 2)).astype(np.float32),
        "source_landmarks": rng.normal(size=(k, 68, 2)).astype(np.float32),
        "matrices": rng.normal(size=(k, 2, 3)).astype(np.float32),
        "source_rects": rng.normal(size=(k, 4)).astype(np.float32),
        "score": rng.random(k).astype(np.float32),
        "blur": rng.random(k).astype(np.float32),
        "pose": rng.normal(size=(k, 3)).astype(np.float32),
    }


def reference(plan=PLAN) -> dict[str, np.ndarray]:
    """What the arrays must hold after writing `plan`, built with plain NumPy."""
    parts: dict[str, list] = {name: [] for name in STANDARD_ARRAYS}
    for source, frame, k in plan:
        for name, rows in frame_faces(source, frame, k).items():
            parts[name].append(rows)
        parts["frame_index"].append(np.full(k, frame, np.int32))
        parts["source_id"].append(np.full(k, source, np.int32))
        parts["face_index"].append(np.arange(k, dtype=np.int32))
    return {name: np.concatenate(p) for name, p in parts.items()}


def open_writer(path, **kw) -> FacesetWriter:
    kw.setdefault("shard_faces", SHARD)
    return FacesetWriter(str(path), size=SIZE, face_type=FaceType.WHOLE_FACE,
                         producer={"program": "test", "version": "0"}, **kw)


def run_plan(writer: FacesetWriter, plan=PLAN, stop_after: int | None = None) -> None:
    """An extractor: registers the sources, continues each at frames_done, adds frames in order."""
    ids = [writer.add_source(dict(s)) for s in SOURCES]
    for n, (source, frame, k) in enumerate(plan):
        if stop_after is not None and n >= stop_after:
            return
        if frame >= writer.frames_done(ids[source]):
            writer.add_frame(ids[source], frame, frame_faces(source, frame, k))


def read_all(path) -> tuple[dict[str, np.ndarray], dict]:
    fs = Faceset.open(str(path))
    return {name: fs.to_numpy(name) for name in fs.array_names}, fs.manifest


def assert_same_arrays(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        assert got[name].dtype == want[name].dtype, name


def folder_bytes(path) -> dict[str, bytes]:
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            full = os.path.join(root, f)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, path)] = fh.read()
    return out


def ts_length(path, name) -> int:
    return ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.join(str(path), name)}}
                   ).result().shape[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A faceset written in one uninterrupted run (the reference for every crash test)."""
    path = tmp_path_factory.mktemp("faceset") / "ref"
    with open_writer(path) as writer:
        run_plan(writer)
    arrays, manifest = read_all(path)
    return path, arrays, manifest


# ------------------------------------------------------------------------------------ round trip
def test_round_trip_is_exact(finished):
    path, arrays, manifest = finished
    want = reference()
    assert_same_arrays(arrays, want)
    assert manifest["count"] == len(want["faces"]) == 52
    assert manifest["face_type"] == "whole_face" and manifest["size"] == SIZE
    assert [(s["frames_done"], s["complete"]) for s in manifest["sources"]] == [(13, True), (6, True)]
    assert manifest["sources"][0]["path"] == "a.mp4"
    assert manifest["arrays"]["faces"] == {"dtype": "uint8", "shape": [SIZE, SIZE, 3]}
    assert manifest["arrays"]["landmarks"] == {"dtype": "float32", "shape": [68, 2]}
    # A clean close leaves every array exactly `count` long, in ceil(52 / 8) = 7 shards.
    assert all(ts_length(path, name) == 52 for name in STANDARD_ARRAYS)
    assert sorted(os.listdir(path / "faces" / "c")) == [str(i) for i in range(7)]
    group = json.loads((path / "zarr.json").read_text())
    assert group["zarr_format"] == 3 and group["node_type"] == "group"
    assert group["attributes"]["face_type"] == "whole_face"
    fs = Faceset.open(str(path))
    assert (len(fs), fs.size, fs.face_type, fs.array_names) == (52, SIZE, FaceType.WHOLE_FACE,
                                                                STANDARD_ARRAYS)


def test_random_batch_reads_match_numpy(finished):
    path, _, _ = finished
    want = reference()
    fs = Faceset.open(str(path), cache_bytes=0)
    rng = np.random.default_rng(7)
    for _ in range(5):
        idx = rng.integers(0, 52, 64)  # unsorted, with repeats
        for name in ("faces", "landmarks", "frame_index"):
            np.testing.assert_array_equal(fs.read(name, idx), want[name][idx])
        many = fs.read_many(["masks", "pose"], idx.tolist())
        np.testing.assert_array_equal(many["masks"], want["masks"][idx])
        np.testing.assert_array_equal(many["pose"], want["pose"][idx])
    assert fs.read("faces", []).shape == (0, SIZE, SIZE, 3)
    np.testing.assert_array_equal(fs.read_range("faces", 5, 21), want["faces"][5:21])
    for bad in ([52], [-1]):
        with pytest.raises(IndexError):
            fs.read("faces", bad)
    with pytest.raises(KeyError):
        fs.read("xseg_masks", [0])
    batches = list(fs.iter_batches(10, names=["faces", "score"]))
    assert [len(b["index"]) for b in batches] == [10, 10, 10, 10, 10, 2]
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches]), np.arange(52))
    np.testing.assert_array_equal(np.concatenate([b["faces"] for b in batches]), want["faces"])
    np.testing.assert_array_equal(np.concatenate([b["score"] for b in batches]), want["score"])


def test_plain_zarr_python_and_tensorstore_read_it(finished):
    zarr = pytest.importorskip("zarr")
    path, _, manifest = finished
    want = reference()
    with warnings.catch_warnings():  # zarr-python notes manifest.json is not a zarr node
        warnings.simplefilter("ignore")
        group = zarr.open_group(str(path), mode="r")
        assert sorted(group.array_keys()) == sorted(manifest["arrays"])
        count = manifest["count"]
        np.testing.assert_array_equal(group["faces"][0:count], want["faces"])
        np.testing.assert_array_equal(group["landmarks"][0:count], want["landmarks"])
    plain = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / "masks")}}).result()
    np.testing.assert_array_equal(plain[0:count].read().result(), want["masks"])


def test_after_a_crash_arrays_are_longer_than_count(tmp_path):
    """Why every reader slices [0, count): shards written past the last commit stay on disk."""
    zarr = pytest.importorskip("zarr")
    path = tmp_path / "f"
    crashed = open_writer(path)
    run_plan(crashed, stop_after=11)  # frame 9 (faces 18..36) straddles: shards up to 32 written
    del crashed
    gc.collect()
    count = mf.load_manifest(str(path))["count"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        faces = zarr.open_group(str(path), mode="r")["faces"]
        assert (count, faces.shape[0]) == (18, 32)
        np.testing.assert_array_equal(faces[0:count], reference()["faces"][:count])


# ------------------------------------------------------------------------------------ commit rules
def test_straddling_frames_and_face_less_frames(tmp_path, monkeypatch):
    writes = []
    real_write = store.write_blocks
    monkeypatch.setattr(store, "write_blocks",
                        lambda arrays, start, blocks: (writes.append(start), real_write(arrays, start, blocks)))
    writer = open_writer(tmp_path / "f", commit_interval_s=0.0)
    sid = writer.add_source(dict(SOURCES[0]))

    def on_disk():
        manifest = mf.load_manifest(str(tmp_path / "f"))
        return manifest["count"], manifest["sources"][sid]["frames_done"]

    writer.add_frame(sid, 0, frame_faces(0, 0, 6))
    writer.add_frame(sid, 1, frame_faces(0, 1, 0))
    assert on_disk() == (0, 0) and writes == []      # nothing on disk yet: nothing committed
    writer.add_frame(sid, 2, frame_faces(0, 2, 4))   # faces 6..9 straddle the boundary at 8
    assert writes == [0] and ts_length(tmp_path / "f", "faces") == 8
    assert on_disk() == (6, 2)                       # count stops before the straddling frame
    writer.add_frame(sid, 3, frame_faces(0, 3, 0))   # face-less, but frame 2 is still pending
    assert on_disk() == (6, 2)
    writer.add_frame(sid, 4, frame_faces(0, 4, 6))   # completes shard 1 exactly (faces 8..15)
    assert writes == [0, 8] and on_disk() == (16, 5)
    for frame in range(5, 9):                        # progress-only commits, no chunk written
        writer.add_frame(sid, frame, frame_faces(0, frame, 0))
        assert on_disk() == (16, frame + 1)
    assert writes == [0, 8]
    writer.add_frame(sid, 9, frame_faces(0, 9, 20))  # one frame larger than two shards
    assert writes == [0, 8, 16, 24] and on_disk() == (16, 9)
    writer.close()
    assert writes == [0, 8, 16, 24, 32] and on_disk() == (36, 10)
    plan = [(0, f, k) for f, k in enumerate([6, 0, 4, 0, 6, 0, 0, 0, 0, 20])]
    assert_same_arrays(read_all(tmp_path / "f")[0], reference(plan))


def test_frames_must_arrive_in_order_and_complete(tmp_path):
    with open_writer(tmp_path / "f") as writer:
        sid = writer.add_source(dict(SOURCES[0]))
        writer.add_frame(sid, 0, frame_faces(0, 0, 1))
        with pytest.raises(ValueError, match="out of order"):
            writer.add_frame(sid, 0, frame_faces(0, 0, 1))
        with pytest.raises(ValueError, match="missing"):
            writer.add_frame(sid, 1, {"faces": np.zeros((1, SIZE, SIZE, 3), np.uint8)})
        bad = frame_faces(0, 1, 2)
        bad["faces"] = bad["faces"][:, :4]
        with pytest.raises(ValueError, match="shape"):
            writer.add_frame(sid, 1, bad)
        with pytest.raises(ValueError, match="unknown source"):
            writer.add_frame(5, 1, frame_faces(0, 1, 1))
        assert writer.count == 1


def test_a_faceset_without_faces(tmp_path):
    with open_writer(tmp_path / "f") as writer:
        sid = writer.add_source(dict(SOURCES[0]))
        for frame in range(3):
            writer.add_frame(sid, frame, frame_faces(0, frame, 0))
    fs = Faceset.open(str(tmp_path / "f"))
    assert len(fs) == 0 and fs.sources[0]["frames_done"] == 3 and fs.sources[0]["complete"]
    assert fs.to_numpy("faces").shape == (0, SIZE, SIZE, 3)
    assert list(fs.iter_batches(4)) == []


# ------------------------------------------------------------------------------------ crash + resume
@pytest.mark.parametrize("stop_after", range(0, len(PLAN) + 1, 2))
def test_abandoned_writer_resumes_to_the_uninterrupted_result(tmp_path, finished, stop_after,
                                                              monkeypatch):
    _, want, want_manifest = finished
    path = tmp_path / "f"
    crashed = open_writer(path)
    run_plan(crashed, stop_after=stop_after)
    committed = crashed.committed_count
    del crashed  # no close: the buffer is lost, as in a crash
    gc.collect()
    assert Faceset.open(str(path)).count == committed
    writes = []
    real_write = store.write_blocks
    monkeypatch.setattr(store, "write_blocks", lambda arrays, start, blocks: (
        writes.append((start, len(blocks["faces"]))), real_write(arrays, start, blocks)))
    with open_writer(path, resume=True) as writer:
        run_plan(writer)
    # Whole shards only; the last one (at close) may be partial.
    assert all(start % SHARD == 0 for start, _ in writes)
    assert all(n == SHARD for _, n in writes[:-1]) and writes[-1] == (48, 4)
    got, manifest = read_all(path)
    assert_same_arrays(got, want)
    assert manifest["count"] == want_manifest["count"]
    assert manifest["sources"] == want_manifest["sources"]


def test_crash_after_chunks_before_manifest_commit(tmp_path, finished, monkeypatch):
    _, want, want_manifest = finished
    path = tmp_path / "f"

    class Crash(BaseException):
        pass

    def crash(folder, manifest):
        raise Crash

    writer = open_writer(path)
    run_plan(writer, stop_after=3)                  # 6 faces buffered, nothing written
    monkeypatch.setattr(mf, "write_manifest", crash)
    with pytest.raises(Crash):
        run_plan(writer, PLAN[3:])                  # shard 0 written, its commit "crashes"
    monkeypatch.undo()
    del writer
    gc.collect()
    assert Faceset.open(str(path)).count == 0       # chunks beyond count are invisible...
    assert ts_length(path, "faces") == SHARD        # ...though the arrays grew
    with open_writer(path, resume=True) as writer:
        assert writer.count == 0 and writer.frames_done(0) == 0
        run_plan(writer)
    got, manifest = read_all(path)
    assert_same_arrays(got, want)
    assert manifest["sources"] == want_manifest["sources"]


def test_killed_process_resumes(tmp_path, finished):
    """A real kill (os._exit, no cleanup, no lock release by Python) mid-run."""
    _, want, want_manifest = finished
    path = tmp_path / "f"
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {REPO!r}); sys.path.insert(0, {os.path.dirname(__file__)!r})
        import test_faceset_store as t
        w = t.open_writer({str(path)!r})
        t.run_plan(w, stop_after=11)
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert Faceset.open(str(path)).count == 18       # frames 0..8 committed; frame 9 straddles
    with open_writer(path, resume=True) as writer:
        assert writer.frames_done(0) == 9
        run_plan(writer)
    got, manifest = read_all(path)
    assert_same_arrays(got, want)
    assert manifest["sources"] == want_manifest["sources"]


def test_exception_inside_with_commits_whole_frames(tmp_path, finished):
    _, want, want_manifest = finished
    path = tmp_path / "f"
    with pytest.raises(KeyboardInterrupt):
        with open_writer(path) as writer:
            run_plan(writer, stop_after=8)
            raise KeyboardInterrupt
    fs = Faceset.open(str(path))
    assert fs.count == 13                                   # every added frame is committed
    assert [(s["frames_done"], s["complete"]) for s in fs.sources] == [(8, False), (0, False)]
    with open_writer(path, resume=True) as writer:
        run_plan(writer)
    got, manifest = read_all(path)
    assert_same_arrays(got, want)
    assert manifest["sources"] == want_manifest["sources"]


def test_truncation_drops_faces_written_past_count(tmp_path):
    """Resume cuts the arrays at count; the cut faces cannot reappear if an array grows again."""
    path = tmp_path / "f"
    writer = open_writer(path)
    sid = writer.add_source(dict(SOURCES[0]))
    writer.add_frame(sid, 0, frame_faces(0, 0, 5))
    writer.add_frame(sid, 1, frame_faces(0, 1, 5))          # shard 0 written, count = 5
    del writer
    gc.collect()
    open_writer(path, resume=True).close()
    assert ts_length(path, "faces") == 5
    faces = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / "faces")}}).result()
    regrown = faces.resize(exclusive_max=[SHARD, None, None, None], resize_metadata_only=True).result()
    assert not regrown[5:SHARD].read().result().any()       # fill value, not the old faces
    np.testing.assert_array_equal(regrown[:5].read().result(), frame_faces(0, 0, 5)["faces"])


# ------------------------------------------------------------------------------------ derived facesets
def derived_order() -> np.ndarray:
    """45 of the 52 faces, shuffled: both sources and the faces of shared frames interleave."""
    return np.random.default_rng(3).permutation(52)[:45]


def test_add_faces_keeps_the_input_provenance_in_the_new_order(tmp_path, finished, monkeypatch):
    _, arrays, manifest = finished
    order = derived_order()
    want = {name: rows[order] for name, rows in arrays.items()}
    assert np.count_nonzero(np.diff(want["source_id"])) > 10  # the test means something
    sources = copy.deepcopy(manifest["sources"])
    sources[1].update(frames_done=4, complete=False)  # copied as given, progress fields included
    writes = []
    real_write = store.write_blocks
    monkeypatch.setattr(store, "write_blocks", lambda arrays, start, blocks: (
        writes.append((start, len(blocks["faces"]))), real_write(arrays, start, blocks)))
    path = tmp_path / "derived"
    committed = []
    with open_writer(path, commit_interval_s=0.0) as writer:
        writer.copy_sources(sources)
        end = 0
        for n in (5, 3, 9, 1, 20, 7):  # calls end at faces 5, 8, 17, 18, 38, 45
            writer.add_faces({name: rows[end:end + n] for name, rows in want.items()})
            end += n
            committed.append(mf.load_manifest(str(path))["count"])
    # Whole shards only; count is the last call end on disk (faces [0, 8k) written), never inside a call.
    assert writes == [(0, 8), (8, 8), (16, 8), (24, 8), (32, 8), (40, 5)]
    assert committed == [0, 8, 8, 8, 18, 38]
    got, got_manifest = read_all(path)
    assert_same_arrays(got, want)
    for name in WRITER_FILLED:  # provenance: exactly the input's, reordered, still int32
        np.testing.assert_array_equal(got[name], arrays[name][order], err_msg=name)
        assert got[name].dtype == np.int32
    assert got_manifest["count"] == 45
    assert got_manifest["sources"] == sources  # not re-marked: this writer extracted nothing


def test_derived_and_extracting_writers_do_not_mix(tmp_path, finished):
    path, arrays, manifest = finished
    one = {name: rows[:1] for name, rows in arrays.items()}
    with open_writer(tmp_path / "extracting") as writer:
        writer.add_source(dict(SOURCES[0]))
        with pytest.raises(ValueError, match="call copy_sources first"):
            writer.add_faces(one)
        with pytest.raises(ValueError, match="needs a new faceset without sources"):
            writer.copy_sources(manifest["sources"])
    with open_writer(tmp_path / "derived") as writer:
        writer.copy_sources(manifest["sources"])
        with pytest.raises(ValueError, match="written with add_faces"):
            writer.add_frame(0, 0, frame_faces(0, 0, 1))
        with pytest.raises(ValueError, match="takes its sources from copy_sources"):
            writer.add_source(dict(SOURCES[0]))
        with pytest.raises(ValueError, match=r"missing \['face_index'\]"):
            writer.add_faces({name: rows for name, rows in one.items() if name != "face_index"})
        with pytest.raises(ValueError, match="source_id 2 is not one of the 2 copied sources"):
            writer.add_faces({**one, "source_id": np.array([2])})
        with pytest.raises(ValueError, match="must not be negative"):
            writer.add_faces({**one, "frame_index": np.array([-1])})
        assert writer.count == 0
    before = folder_bytes(path)
    with open_writer(path, resume=True) as writer:
        with pytest.raises(ValueError, match="needs a new faceset without sources"):
            writer.copy_sources(manifest["sources"])
    assert folder_bytes(path) == before


# A derived write (write_subset, 5 faces per add_faces call) killed at a chosen point.
_KILLED_SUBSET = """
import os, sys
sys.path.insert(0, {repo!r})
from preprocessing.faceset import Faceset, manifest as mf, store, subset

def kill(*args):
    os._exit(3)

if {point!r} == "shard":  # while writing shard 3: shards 0-2 are committed in the staging folder
    real_write = store.write_blocks
    store.write_blocks = lambda arrays, start, blocks: kill() if start == 24 else real_write(arrays, start, blocks)
elif {point!r} == "commit":  # at the writer's final commit
    real_manifest = mf.write_manifest
    mf.write_manifest = lambda folder, m: kill() if m["count"] == 45 else real_manifest(folder, m)
else:  # the staging faceset is whole; the rename onto the output does not happen
    subset.publish = kill
subset.BATCH = 5
subset.write_subset(Faceset.open({path!r}), {order!r}, {out!r}, producer={{"program": "test"}}, progress=False)
"""


@pytest.mark.parametrize("point, staged_count", [("shard", 20), ("commit", 40), ("publish", 45)])
def test_a_killed_derived_write_leaves_no_output_that_looks_complete(tmp_path, finished, point, staged_count):
    path, arrays, manifest = finished
    order = derived_order()
    out = tmp_path / "sorted"
    script = _KILLED_SUBSET.format(repo=REPO, point=point, path=str(path), order=order.tolist(), out=str(out))
    assert subprocess.run([sys.executable, "-c", script], timeout=120).returncode == 3  # killed, not finished
    assert sorted(os.listdir(tmp_path)) == ["sorted.partial"]  # no output folder at all
    with pytest.raises(UserError, match="not a faceset"):
        Faceset.open(str(out))
    assert mf.load_manifest(str(tmp_path / "sorted.partial"))["count"] == staged_count
    write_subset(Faceset.open(str(path)), order, str(out), producer={"program": "test"}, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["sorted"]  # the leftover staging folder is gone
    got, got_manifest = read_all(out)
    assert_same_arrays(got, {name: rows[order] for name, rows in arrays.items()})
    assert got_manifest["sources"] == manifest["sources"]


def test_a_failed_derived_write_leaves_nothing(tmp_path, finished):
    fs = Faceset.open(str(finished[0]))
    names = [name for name in fs.array_names if name not in WRITER_FILLED]

    def batches():
        yield fs.read_many(names, np.arange(20))
        raise UserError("face 20: unreadable")

    with pytest.raises(UserError, match="face 20: unreadable"):
        write_faces(str(tmp_path / "out"), like=fs, indices=np.arange(40), batches=batches(),
                    producer={"program": "test"}, progress=False)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------ refusals
def test_a_different_or_foreign_folder_is_refused_untouched(tmp_path, finished):
    path, _, _ = finished
    before = folder_bytes(path)
    attempts = [
        dict(size=16, face_type=FaceType.WHOLE_FACE, resume=True),
        dict(size=SIZE, face_type=FaceType.FULL, resume=True),
        dict(size=SIZE, face_type=FaceType.WHOLE_FACE, resume=False),  # exists: no silent reuse
    ]
    for kw in attempts:
        with pytest.raises(UserError, match=re.escape(str(path))):
            FacesetWriter(str(path), producer={}, shard_faces=SHARD, **kw)
    with open_writer(path, resume=True) as writer:
        with pytest.raises(UserError, match="different faceset"):
            writer.add_source({"path": "c.mp4", "sha256": "c" * 64})
    assert folder_bytes(path) == before

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "a.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and not a faceset"):
        open_writer(foreign)
    assert folder_bytes(foreign) == {"a.txt": b"mine"}


def test_a_second_writer_on_the_same_folder_is_refused(tmp_path):
    with open_writer(tmp_path / "f"):
        with pytest.raises(UserError, match="another program is writing"):
            open_writer(tmp_path / "f", resume=True)


def test_bad_facesets_raise_user_errors_on_open(tmp_path, finished):
    with pytest.raises(UserError, match="not a faceset"):
        Faceset.open(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a faceset"):
        Faceset.open(str(tmp_path / "empty"))

    def broken_copy(name, edit):
        dst = tmp_path / name
        for rel, data in folder_bytes(finished[0]).items():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            (dst / rel).write_bytes(data)
        edit(dst)
        return dst

    truncated = broken_copy("truncated", lambda d: (d / "manifest.json").write_bytes(
        (d / "manifest.json").read_bytes()[:40]))
    with pytest.raises(UserError, match=f"{re.escape(str(truncated))}: corrupt faceset"):
        Faceset.open(str(truncated))
    with pytest.raises(UserError, match="corrupt faceset"):
        open_writer(truncated, resume=True)

    def set_version(d):
        m = json.loads((d / "manifest.json").read_text())
        m["schema_version"] = 99
        (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="unsupported faceset schema_version 99"):
        Faceset.open(str(broken_copy("v99", set_version)))

    def shorten(d):
        a = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(d / "blur")}}).result()
        a.resize(exclusive_max=[40], resize_metadata_only=True).result()
    with pytest.raises(UserError, match="'blur' holds 40 faces, fewer than count=52"):
        Faceset.open(str(broken_copy("short", shorten)))


def test_disk_full_keeps_the_committed_faceset(tmp_path, finished, monkeypatch):
    _, want, want_manifest = finished
    path = tmp_path / "f"
    real_write = store.write_blocks

    def full_at_shard_3(arrays, start, blocks):
        if start == 3 * SHARD:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(arrays, start, blocks)

    monkeypatch.setattr(store, "write_blocks", full_at_shard_3)
    writer = open_writer(path)
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: disk full while writing shard 3; "
                                        r"the faceset stays valid with count=18$"):
        run_plan(writer)
    with pytest.raises(UserError):  # a failed writer refuses more work
        writer.add_frame(0, 12, frame_faces(0, 12, 1))
    writer.close()
    fs = Faceset.open(str(path))
    assert fs.count == 18 and fs.sources[0]["frames_done"] == 9
    np.testing.assert_array_equal(fs.to_numpy("faces"), want["faces"][:18])
    monkeypatch.undo()
    with open_writer(path, resume=True) as writer:  # space freed: finish the run
        run_plan(writer)
    got, manifest = read_all(path)
    assert_same_arrays(got, want)
    assert manifest["sources"] == want_manifest["sources"]


def test_disk_full_at_the_manifest_commit(tmp_path, monkeypatch):
    path = tmp_path / "f"
    writer = open_writer(path)
    sid = writer.add_source(dict(SOURCES[0]))

    def full(folder, manifest):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mf, "write_manifest", full)
    with pytest.raises(UserError, match="disk full while committing; the faceset stays valid with count=0"):
        writer.add_frame(sid, 0, frame_faces(0, 0, SHARD))
    monkeypatch.undo()
    writer.close()
    fs = Faceset.open(str(path))
    assert fs.count == 0 and fs.sources[0]["frames_done"] == 0


def test_io_errors_from_tensorstore_become_oserror():
    error = ValueError("RESOURCE_EXHAUSTED: Error writing local file \"x/c/1/0/0/0\": Failed to write "
                       "533508 bytes to file 3: No space left on device [os_error_code='28']")
    converted = store.io_error(error)
    assert isinstance(converted, OSError) and converted.errno == errno.ENOSPC
    assert store.io_error(ValueError("INVALID_ARGUMENT: shape mismatch")) is None


# ------------------------------------------------------------------------------------ add/remove
def test_add_and_remove_array_leave_other_arrays_byte_identical(tmp_path, finished):
    src, want, _ = finished
    path = tmp_path / "f"
    for rel, data in folder_bytes(src).items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    before = folder_bytes(path)
    labels = (want["faces"][..., :1] // 2).astype(np.uint8)
    add_array(str(path), "xseg_labels", labels)
    calls = []

    def xseg_masks(start, stop):
        calls.append((start, stop))
        return 255 - labels[start:stop]

    add_array(str(path), "xseg_masks", xseg_masks)
    assert calls == [(s, min(s + SHARD, 52)) for s in range(0, 52, SHARD)]
    fs = Faceset.open(str(path))
    assert fs.array_names[-2:] == ("xseg_labels", "xseg_masks")
    np.testing.assert_array_equal(fs.to_numpy("xseg_labels"), labels)
    idx = np.array([51, 3, 3, 40])
    np.testing.assert_array_equal(fs.read("xseg_masks", idx), 255 - labels[idx])
    after = folder_bytes(path)
    assert {k: v for k, v in after.items() if k in before and k != "manifest.json"} == \
           {k: v for k, v in before.items() if k != "manifest.json"}
    with pytest.raises(UserError, match="already has"):
        add_array(str(path), "xseg_masks", labels)
    with pytest.raises(ValueError, match="52 faces"):
        add_array(str(path), "extra", labels[:10])

    remove_array(str(path), "xseg_labels")
    remove_array(str(path), "xseg_masks")
    assert folder_bytes(path) == before  # same files, and the manifest is as it was
    with pytest.raises(UserError, match="standard array"):
        remove_array(str(path), "masks")


def test_readers_ignore_arrays_not_in_the_manifest(tmp_path, finished):
    src, _, _ = finished
    path = tmp_path / "f"
    for rel, data in folder_bytes(src).items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    # A half-finished add_array: the array exists but was never listed.
    store.create_array(str(path), "xseg_masks", dtype=np.dtype(np.uint8), face_shape=(SIZE, SIZE, 1),
                       shard_faces=SHARD)
    fs = Faceset.open(str(path))
    assert "xseg_masks" not in fs.array_names
    add_array(str(path), "xseg_masks", np.ones((52, SIZE, SIZE, 1), np.uint8))  # replaces it
    assert Faceset.open(str(path)).to_numpy("xseg_masks").sum() == 52 * SIZE * SIZE
