"""The data layer: exact resume, batch-size changes, resident == streamed, the re-crop matrices,
uniform yaw, the validation split, bad input, and batch sharding on 4 forced CPU devices.

Facesets are built from real face crops (the astronaut portrait, the 3-D mean face turned to
40 yaws and extracted by the extractor's own face_record) at 64 px (src, whole_face) and 48 px
(dst, full). References: the arrays handed to the writer (exact), float64 NumPy for the
landmark mapping and the yaw bins, set arithmetic for the epochs and the split.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from configs.saehd import get_config
from engine import parallel
from engine.data import TrainData
from engine.data.prefetch import Prefetcher
from engine.data.sampler import make_sampler
from preprocessing.align import image_to_face_matrix, transform_points
from preprocessing.detect.base import DetectedFace
from preprocessing.errors import UserError
from preprocessing.face_record import face_record, stack_records
from preprocessing.face_types import FaceType
from preprocessing.faceset import FacesetWriter, add_array
from preprocessing.pose import LANDMARKS_68_3D
from preprocessing.samples import astronaut_rgb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_TYPE, RESOLUTION = FaceType.FULL, 32
SRC_FACES, DST_FACES = 40, 24
KEYS = ("faces", "masks", "eyes_mouth_masks", "base_matrices", "sample_ids")


def turned_face_records(n: int, size: int, face_type: FaceType, yaw_max: float) -> dict[str, np.ndarray]:
    """n extracted crops of the astronaut with the mean face turned from -yaw_max to +yaw_max."""
    image = astronaut_rgb()
    records = []
    for k, yaw in enumerate(np.linspace(-yaw_max, yaw_max, n)):
        c, s = np.cos(yaw), np.sin(yaw)
        turned = LANDMARKS_68_3D @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]).T
        landmarks = (turned[:, :2] * 45.0 + [225.0 + k % 5, 125.0 - k % 3]).astype(np.float32)
        box = np.r_[landmarks.min(0), landmarks.max(0)].astype(np.float32)
        records.append(face_record(image, DetectedFace(box, 1.0, landmarks), size, face_type))
    return stack_records(records, size)


def write_faceset(path: str, records: dict[str, np.ndarray], size: int, face_type: FaceType) -> None:
    writer = FacesetWriter(path, size=size, face_type=face_type, shard_faces=16,
                           producer={"program": "test_data", "version": "0"})
    with writer:
        source = writer.add_source({"path": "astronaut.png", "sha256": "0" * 64})
        for k in range(len(records["faces"])):  # one face per frame
            writer.add_frame(source, k, {name: rows[k:k + 1] for name, rows in records.items()})


@pytest.fixture(scope="module")
def facesets(tmp_path_factory):
    """{"src"/"dst": (path, the records written)}; dst carries XSeg masks that replace its masks."""
    root = tmp_path_factory.mktemp("facesets")
    src = turned_face_records(SRC_FACES, 64, FaceType.WHOLE_FACE, 1.0)
    dst = turned_face_records(DST_FACES, 48, FaceType.FULL, 0.5)
    write_faceset(str(root / "src"), src, 64, FaceType.WHOLE_FACE)
    write_faceset(str(root / "dst"), dst, 48, FaceType.FULL)
    xseg = (np.arange(DST_FACES)[:, None, None, None] * 7 + np.zeros((1, 48, 48, 1))).astype(np.uint8)
    add_array(str(root / "dst"), "xseg_masks", xseg)
    dst["xseg_masks"] = xseg
    return {"src": (str(root / "src"), src), "dst": (str(root / "dst"), dst)}


def config(batch_size: int = 4, budget_mb: int = 64, uniform_yaw: bool = False, prefetch: int = 2):
    cfg = get_config("tiny")
    cfg.train.batch_size = batch_size
    cfg.train.uniform_yaw = uniform_yaw
    cfg.data.device_budget_mb = budget_mb
    cfg.data.prefetch = prefetch
    cfg.data.validation_fraction = 0.1
    return cfg


def open_data(facesets, cfg, seed: int = 7) -> TrainData:
    return TrainData(facesets["src"][0], facesets["dst"][0], cfg, parallel.make_mesh(cfg.mesh),
                     MODEL_TYPE, RESOLUTION, seed)


def to_host(batch: dict) -> dict:
    return {side: {key: np.asarray(value) for key, value in arrays.items()} for side, arrays in batch.items()}


def take(data: TrainData, n: int) -> list[dict]:
    return [to_host(data.next_batch()) for _ in range(n)]


def ids(batches: list[dict], side: str = "src") -> np.ndarray:
    return np.concatenate([b[side]["sample_ids"] for b in batches])


@pytest.fixture(scope="module")
def uninterrupted(facesets):
    """Six batches of 8 from a run that never stops: 48 samples, past the end of an epoch on both
    sides (36 and 21 training faces). The reference for the resume tests."""
    with open_data(facesets, config(batch_size=8)) as data:
        return take(data, 6)


# ----------------------------------------------------------------------------- sample order

def test_each_epoch_is_a_fresh_permutation_of_the_training_faces(facesets):
    with open_data(facesets, config(batch_size=6, prefetch=0)) as data:
        train = data.info["src"]["train"]
        drawn = ids(take(data, 12))  # 72 samples: 2 epochs of 36 training faces
        state = data.state()
    epochs = drawn[:train], drawn[train:2 * train]
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(train))
    assert not np.array_equal(epochs[0], epochs[1])
    assert state["src"] == {"samples": 72, "epoch": 2, "train_faces": train}


def test_seed_and_side_choose_the_order():
    members = np.arange(50)
    orders = [make_sampler(members, seed, side).take(0, 50) for seed, side in ((0, 0), (0, 1), (1, 0))]
    assert all(not np.array_equal(a, b) for a, b in [(orders[0], orders[1]), (orders[0], orders[2])])
    np.testing.assert_array_equal(make_sampler(members, 0, 0).take(0, 50), orders[0])


def test_resume_continues_exactly(facesets, uninterrupted):
    with open_data(facesets, config(batch_size=8)) as data:
        take(data, 2)
        state = json.loads(json.dumps(data.state()))  # what a checkpoint stores
    with open_data(facesets, config(batch_size=8)) as data:
        data.restore(state)
        resumed = take(data, 4)
    for got, want in zip(resumed, uninterrupted[2:]):
        for side in ("src", "dst"):
            for key in KEYS:
                np.testing.assert_array_equal(got[side][key], want[side][key], err_msg=f"{side}/{key}")


@pytest.mark.parametrize("budget_mb", [64, 0], ids=["resident", "streamed"])
def test_a_new_batch_size_continues_the_same_sample_stream(facesets, uninterrupted, budget_mb):
    with open_data(facesets, config(batch_size=8, budget_mb=budget_mb)) as data:
        take(data, 3)  # 24 samples per side
        state = data.state()
    with open_data(facesets, config(batch_size=12, budget_mb=budget_mb)) as data:
        data.restore(state)
        resumed = take(data, 2)
        assert data.state()["src"]["samples"] == 48
        data.restore(state)  # rewinding also discards what the prefetcher read ahead
        again = take(data, 1)
    for side in ("src", "dst"):
        np.testing.assert_array_equal(ids(resumed, side), ids(uninterrupted, side)[24:48])
        np.testing.assert_array_equal(ids(again, side), ids(resumed, side)[:12])


# ----------------------------------------------------------------------------- contents

def test_resident_and_streamed_give_identical_batches(facesets):
    with open_data(facesets, config(budget_mb=64)) as resident, \
            open_data(facesets, config(budget_mb=0)) as streamed:
        assert {s["mode"] for s in resident.info.values()} == {"resident"}
        assert {s["mode"] for s in streamed.info.values()} == {"streamed"}
        a, b = take(resident, 11), take(streamed, 11)  # crosses an epoch boundary
        va, vb = to_host(resident.validation_batch(4)), to_host(streamed.validation_batch(4))
    for got, want in zip(a + [va], b + [vb]):
        for side in ("src", "dst"):
            for key in KEYS:
                np.testing.assert_array_equal(got[side][key], want[side][key], err_msg=f"{side}/{key}")


def test_one_faceset_resident_the_other_streamed(facesets):
    # src needs 0.78 MiB on the device, dst 0.26 MiB: 1 MiB holds src, dst gets the 0.22 left.
    with open_data(facesets, config(budget_mb=1)) as data:
        assert (data.info["src"]["mode"], data.info["dst"]["mode"]) == ("resident", "streamed")
        assert (data.info["src"]["device_bytes"], data.info["dst"]["device_bytes"]) == (
            SRC_FACES * (64 * 64 * 5 + 24), 0)


def test_batches_hold_the_written_faces_masks_and_xseg_masks(facesets):
    with open_data(facesets, config()) as data:
        batch = to_host(data.next_batch())
    for side, mask_array in (("src", "masks"), ("dst", "xseg_masks")):
        records, got = facesets[side][1], batch[side]
        picked = got["sample_ids"]
        assert got["sample_ids"].dtype == np.int32 and got["base_matrices"].dtype == np.float32
        np.testing.assert_array_equal(got["faces"], records["faces"][picked])
        np.testing.assert_array_equal(got["masks"], records[mask_array][picked])
        np.testing.assert_array_equal(got["eyes_mouth_masks"], records["eyes_mouth_masks"][picked])


def test_base_matrices_map_stored_landmarks_onto_the_model_crop(facesets):
    """Faceset landmarks through base_matrices == frame landmarks through the model's own crop."""
    with open_data(facesets, config(batch_size=SRC_FACES, prefetch=0)) as data:
        batch = to_host(data.next_batch())
    for side in ("src", "dst"):
        records, got = facesets[side][1], batch[side]
        for i, matrix in zip(got["sample_ids"], got["base_matrices"].astype(np.float64)):
            mapped = transform_points(records["landmarks"][i], matrix)
            frame = records["source_landmarks"][i]
            want = transform_points(frame, image_to_face_matrix(frame, RESOLUTION, MODEL_TYPE))
            np.testing.assert_allclose(mapped, want, atol=1e-4, rtol=0)


def test_same_type_and_size_gives_the_identity(facesets):
    path, _ = facesets["dst"]
    cfg = config()
    with TrainData(path, path, cfg, parallel.make_mesh(cfg.mesh), FaceType.FULL, 48, 0) as data:
        matrices = np.asarray(data.next_batch()["dst"]["base_matrices"], np.float64)
    np.testing.assert_allclose(matrices, np.broadcast_to(np.eye(2, 3), matrices.shape), atol=1e-4)


# ----------------------------------------------------------------------------- uniform yaw

def reference_yaw_bins(yaw: np.ndarray) -> np.ndarray:
    """128 equal bins over [-1.2, 1.2] via np.digitize; beyond the range into the end bins."""
    edges = np.linspace(-1.2, 1.2, 129)
    return np.clip(np.digitize(yaw, edges[1:-1]), 0, 127)


def test_uniform_yaw_draws_every_occupied_bin_equally_often():
    rng = np.random.default_rng(3)
    # 1 to 12 faces in 20 random inner bins, plus faces beyond +-1.2 rad for the end bins.
    centres = -1.2 + (rng.choice(np.arange(1, 127), 20, replace=False) + 0.5) * 2.4 / 128
    sizes = rng.choice([1, 2, 3, 4, 6, 12], 20)
    yaw = np.concatenate([np.repeat(centres, sizes), [-1.5, -1.3, 1.25]])
    members = np.arange(100, 100 + len(yaw))
    bins = reference_yaw_bins(yaw)
    occupied = np.unique(bins)
    assert len(occupied) == 22
    rounds = 24  # a multiple of every bin size: whole shuffled epochs inside each bin
    drawn = make_sampler(members, 5, 0, yaw).take(0, rounds * len(occupied))
    counts = np.bincount(bins[drawn - 100], minlength=128)
    np.testing.assert_array_equal(counts[occupied], rounds)
    assert counts.sum() == rounds * len(occupied)
    for b in occupied:  # inside a bin: whole shuffled epochs, every member equally often
        per_member = np.bincount(drawn[bins[drawn - 100] == b] - 100, minlength=len(yaw))[bins == b]
        assert per_member.min() == per_member.max()


def test_uniform_yaw_in_train_data_uses_the_stored_pose(facesets):
    path, records = facesets["src"]
    cfg = config(batch_size=8, uniform_yaw=True)
    with open_data(facesets, cfg) as data:
        train = data.info["src"]["train"]
        bins = reference_yaw_bins(records["pose"][:train, 1].astype(np.float64))
        occupied = len(np.unique(bins))
        drawn = ids(take(data, occupied))  # 8 rounds over the occupied bins
    counts = np.bincount(bins[drawn], minlength=128)
    assert set(counts[counts > 0]) == {8} and (counts > 0).sum() == occupied


# ----------------------------------------------------------------------------- validation

def test_validation_is_held_out_and_fixed(facesets):
    with open_data(facesets, config(batch_size=8)) as data:
        info = data.info
        trained = {side: ids(take(data, 12), side) for side in ("src", "dst")}  # >2 epochs
        first, again = to_host(data.validation_batch(8)), to_host(data.validation_batch(8))
    for side, n in (("src", SRC_FACES), ("dst", DST_FACES)):
        held = int(np.ceil(0.1 * n))
        assert (info[side]["train"], info[side]["validation"]) == (n - held, held)
        validation = np.arange(n - held, n)
        assert not np.isin(trained[side], validation).any()
        assert set(trained[side]) == set(range(n - held))
        np.testing.assert_array_equal(first[side]["sample_ids"], np.resize(validation, 8))
        np.testing.assert_array_equal(first[side]["faces"], again[side]["faces"])


# ----------------------------------------------------------------------------- bad input

def test_bad_input_is_a_one_line_user_error(facesets, tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(UserError, match="junk"):
        TrainData(str(tmp_path / "junk"), facesets["dst"][0], config(), parallel.make_mesh(config().mesh),
                  MODEL_TYPE, RESOLUTION, 0)
    empty = str(tmp_path / "empty")
    FacesetWriter(empty, size=8, face_type=FaceType.FULL, producer={"program": "t"}).close()
    with pytest.raises(UserError, match=r"empty: the faceset holds no faces"):
        open_data({"src": facesets["src"], "dst": (empty, None)}, config())
    faces_only = str(tmp_path / "faces_only")
    with FacesetWriter(faces_only, size=8, face_type=FaceType.FULL, producer={"program": "t"},
                       arrays=["faces"]) as writer:
        writer.add_frame(writer.add_source({"sha256": "1" * 64}), 0,
                         {"faces": np.zeros((1, 8, 8, 3), np.uint8)})
    with pytest.raises(UserError, match=r"faces_only: the faceset lacks the arrays \['masks', "):
        open_data({"src": (faces_only, None), "dst": facesets["dst"]}, config())
    no_pose = str(tmp_path / "no_pose")
    records = facesets["dst"][1]
    arrays = ["faces", "masks", "eyes_mouth_masks", "landmarks"]
    with FacesetWriter(no_pose, size=48, face_type=FaceType.FULL, producer={"program": "t"},
                       arrays=arrays) as writer:
        writer.add_frame(writer.add_source({"sha256": "2" * 64}), 0,
                         {name: records[name][:2] for name in arrays})
    with pytest.raises(UserError, match="no_pose: uniform_yaw needs the faceset's 'pose' array"):
        open_data({"src": facesets["src"], "dst": (no_pose, None)}, config(uniform_yaw=True))
    for bad in (dict(batch_size=0), dict(prefetch=-1)):
        with pytest.raises(UserError, match="config"):
            open_data(facesets, config(**bad))
    with pytest.raises(UserError, match="seed=-1: must be >= 0"):
        open_data(facesets, config(), seed=-1)


def test_the_prefetcher_reads_ahead_on_background_threads():
    gate, started = threading.Event(), []

    def produce(position: int) -> tuple[int, str]:
        started.append(position)
        if position:
            gate.wait(5)
        return position, threading.current_thread().name

    prefetcher = Prefetcher(produce, stride=4, depth=2, name="test-read")
    try:
        assert prefetcher.get(0) == (0, "test-read_0")
        deadline = time.monotonic() + 5
        while len(started) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(started) == [0, 4, 8]  # two batches in flight while the consumer works
        gate.set()
        assert prefetcher.get(4)[0] == 4 and prefetcher.get(8)[0] == 8
        assert prefetcher.get(100)[0] == 100  # a jump (restore) discards what was in flight
        assert prefetcher.get(104)[1].startswith("test-read")
    finally:
        prefetcher.close()


# ----------------------------------------------------------------------------- 4 devices

FOUR_DEVICES = textwrap.dedent("""
    import json, sys
    import numpy as np
    import jax
    from configs.saehd import get_config
    from engine import parallel
    from engine.data import TrainData
    from preprocessing.errors import UserError
    from preprocessing.face_types import FaceType

    src, dst, out = sys.argv[1:4]
    assert jax.device_count() == 4
    report = {"batches": {}}
    for budget in (64, 0):
        for data_axis, fsdp in ((-1, 1), (2, 2)):
            cfg = get_config("tiny")
            cfg.train.batch_size, cfg.data.device_budget_mb, cfg.data.validation_fraction = 8, budget, 0.1
            cfg.mesh.data, cfg.mesh.fsdp = data_axis, fsdp
            mesh = parallel.make_mesh(cfg.mesh)
            with TrainData(src, dst, cfg, mesh, FaceType.FULL, 32, 7) as data:
                mode = data.info["src"]["mode"]
                batch = data.next_batch()
            want = parallel.batch_sharding(mesh)
            for side, arrays in batch.items():
                for key, value in arrays.items():
                    report["batches"][f"{mode}/{data_axis},{fsdp}/{side}/{key}"] = {
                        "equivalent": value.sharding.is_equivalent_to(want, value.ndim),
                        "rows": sorted([int(s.index[0].start), int(s.index[0].stop)]
                                       for s in value.addressable_shards),
                        "devices": len({s.device for s in value.addressable_shards}),
                        "values": np.asarray(value).tolist() if key == "sample_ids" else
                                  float(np.asarray(value, np.float64).sum()),
                    }
    cfg = get_config("tiny")
    cfg.train.batch_size = 6
    try:
        TrainData(src, dst, cfg, parallel.make_mesh(cfg.mesh), FaceType.FULL, 32, 7)
    except UserError as e:
        report["error"] = str(e)
    json.dump(report, open(out, "w"))
""")


@pytest.fixture(scope="module")
def four_devices(facesets, tmp_path_factory):
    out = tmp_path_factory.mktemp("four") / "report.json"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", FOUR_DEVICES, facesets["src"][0], facesets["dst"][0], str(out)],
                   cwd=REPO, env=env, check=True, timeout=300)
    return json.loads(out.read_text())


def test_batches_are_split_over_four_devices(four_devices, facesets):
    cfg = config(batch_size=8)
    with open_data(facesets, cfg) as data:  # one device: the reference values
        one = to_host(data.next_batch())
    batches = four_devices["batches"]
    assert len(batches) == 2 * 2 * 2 * len(KEYS)
    for name, got in batches.items():
        mode, mesh, side, key = name.split("/")
        assert got["equivalent"], name
        assert got["devices"] == 4 and got["rows"] == [[0, 2], [2, 4], [4, 6], [6, 8]], name
        if key == "sample_ids":
            assert got["values"] == one[side][key].tolist(), name
        else:
            assert got["values"] == pytest.approx(one[side][key].astype(np.float64).sum(), rel=1e-6), name


def test_a_batch_that_does_not_divide_over_the_devices_is_refused(four_devices):
    assert four_devices["error"].startswith("config train.batch_size=6: must be a positive multiple of "
                                            "the 4 devices")
    assert "use 8" in four_devices["error"]


# ----------------------------------------------------------------------------- 2 processes

TWO_PROCESSES = textwrap.dedent("""
    import json, sys
    import jax
    pid, port, src, dst, out = int(sys.argv[1]), sys.argv[2], *sys.argv[3:6]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    import numpy as np
    from configs.saehd import get_config
    from engine import parallel
    from engine.data import TrainData
    from preprocessing.face_types import FaceType
    from preprocessing.faceset import Faceset

    reads = []  # the face indices this process asks its facesets for, per read
    plain_read_many = Faceset.read_many
    def read_many(self, names, indices):
        reads.append([self.path, np.asarray(indices).tolist()])
        return plain_read_many(self, names, indices)
    Faceset.read_many = read_many

    report = {"process": jax.process_index(), "devices": [jax.device_count(), jax.local_device_count()]}
    for budget in (64, 0):
        cfg = get_config("tiny")
        cfg.train.batch_size, cfg.data.device_budget_mb, cfg.data.validation_fraction = 8, budget, 0.1
        cfg.data.prefetch = 0  # reads happen in order, one per batch and side
        mesh = parallel.make_mesh(cfg.mesh)
        everywhere = jax.jit(lambda x: x, out_shardings=parallel.replicated(mesh))
        with TrainData(src, dst, cfg, mesh, FaceType.FULL, 32, 7) as data:
            mode = data.info["src"]["mode"]
            reads.clear()
            batches = [data.next_batch() for _ in range(2)]
            report[mode] = {
                "reads": list(reads),
                "sample_ids": {side: [np.asarray(everywhere(b[side]["sample_ids"])).tolist() for b in batches]
                               for side in ("src", "dst")},
                "faces_sum": {side: [float(np.asarray(everywhere(b[side]["faces"]), np.float64).sum())
                                     for b in batches] for side in ("src", "dst")},
            }
    json.dump(report, open(out, "w"))
    jax.distributed.shutdown()
""")


@pytest.fixture(scope="module")
def two_processes(facesets, tmp_path_factory):
    """Two JAX processes with 2 CPU devices each (gloo collectives): one 4-device mesh."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tmp_path_factory.mktemp("two")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESSES, str(pid), str(port),
                               facesets["src"][0], facesets["dst"][0], str(folder / f"{pid}.json")],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for pid in (0, 1)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
    return [json.loads((folder / f"{pid}.json").read_text()) for pid in (0, 1)]


def test_each_process_reads_only_its_own_rows(two_processes, facesets):
    with open_data(facesets, config(batch_size=8)) as data:  # one process: the reference
        one = take(data, 2)
    for report in two_processes:
        pid = report["process"]
        assert report["devices"] == [4, 2]
        assert report["resident"]["reads"] == []  # resident facesets were read at load only
        mine = slice(4 * pid, 4 * pid + 4)
        want_reads = [[facesets[side][0], one[k][side]["sample_ids"][mine].tolist()]
                      for k in range(2) for side in ("src", "dst")]
        assert report["streamed"]["reads"] == want_reads
        for mode in ("resident", "streamed"):
            for side in ("src", "dst"):
                assert report[mode]["sample_ids"][side] == [b[side]["sample_ids"].tolist() for b in one]
                assert report[mode]["faces_sum"][side] == [float(b[side]["faces"].astype(np.float64).sum())
                                                           for b in one]
