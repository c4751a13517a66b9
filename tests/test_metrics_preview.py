"""engine.metrics and engine.preview: what lands on disk, read back with independent readers.

metrics.jsonl is read with the json module; the TensorBoard event files are parsed record by
record (TFRecord framing: u64 length, u32 crc, payload, u32 crc) into tensorboardX's Event proto,
since TensorBoard's own reader is not installed. The preview PNG is decoded with OpenCV and each
tile compared with the float64 reference round(255 * clip(x, 0, 1)).
"""
from __future__ import annotations

import glob
import json
import os
import struct

import cv2
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto.event_pb2 import Event

from engine.metrics import MetricsWriter
from engine.preview import write_preview_grid


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def read_events(tb_dir):
    """All Event protos of all event files in `tb_dir`, in file-name (creation) order."""
    events = []
    for path in sorted(glob.glob(os.path.join(tb_dir, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            payload = data[pos + 12: pos + 12 + length]
            assert len(payload) == length, f"{path}: truncated record"
            events.append(Event.FromString(payload))
            pos += 12 + length + 4
    return events


def scalars(events):
    return {(v.tag, e.step): v.simple_value for e in events for v in e.summary.value}


def test_jsonl_and_tensorboard_hold_the_values(tmp_path):
    mw = MetricsWriter(tmp_path)
    mw.write(10, {"loss/src": 0.5, "loss/dst": np.float32(0.25),
                  "samples_per_s": jnp.float32(123.5)})
    mw.write(20, {"loss/src": 0.125, "loss/dst": 1e-3, "samples_per_s": 130.0})
    mw.write(30, {"loss/src": float("nan"), "loss/dst": 2.0 / 3.0, "samples_per_s": 131.0})
    mw.close()
    mw.close()  # a second close is harmless

    lines = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in lines] == [10, 20, 30]
    assert all(isinstance(r["time"], float) for r in lines)
    assert lines[0]["loss/src"] == 0.5 and lines[0]["loss/dst"] == 0.25
    assert lines[0]["samples_per_s"] == 123.5
    assert lines[1]["loss/dst"] == 1e-3 and lines[2]["loss/dst"] == 2.0 / 3.0  # exact in JSON
    assert lines[2]["loss/src"] is None  # NaN -> null: still strict JSON
    with open(tmp_path / "metrics.jsonl", encoding="utf-8") as f:
        assert "NaN" not in f.read()

    got = scalars(read_events(tmp_path / "tb"))
    want = {(k, r["step"]): v for r in lines for k, v in r.items()
            if k not in ("step", "time") and v is not None}
    assert got.keys() == want.keys()  # the NaN is left out of TensorBoard
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-7), key  # stored as float32


def test_resume_drops_records_after_the_checkpoint(tmp_path):
    mw = MetricsWriter(tmp_path)
    for step in range(10, 60, 10):
        mw.write(step, {"loss": float(step)})
    mw.close()
    mw = MetricsWriter(tmp_path, resume_step=30)  # the crash lost steps 31..50
    mw.write(40, {"loss": -1.0})
    mw.close()

    lines = read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in lines] == [
        (10, 10.0), (20, 20.0), (30, 30.0), (40, -1.0)]
    events = read_events(tmp_path / "tb")
    starts = [e.step for e in events if e.HasField("session_log") and e.session_log.status == 1]
    assert starts == [31]  # TensorBoard's purge marker: events of the old run at >= 31 are dropped
    assert scalars(events)[("loss", 40)] == -1.0


def test_non_main_process_writes_nothing(tmp_path):
    mw = MetricsWriter(tmp_path / "run", is_main_process=False)
    mw.write(1, {"loss": 1.0})
    mw.close()
    assert not os.path.exists(tmp_path / "run")


# ---- preview ----------------------------------------------------------------------------------

RES = 16


@pytest.fixture(scope="module")
def batches():
    """Five different float batches of 6 samples; one has values outside [0, 1] to be clipped."""
    rng = np.random.default_rng(0)
    cols = [rng.random((6, RES, RES, 3), dtype=np.float32) for _ in range(5)]
    cols[4] = cols[4] * 1.4 - 0.2
    return cols


def expected_tile(image):
    return np.round(np.clip(image.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def read_png_rgb(path):
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def test_preview_grid_layout_and_pixels(tmp_path, batches):
    path = tmp_path / "sub" / "preview.png"
    write_preview_grid(path, *batches)
    grid = read_png_rgb(path)
    assert grid.shape == (4 * RES, 5 * RES, 3)  # max_rows=4 of 6 samples, 5 columns
    for row in range(4):
        for col in range(5):
            tile = grid[row * RES:(row + 1) * RES, col * RES:(col + 1) * RES]
            np.testing.assert_array_equal(tile, expected_tile(batches[col][row]),
                                          err_msg=f"row {row}, column {col}")
    assert not os.path.exists(str(path) + ".tmp")


def test_preview_with_fewer_samples_than_rows(tmp_path, batches):
    path = tmp_path / "preview.png"
    write_preview_grid(path, *[b[:2] for b in batches], max_rows=4)
    grid = read_png_rgb(path)
    assert grid.shape == (2 * RES, 5 * RES, 3)
    np.testing.assert_array_equal(grid[RES:, 3 * RES:4 * RES], expected_tile(batches[3][1]))


def test_preview_masked_block(tmp_path, batches):
    rng = np.random.default_rng(1)
    masks = [rng.random((6, RES, RES, 1), dtype=np.float32) for _ in range(5)]
    path = tmp_path / "preview.png"
    write_preview_grid(path, *batches, masks=masks, max_rows=3)
    grid = read_png_rgb(path)
    assert grid.shape == (2 * 3 * RES, 5 * RES, 3)
    for row in range(3):
        for col in range(5):
            top = grid[row * RES:(row + 1) * RES, col * RES:(col + 1) * RES]
            bottom = grid[(3 + row) * RES:(4 + row) * RES, col * RES:(col + 1) * RES]
            np.testing.assert_array_equal(top, expected_tile(batches[col][row]))
            want = expected_tile(batches[col][row].astype(np.float64) * masks[col][row])
            # float32 product vs the float64 reference: a rounding tie may land one level apart
            assert np.abs(bottom.astype(int) - want).max() <= 1
            assert np.mean(bottom == want) > 0.99

    # One [N,H,W] mask serves every column.
    write_preview_grid(path, *batches, masks=masks[0][..., 0], max_rows=1)
    grid = read_png_rgb(path)
    assert grid.shape == (2 * RES, 5 * RES, 3)
    want = expected_tile(batches[2][0].astype(np.float64) * masks[0][0])
    assert np.abs(grid[RES:, 2 * RES:3 * RES].astype(int) - want).max() <= 1


def test_preview_rejects_mismatched_shapes(tmp_path, batches):
    with pytest.raises(ValueError, match=r"\[N,H,W,3\]"):
        write_preview_grid(tmp_path / "p.png", *batches[:4], batches[4][:, :8])
    assert not os.path.exists(tmp_path / "p.png")
