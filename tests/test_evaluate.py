"""engine.evaluate: swap-quality metrics on the sample media (carphone clip, astronaut clip).

Swaps are simulated with known answers: a video against itself (a perfect self-swap), against a
copy rotated by 10 degrees (pose), a blurred copy (pixel quality), and the other identity's
faceset as src or dst (identity).
"""
from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import skimage.color
import skimage.data
import skimage.transform
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from engine.evaluation.pipeline import EvalOptions, evaluate_videos
from engine.evaluation import geometry_metrics as geo
from engine.evaluation import quality
from engine.evaluation.identity import cosine_similarity
from engine.evaluation.report import to_json_safe
from preprocessing.errors import UserError
from preprocessing.samples import carphone_path, make_astronaut_clip
from preprocessing.video import probe, read_frames, write_video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES = 30
ROTATION_DEG = 10.0


def _rotated(image: np.ndarray, degrees: float) -> np.ndarray:
    """Counter-clockwise rotation about the frame centre (cv2's positive angle)."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), degrees, 1.0)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def _extract(video: str, out: str) -> str:
    subprocess.run([sys.executable, "-m", "preprocessing.extract", f"--input={video}", f"--output={out}",
                    "--size=96", "--jobs=1"], cwd=REPO, check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, str]:
    """30-frame clips of both identities, variants with known damage, and one faceset each."""
    d = tmp_path_factory.mktemp("evaluate")
    fps = probe(carphone_path()).fps
    car = [f.image for f in itertools.islice(read_frames(carphone_path()), FRAMES)]
    paths = {"car": str(d / "car.mp4"), "ast": make_astronaut_clip(str(d / "ast.mp4"), frames=FRAMES),
             "car_rot": str(d / "car_rot.mp4"), "ast_blur": str(d / "ast_blur.mp4")}
    write_video(paths["car"], car, fps)
    write_video(paths["car_rot"], (_rotated(f, ROTATION_DEG) for f in car), fps)
    write_video(paths["ast_blur"], (cv2.GaussianBlur(f.image, (0, 0), 2.0) for f in read_frames(paths["ast"])), 30.0)
    paths["car_fs"] = _extract(paths["car"], str(d / "car_fs"))
    paths["ast_fs"] = _extract(paths["ast"], str(d / "ast_fs"))
    return paths


def test_self_swap_cli_report(media, tmp_path):
    """A video against itself: own identity beats the other, zero pose/expression error, SSIM 1,
    PSNR inf (written as "inf"), and identical temporal numbers for both videos."""
    report = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "engine.evaluate", f"--input={media['car']}", f"--output={media['car']}",
         f"--src={media['ast_fs']}", f"--report={report}", "--identity_every=2", "--noprogress"],
        cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"-> {report / 'metrics.json'}" in proc.stdout
    result = json.loads((report / "metrics.json").read_text())
    s = result["summary"]
    assert s["frames"] == FRAMES and s["detected_fraction"] == 1.0 and s["compared_frames"] == FRAMES
    ident = s["identity"]
    # Same face vs itself: cosine 1 (float32 network output, 1e-6); the astronaut is well below
    # (measured ~0.8; dlib's same-person threshold corresponds to ~0.9).
    assert ident["sim_dst"] == pytest.approx(1.0, abs=1e-6)
    assert ident["sim_src"] < 0.9 and ident["retrieval_accuracy"] == 0.0
    assert s["pose_error_deg"]["mean"] < 0.5  # identical landmarks: exactly 0 expected
    assert s["expression_error_iod"] < 1e-9
    assert s["ssim"] == pytest.approx(1.0, abs=1e-12) and s["psnr_db"] == "inf"
    assert s["landmark_jitter_iod"]["input"] == s["landmark_jitter_iod"]["output"] > 0
    assert s["colour_flicker_lab"]["input"] == s["colour_flicker_lab"]["output"] > 0
    assert len(result["frames"]) == FRAMES and result["frames"][0]["psnr_db"] == "inf"
    assert "public domain" in result["identity_model"]
    png = cv2.imread(str(report / "curves.png"))
    assert png is not None and png.shape[0] > 300


def test_rotation_raises_pose_error_and_identity_follows_src(media):
    """Output = the same person rotated 10 deg counter-clockwise: roll changes by -10 deg (roll > 0
    is clockwise), pitch and yaw barely; with src = that person's faceset and dst = the astronaut's,
    every embedded frame is retrieved as src."""
    result = evaluate_videos(media["car"], media["car_rot"], media["car_fs"], media["ast_fs"],
                             EvalOptions(identity_every=3))
    s = result["summary"]
    bias = s["pose_error_deg"]["bias"]
    # Tolerance 1.5 deg: both videos are H.264-coded separately and the 176x144 face is ~45 px wide,
    # so landmarks differ by ~1 px; exact geometry gives -10.
    assert bias["roll"] == pytest.approx(-ROTATION_DEG, abs=1.5)
    assert s["pose_error_deg"]["roll"] == pytest.approx(ROTATION_DEG, abs=1.5)
    assert abs(bias["pitch"]) < 3.0 and abs(bias["yaw"]) < 3.0
    assert s["expression_error_iod"] < 0.05  # rotation is factored out by the similarity fit
    ident = s["identity"]
    assert ident["embedded_frames"] == FRAMES // 3
    assert ident["sim_src"] > ident["sim_dst"] + 0.1 and ident["retrieval_accuracy"] == 1.0


def test_blur_lowers_ssim_psnr_and_identity_stays(media):
    """A blurred astronaut against the original: SSIM and PSNR drop but are finite; the face is
    still closer to its own faceset (dst) than to the carphone identity (src)."""
    result = evaluate_videos(media["ast"], media["ast_blur"], media["car_fs"], media["ast_fs"],
                             EvalOptions(identity_every=5))
    s = result["summary"]
    assert s["detected_fraction"] == 1.0
    assert 0.3 < s["ssim"] < 0.95  # measured ~0.8 for sigma 2 on the ~150 px face
    assert 20.0 < s["psnr_db"] < 40.0
    assert s["identity"]["sim_dst"] > s["identity"]["sim_src"] + 0.1
    assert s["identity"]["retrieval_accuracy"] == 0.0


def _face_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    face = cv2.resize(skimage.data.astronaut()[0:256, 128:384], (128, 128), interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(face, (0, 0), 1.5)
    mask = np.zeros((128, 128), bool)
    cv2.circle(mask.view(np.uint8), (64, 60), 40, 1, -1)
    return face, blurred, mask


def test_masked_pixel_metrics_match_references():
    face, blurred, mask = _face_pair()
    # SSIM: with the mask = all but skimage's 3 px border, the masked mean is skimage's mssim
    # (1e-9: same map, different summation order).
    inner = np.zeros_like(mask)
    inner[3:-3, 3:-3] = True
    expected = structural_similarity(face / 255.0, blurred / 255.0, channel_axis=-1, data_range=1.0)
    assert quality.masked_ssim(face, blurred, inner) == pytest.approx(expected, abs=1e-9)
    assert quality.masked_ssim(face, face, mask) == pytest.approx(1.0, abs=1e-12)
    # PSNR: skimage's on the masked pixels (1e-9 dB).
    psnr = quality.psnr_from_mse(quality.masked_mse(face, blurred, mask))
    assert psnr == pytest.approx(peak_signal_noise_ratio(face[mask], blurred[mask], data_range=255), abs=1e-9)
    assert math.isinf(quality.psnr_from_mse(quality.masked_mse(face, face, mask)))
    # Mean Lab: skimage's rgb2lab (float64) vs OpenCV's float32 conversion; 0.15 Lab units (the
    # two differ by ~0.09 in L: OpenCV's sRGB curve and white point constants are rounded).
    ref_lab = skimage.color.rgb2lab(face)[mask].mean(0)
    np.testing.assert_allclose(quality.mean_lab(face, mask), ref_lab, atol=0.15)


def test_temporal_metrics_against_closed_forms():
    # Colour flicker: mean step over consecutive finite pairs (NaN row skips both its pairs).
    labs = np.array([[50, 0, 0], [53, 4, 0], [np.nan] * 3, [60, 0, 0], [60, 0, 12]], float)
    assert quality.colour_flicker(labs) == pytest.approx((5.0 + 12.0) / 2, abs=1e-12)
    # Landmark jitter: constant velocity has no acceleration; an alternating +-d shift has
    # |l[t+1] - 2 l[t] + l[t-1]| = 4 d at every point; divided by the IOD.
    from preprocessing.pose import LANDMARKS_68_3D

    base = LANDMARKS_68_3D[:, :2] * 40.0 + 100.0
    t = np.arange(8)[:, None, None]
    moving = base + t * np.array([1.5, -0.5])
    assert geo.landmark_jitter(moving) < 1e-12
    d = 0.3
    shaky = moving + d * (-1.0) ** t * np.array([1.0, 0.0])
    iod = geo.inter_ocular_distance(base)
    assert geo.landmark_jitter(shaky) == pytest.approx(4 * d / iod, rel=1e-9)
    shaky[4] = np.nan  # three triples touch frame 4: skipped, the rest unchanged
    assert geo.landmark_jitter(shaky) == pytest.approx(4 * d / iod, rel=1e-9)
    assert math.isnan(geo.landmark_jitter(np.full((5, 68, 2), np.nan)))


def test_pose_and_expression_geometry():
    from preprocessing.pose import LANDMARKS_68_3D

    lm = LANDMARKS_68_3D[:, :2] * 30.0 + [88.0, 70.0]
    hw = (144, 176)
    # Rotating the frame about its centre (the principal point) rolls the face by exactly that
    # angle; 0.05 deg is solvePnP's convergence slack.
    m = cv2.getRotationMatrix2D((88.0, 72.0), ROTATION_DEG, 1.0)
    rotated = lm @ m[:, :2].T + m[:, 2]
    delta = geo.head_pose_degrees(rotated, hw) - geo.head_pose_degrees(lm, hw)
    np.testing.assert_allclose(delta, [0.0, 0.0, -ROTATION_DEG], atol=0.05)
    # Expression error ignores similarity transforms and sees a mouth opening; reference: the
    # least-squares similarity from skimage, eye + mouth distances over the eye-centre distance.
    assert geo.expression_error(0.7 * rotated + 5.0, lm) < 1e-9
    opened = lm.copy()
    opened[56:59, 1] += 6.0  # lower lip down 6 px
    fit = skimage.transform.SimilarityTransform.from_estimate(opened, lm)
    assert fit
    iod = np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0))
    expected = np.linalg.norm(fit(opened)[36:68] - lm[36:68], axis=1).mean() / iod
    assert geo.expression_error(opened, lm) == pytest.approx(expected, rel=1e-9)
    assert expected > 0.01


def test_cosine_and_json_safety():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 128)), rng.normal(size=(4, 128))
    ref = [float(x @ y / np.sqrt((x @ x) * (y @ y))) for x, y in zip(a, b)]
    np.testing.assert_allclose(cosine_similarity(a, b), ref, atol=1e-12)
    safe = to_json_safe({"p": [float("inf"), -np.inf, np.float32(0.5)], "n": float("nan"), "i": np.int64(3)})
    assert safe == {"p": ["inf", "-inf", 0.5], "n": None, "i": 3}
    json.dumps(safe, allow_nan=False)


def test_bad_inputs(media, tmp_path):
    with pytest.raises(UserError, match="120 frames, but .* has 30"):
        evaluate_videos(media["car"], carphone_path(), media["ast_fs"])
    with pytest.raises(UserError, match="384x384 frames, but .* has 176x144"):
        evaluate_videos(media["car"], media["ast"], media["ast_fs"])
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    with pytest.raises(UserError, match="junk.mp4"):
        evaluate_videos(str(junk), media["car"], media["ast_fs"])
    with pytest.raises(UserError, match="not_a_faceset"):
        evaluate_videos(media["car"], media["car"], str(tmp_path / "not_a_faceset"))
    coffee = str(tmp_path / "coffee.mp4")
    write_video(coffee, [cv2.resize(skimage.data.coffee(), (160, 120))] * 4, 25.0)
    with pytest.raises(UserError, match="no face detected in any of its 4 frames"):
        evaluate_videos(coffee, coffee, media["ast_fs"])
    proc = subprocess.run([sys.executable, "-m", "engine.evaluate", f"--input={media['car']}",
                           f"--output={carphone_path()}", f"--src={media['ast_fs']}"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
