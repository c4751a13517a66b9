"""`python -m engine.dataset_export` on a real swap made by the project's own merge.

A 12-frame astronaut clip is extracted, a tiny model is trained on it for two steps, and the merge
(mask_mode dst: the landmark hull, so the mask does not depend on the barely trained network)
writes the fake and its lossy mask video from a faceset lacking frames 0-2, so those frames stay
real. The same merge also writes its alpha losslessly as PNGs: the reference for masks and labels.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from engine.merge.options import from_config
from configs.merge import get_config as merge_config
from configs.saehd import get_config as saehd_config
from engine.dataset.export import export, parse_crfs
from engine.dataset.pairs import load_pairs
from engine.dataset.splits import assign_splits, parse_fractions
from engine.merge.run import MergeJob
from engine.trainer import Trainer
from preprocessing import samples, video
from preprocessing.errors import UserError
from preprocessing.faceset import Faceset
from preprocessing.faceset.subset import write_subset
from preprocessing.images import list_images, read_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES, FACELESS = 12, 3
TIMEOUT = 300
FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


@pytest.fixture(scope="module")
def swap(tmp_path_factory):
    root = tmp_path_factory.mktemp("swap")
    clip = samples.make_astronaut_clip(str(root / "real.mp4"), frames=FRAMES)
    faces = str(root / "faces")
    proc = subprocess.run([sys.executable, "-m", "preprocessing.extract", f"--input={clip}", f"--output={faces}",
                           "--size=64", "--face_type=whole_face"], cwd=REPO, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    fs = Faceset.open(faces)
    subset = str(root / "faces_late")
    write_subset(fs, np.nonzero(fs.read_range("frame_index", 0, fs.count) >= FACELESS)[0], subset,
                 producer={"tool": "test"}, progress=False)
    cfg = saehd_config("tiny")
    cfg.train.max_steps = 2
    cfg.checkpoint.every_minutes = 0.0
    cfg.checkpoint.every_steps = 2
    trainer = Trainer(cfg, faces, faces, str(root / "model"), progress=False)
    try:
        trainer.run()
    finally:
        trainer.close()
    merge = merge_config("overlay")
    merge.mask_mode = "dst"
    options = from_config(merge)
    for out, mask in (("fake.mp4", "mask.mp4"), ("fake_png", "alpha_png")):
        MergeJob(workdir=str(root / "model"), input_path=clip, faceset=subset, output=str(root / out),
                 options=options, mask_output=str(root / mask), chunk_frames=FRAMES).run(progress=False)
    alpha = np.stack([read_image(p)[..., 0] for p in list_images(str(root / "alpha_png"))])
    pairs = root / "pairs.json"
    pairs.write_text(json.dumps([{"fake": "fake.mp4", "mask": "mask.mp4", "identity_src": "alice",
                                  "identity_dst": "astronaut"}]))
    return dict(root=root, clip=clip, pairs=str(pairs), alpha=alpha)


@pytest.fixture(scope="module")
def exported(swap):
    """The same data set exported twice: through the CLI pinned to one CPU, and through `export` on
    all of them (ffmpeg sizes its thread pool by the CPUs it may use, which changes x264's output
    unless the thread count is fixed)."""
    first, second = swap["root"] / "ds_cli", swap["root"] / "ds_api"
    one_cpu = str(min(os.sched_getaffinity(0)))
    proc = subprocess.run(["taskset", "-c", one_cpu, sys.executable, "-m", "engine.dataset_export",
                           f"--pairs={swap['pairs']}", f"--output={first}", "--crf=23,40", "--split=0.7,0.15,0.15",
                           "--seed=0"], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    export(load_pairs(swap["pairs"]), str(second), crfs=[23, 40], fractions=FRACTIONS, seed=0)
    return first, second


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def test_export_twice_gives_the_same_bytes_and_the_manifest_hashes_every_file(exported):
    first, second = exported
    assert (first / "manifest.json").read_bytes() == (second / "manifest.json").read_bytes()
    manifest = json.loads((first / "manifest.json").read_text())
    on_disk = sorted(os.path.relpath(os.path.join(d, n), first) for d, _, ns in os.walk(first) for n in ns)
    assert on_disk == sorted([*manifest["files"], "manifest.json"])
    assert len(on_disk) == 1 + 2 * 2 + 1  # manifest, real and fake at c23 and c40, one mask
    for rel, entry in manifest["files"].items():
        assert _sha(first / rel) == entry["sha256"] == _sha(second / rel)
        assert os.path.getsize(first / rel) == entry["bytes"]


def test_labels_identities_provenance_and_compression_variants(swap, exported):
    root, manifest = exported[0], json.loads((exported[0] / "manifest.json").read_text())
    clips = {c["id"]: c for c in manifest["clips"]}
    fake, real = clips["fake_0000"], clips["real_0000"]
    # frame labels against the merge's own lossless alpha: fake where any pixel reaches 0.5
    expected = "".join("1" if (a >= 128).any() else "0" for a in swap["alpha"])
    assert expected == "0" * FACELESS + "1" * (FRAMES - FACELESS)
    assert fake["frame_labels"] == expected and fake["label"] == 1 and fake["fake_frames"] == FRAMES - FACELESS
    assert real["frame_labels"] == "0" * FRAMES and real["label"] == 0 and real["mask"] is None
    assert (fake["identity_src"], fake["identity_dst"], real["identity"]) == ("alice", "astronaut", "astronaut")
    assert fake["real"] == "real_0000"
    sidecar = json.loads(open(swap["root"] / "fake.mp4.provenance.json").read())
    assert fake["provenance"] == sidecar and fake["provenance"]["merge_options"]["mask_mode"] == "dst"
    assert real["source"]["sha256"] == _sha(swap["clip"])
    # each variant keeps every frame; crf 40 is smaller and further from the source than crf 23
    originals = [f.image for f in video.read_frames(swap["clip"])]
    quality = {}
    for name in ("c23", "c40"):
        path = root / real["videos"][name]
        decoded = [f.image for f in video.read_frames(str(path))]
        assert len(decoded) == FRAMES and video.probe(str(path)).frame_count == FRAMES
        quality[name] = (os.path.getsize(path), np.mean([_psnr(a, b) for a, b in zip(decoded, originals)]))
    # PSNR of an H.264 re-encode of this clip: crf 23 stays above 30 dB (colours kept), crf 40 loses more
    assert quality["c23"][1] > 30.0 and quality["c40"][1] < quality["c23"][1] - 2.0
    assert quality["c40"][0] < quality["c23"][0]


def test_masks_line_up_with_the_merge_programs_own_mask(swap, exported):
    manifest = json.loads((exported[0] / "manifest.json").read_text())
    fake = next(c for c in manifest["clips"] if c["kind"] == "fake")
    masks = np.stack([f.image for f in video.read_frames(str(exported[0] / fake["mask"]))])
    assert masks.shape == (FRAMES, *swap["alpha"].shape[1:], 3)
    assert set(np.unique(masks)) <= {0, 255} and (masks == masks[..., :1]).all()  # lossless binary
    got = masks[..., 0] == 255
    for reference in (swap["alpha"] >= 128,  # the merge's exact alpha (PNG)
                      np.stack([f.image.astype(np.float64).mean(-1) >= 127.5
                                for f in video.read_frames(str(swap["root"] / "mask.mp4"))])):  # its mask video
        iou = (got & reference).sum() / (got | reference).sum()
        assert iou >= 0.9, iou  # the bar; the lossy mask video shifts only edge pixels
    assert got.reshape(FRAMES, -1).any(axis=1).tolist() == [c == "1" for c in fake["frame_labels"]]


def test_a_png_mask_folder_is_binarised_exactly(swap, tmp_path):
    """The merge's --mask_output can be a PNG folder (lossless): the exported mask is then exactly alpha >= 0.5."""
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"fake": str(swap["root"] / "fake.mp4"), "mask": str(swap["root"] / "alpha_png"),
                                  "identity_src": "alice", "identity_dst": "astronaut"}]))
    manifest = export(load_pairs(str(pairs)), str(tmp_path / "ds"), crfs=[40], fractions=FRACTIONS)
    fake = next(c for c in manifest["clips"] if c["kind"] == "fake")
    masks = np.stack([f.image[..., 0] for f in video.read_frames(str(tmp_path / "ds" / fake["mask"]))])
    np.testing.assert_array_equal(masks == 255, swap["alpha"] / 255.0 >= 0.5)


def test_splits_keep_every_identity_in_one_split(exported):
    manifest = json.loads((exported[0] / "manifest.json").read_text())
    seen = [n for s in manifest["splits"].values() for n in s["identities"]]
    assert sorted(seen) == ["alice", "astronaut"]
    split_of = {n: name for name, s in manifest["splits"].items() for n in s["identities"]}
    for clip in manifest["clips"]:
        names = [clip["identity"]] if clip["kind"] == "real" else [clip["identity_src"], clip["identity_dst"]]
        assert {split_of[n] for n in names} == {clip["split"]}
        assert clip["id"] in manifest["splits"][clip["split"]]["clips"]


def test_assign_splits_by_identity_groups():
    """60 clips among 30 people in groups of 3 (each swapped with the next in its group)."""
    people = [f"p{i:02d}" for i in range(30)]
    links = [(people[i], people[i - i % 3 + (i + 1) % 3]) for i in range(30)] * 2
    split_of = assign_splits(links, FRACTIONS, seed=1)
    assert sorted(split_of) == people
    assert all(split_of[a] == split_of[b] for a, b in links)
    for name, fraction in FRACTIONS.items():
        clips = sum(split_of[a] == name for a, _ in links)
        assert abs(clips - fraction * len(links)) <= 6  # within one group (3 people x 2 clips)
    assert assign_splits(links, FRACTIONS, seed=1) == split_of
    assert any(assign_splits(links, FRACTIONS, seed=s) != split_of for s in range(2, 5))
    only = assign_splits(links, {"train": 0.5, "val": 0.5, "test": 0.0}, seed=0)
    assert "test" not in only.values()


def test_bad_inputs_get_clear_errors(swap, tmp_path):
    root = swap["root"]

    def refused(entry: dict, match: str) -> None:
        path = tmp_path / "pairs.json"
        path.write_text(json.dumps([dict({"fake": str(root / "fake.mp4"), "mask": str(root / "mask.mp4"),
                                          "identity_src": "alice", "identity_dst": "astronaut"}, **entry)]))
        with pytest.raises(UserError, match=match):
            export(load_pairs(str(path)), str(tmp_path / "out"), crfs=[23], fractions=FRACTIONS)
        assert not os.path.exists(tmp_path / "out") and not [n for n in os.listdir(tmp_path) if "partial" in n]

    alpha = swap["alpha"]
    short = video.write_video(str(tmp_path / "short.mp4"), (np.repeat(a[..., None], 3, 2) for a in alpha[:10]), 30)
    assert short == 10
    video.write_video(str(tmp_path / "empty.mp4"), (np.zeros((*a.shape, 3), np.uint8) for a in alpha), 30)
    other = samples.make_astronaut_clip(str(tmp_path / "other.mp4"), frames=FRAMES, seed=3)
    refused({"fake": str(tmp_path / "missing.mp4")}, "missing.mp4: no such file")
    refused({"mask": str(tmp_path / "short.mp4")}, "has 12 frames but its mask .*short.mp4 has 10")
    refused({"mask": str(tmp_path / "empty.mp4")}, "shows no swapped face in any frame")
    refused({"real": other}, "was not made from .*other.mp4")
    refused({"identity_src": ""}, "missing identity_src")
    refused({"identity": "x"}, "unknown keys identity")
    refused({"fake": swap["clip"]}, "no provenance sidecar")
    with pytest.raises(UserError, match="three fractions"):
        parse_fractions("0.5,0.5,0.5")
    with pytest.raises(UserError, match="distinct crf values in 0..51"):
        parse_crfs("23,99")
    proc = subprocess.run([sys.executable, "-m", "engine.dataset_export", f"--pairs={swap['pairs']}",
                           f"--output={root}"], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "exists and is not an empty folder" in proc.stderr
