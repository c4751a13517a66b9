"""DeepFaceLab model import/export (engine.dfl, engine.import_dfl, engine.export).

No DFL-trained model can be shipped with the tests, so DFL's side is played by files written the
way DFL writes them (raw pickles of {TF variable name: float32 array}) and by an independent
float64 NumPy forward pass of DFL's network written here from DFL_SPEC §3.1/§3.3, which reads
those dicts directly with DFL's conventions (BGR input, NHWC, symmetric-pad-then-VALID convs,
DCR depth-to-space, channel-major flatten). That forward is our offline substitute for parity
with a real DFL model.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from numpy.lib.stride_tricks import sliding_window_view

from configs import workdir as workdir_config
from configs.merge import get_config as merge_config
from engine.dfl import model_io, names, options
from engine.merge.faces import Face, FaceTable
from engine.merge.model import load_model
from engine.merge.options import Keyframes, from_config
from engine.merge.program import Merger
from engine.models.saehd import SAEHD, parse_archi
from engine.optim import DflAdaBeliefState, DflRmsState, LrDropoutState
from engine.trainer import Trainer
from preprocessing.errors import UserError
from preprocessing.face_types import FaceType
from preprocessing.faceset.safe_pickle import UnsafePickleError
from preprocessing.samples import astronaut_rgb
from test_data import turned_face_records, write_faceset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(resolution=32, ae_dims=32, e_dims=16, d_dims=16, d_mask_dims=8)
NAME = "m"


# ------------------------------------------------------------------------------ a DFL model folder
def template_shapes(archi: str, dims: dict) -> dict[str, dict[str, tuple]]:
    """{part: {DFL key: shape}} for our model of this archi and dims."""
    cfg = ml_collections.ConfigDict(dict(archi=archi, face_type="full", **dims))
    state = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: SAEHD(cfg, rngs=nnx.Rngs(0)))))
    shapes: dict[str, dict[str, tuple]] = {}
    for var in names.variables(archi):
        leaf = state
        for key in var.path:
            leaf = leaf[key]
        shapes.setdefault(var.part, {})[var.key] = tuple(leaf.shape)
    return shapes


def random_weights(shapes: dict[str, dict[str, tuple]], seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Glorot-uniform kernels and small non-zero biases, float32, as DFL's part dicts."""
    rng = np.random.default_rng(seed)
    parts = {}
    for part, keys in shapes.items():
        parts[part] = {}
        for key, shape in keys.items():
            if key.endswith("weight:0"):
                fan_in, fan_out = int(np.prod(shape[:-1])), shape[-1]
                if len(shape) == 4:
                    fan_out = shape[0] * shape[1] * shape[3]
                limit = np.sqrt(6.0 / (fan_in + fan_out))
                parts[part][key] = rng.uniform(-limit, limit, shape).astype(np.float32)
            else:
                parts[part][key] = rng.uniform(-0.1, 0.1, shape).astype(np.float32)
    return parts


def dfl_options(archi: str, dims: dict, adabelief: bool = True) -> dict:
    """An options dict like DFL's, numpy scalars included."""
    return {"archi": archi, "face_type": "f", **{k: np.int64(v) for k, v in dims.items()},
            "batch_size": np.int64(4), "adabelief": adabelief, "lr_dropout": "n", "random_warp": True,
            "masked_training": True, "gan_power": np.float64(0.0), "ct_mode": "none",
            "models_opt_on_gpu": True, "autobackup_hour": np.int64(0), "pretrain": False}


def write_dfl_model(folder: str, cls: str, parts: dict, options: dict, iteration: int,
                    opt: dict | None = None) -> None:
    """The files DFL's ModelBase saves, written with plain pickle protocol 4 as DFL does."""
    os.makedirs(folder, exist_ok=True)
    files = dict(parts)
    files["data"] = {"iter": iteration, "options": options, "loss_history": [[0.5, 0.4]] * 3,
                     "sample_for_preview": [np.zeros((2, 8, 8, 3), np.float32)]}
    if opt is not None:
        files["src_dst_opt"] = opt
    for part, obj in files.items():
        with open(os.path.join(folder, names.file_name(NAME, cls, part)), "wb") as f:
            f.write(pickle.dumps(obj, protocol=4))


def read_dfl_folder(folder: str) -> dict[str, object]:
    return {f: pickle.load(open(os.path.join(folder, f), "rb")) for f in sorted(os.listdir(folder))}


def leaf(tree, path):
    for key in path:
        tree = tree[key]
    return np.asarray(tree)


def is_colour_axis(part: str, key: str) -> int | None:
    """Where DFL's BGR meets our RGB, written out by name: the first encoder conv's inputs and
    the decoders' RGB output convs (not the mask's out_convm)."""
    if part == "encoder" and key in ("down1/downs_0/conv1/weight:0", "down1/conv1/weight:0"):
        return 2
    if part.startswith("decoder") and key.startswith("out_conv") and not key.startswith("out_convm"):
        return 3 if key.endswith("weight:0") else 0
    return None


# --------------------------------------------------------------- round trips, every architecture
VARIANTS = [("SAEHD", "df"), ("SAEHD", "df-u"), ("SAEHD", "df-d"), ("SAEHD", "df-t"), ("SAEHD", "df-udt"),
            ("SAEHD", "liae"), ("SAEHD", "liae-ud"), ("SAEHD", "liae-udt"), ("Quick96", "df-ud")]


@pytest.mark.parametrize("cls,archi", VARIANTS)
def test_dfl_files_import_and_export_bit_identically(cls, archi, tmp_path):
    """DFL files -> workdir: every parameter is DFL's array (colour axes reversed where BGR meets
    RGB), bit for bit; workdir -> DFL files again: the same dicts bit for bit, options included."""
    shapes = template_shapes(archi, TINY)
    parts = random_weights(shapes, seed=len(archi))
    write_dfl_model(str(tmp_path / "dfl"), cls, parts, dfl_options(archi, TINY), iteration=1234)
    got = model_io.import_model(str(tmp_path / "dfl"), NAME, str(tmp_path / "run"))
    assert got.step == 1234 and not got.optimizer_imported
    assert got.config.name == ("quick96" if cls == "Quick96" else "saehd")
    assert dict(got.config.model) == dict(archi=archi, face_type="full", **TINY)

    cfg, step, params, opt_state = model_io.load_train_state(str(tmp_path / "run"))
    assert step == 1234
    for var in names.variables(archi):
        want = parts[var.part][var.key]
        axis = is_colour_axis(var.part, var.key)
        np.testing.assert_array_equal(leaf(params, var.path), want if axis is None else np.flip(want, axis))

    model_io.write_dfl_files(str(tmp_path / "back"), NAME, cfg, step, params, opt_state)
    back = read_dfl_folder(str(tmp_path / "back"))
    for part, arrays in parts.items():
        exported = back[names.file_name(NAME, cls, part)]
        assert exported.keys() == arrays.keys()
        for key, array in arrays.items():
            assert exported[key].dtype == np.float32
            np.testing.assert_array_equal(exported[key], array)
    data = back[names.file_name(NAME, cls, "data")]
    assert data["iter"] == 1234
    assert options.config_from_options(data["options"], cls).to_dict() == got.config.to_dict()


@pytest.mark.parametrize("optimizer", ["adabelief", "rmsprop"])
def test_optimizer_state_carries_over(optimizer, tmp_path):
    """src_dst_opt.npy's slots become our moments (same colour reversal as the weights) and its
    iteration count our schedule counters; the export writes the same slots back."""
    archi = "liae-ud" if optimizer == "adabelief" else "df-d"
    shapes = template_shapes(archi, TINY)
    parts = random_weights(shapes, seed=3)
    prefixes = ("ms", "vs") if optimizer == "adabelief" else ("acc",)
    rng = np.random.default_rng(5)
    opt = {"iters:0": np.int64(777)}
    for var in names.variables(archi):
        for prefix in prefixes:
            opt[f"{prefix}_{var.part}/{var.key[:-2]}_0:0"] = rng.random(
                shapes[var.part][var.key]).astype(np.float32)
    write_dfl_model(str(tmp_path / "dfl"), "SAEHD", parts,
                    dfl_options(archi, TINY, adabelief=optimizer == "adabelief"), iteration=777, opt=opt)
    got = model_io.import_model(str(tmp_path / "dfl"), NAME, str(tmp_path / "run"))
    assert got.optimizer_imported and got.config.train.optimizer == optimizer

    _, _, _, opt_state = model_io.load_train_state(str(tmp_path / "run"))
    (moments,) = [s for s in opt_state if isinstance(s, (DflAdaBeliefState, DflRmsState))]
    fields = dict(zip(prefixes, (moments.mu, moments.nu) if optimizer == "adabelief" else (moments.nu,)))
    for var in names.variables(archi):
        axis = is_colour_axis(var.part, var.key)
        for prefix, tree in fields.items():
            want = opt[f"{prefix}_{var.part}/{var.key[:-2]}_0:0"]
            np.testing.assert_array_equal(leaf(tree, var.path), want if axis is None else np.flip(want, axis))
    counts = [int(s.count) for s in opt_state if isinstance(s, (optax.ScaleByScheduleState, LrDropoutState))]
    assert counts == [777, 777]

    model_io.export_model(str(tmp_path / "run"), str(tmp_path / "back"), NAME)
    exported = read_dfl_folder(str(tmp_path / "back"))[names.file_name(NAME, "SAEHD", "src_dst_opt")]
    assert exported.keys() == opt.keys() and int(exported["iters:0"]) == 777
    for key, array in opt.items():
        np.testing.assert_array_equal(exported[key], array)


# ---------------------------------------------------------------- DFL's network in float64 NumPy
def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1) -> np.ndarray:
    """DFL's "SAME": zero pad (k-1)//2 on every side, then a VALID conv."""
    k = w.shape[0]
    p = (k - 1) // 2
    x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    windows = sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]  # [N,H,W,C,k,k]
    return np.einsum("nhwcij,ijco->nhwo", windows, w.astype(np.float64)) + b


def leaky(x: np.ndarray, slope: float) -> np.ndarray:
    return np.where(x >= 0, x, slope * x)


def depth_to_space(x: np.ndarray) -> np.ndarray:
    """out[2h+i, 2w+j, c] = in[h, w, (2i+j)*C + c] (TF's DCR order), slice by slice."""
    n, h, w, c = x.shape
    oc = c // 4
    out = np.empty((n, 2 * h, 2 * w, oc))
    for i in range(2):
        for j in range(2):
            out[:, i::2, j::2] = x[..., (2 * i + j) * oc:(2 * i + j + 1) * oc]
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class DflNet:
    """DFL_SPEC §3.3's SAEHD (non -t) on DFL-format dicts, float64, BGR in and out."""

    def __init__(self, parts: dict, archi: str, resolution: int):
        self.w, self.archi, self.res = parts, parse_archi(archi), resolution

    def layer(self, part, name, x, stride=1):
        return conv(x, self.w[part][f"{name}/weight:0"], self.w[part][f"{name}/bias:0"], stride)

    def upscale(self, part, name, x):
        return depth_to_space(leaky(self.layer(part, f"{name}/conv1", x), 0.1))

    def residual(self, part, name, x):
        y = self.layer(part, f"{name}/conv2", leaky(self.layer(part, f"{name}/conv1", x), 0.2))
        return leaky(x + y, 0.2)

    def encoder(self, x):
        for i in range(4):
            x = leaky(self.layer("encoder", f"down1/downs_{i}/conv1", x, stride=2), 0.1)
        flat = x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # NCHW flatten
        return flat / np.sqrt(np.mean(flat**2, axis=-1, keepdims=True) + 1e-6) if self.archi.u else flat

    def inter(self, part, flat):
        w = self.w[part]
        code = (flat @ w["dense1/weight:0"] + w["dense1/bias:0"]) @ w["dense2/weight:0"] + w["dense2/bias:0"]
        low = self.res // (32 if self.archi.d else 16)
        code = code.reshape(len(flat), -1, low, low).transpose(0, 2, 3, 1)  # reshape_4D reads C,H,W
        return self.upscale(part, "upscale1", code)

    def decoder(self, part, z):
        x = z
        for k in range(3):
            x = self.residual(part, f"res{k}", self.upscale(part, f"upscale{k}", x))
        if self.archi.d:
            heads = [self.layer(part, n, x) for n in ("out_conv", "out_conv1", "out_conv2", "out_conv3")]
            rgb = depth_to_space(np.concatenate(heads, axis=-1))
        else:
            rgb = self.layer(part, "out_conv", x)
        m = z
        for k in range(4 if self.archi.d else 3):
            m = self.upscale(part, f"upscalem{k}", m)
        return sigmoid(rgb), sigmoid(self.layer(part, "out_convm", m))

    def outputs(self, src_bgr, dst_bgr) -> dict[str, np.ndarray]:
        es, ed = self.encoder(src_bgr), self.encoder(dst_bgr)
        if self.archi.kind == "df":
            zs, zd = self.inter("inter", es), self.inter("inter", ed)
            (ss, ssm), (dd, ddm), (sd, sdm) = (self.decoder("decoder_src", zs), self.decoder("decoder_dst", zd),
                                               self.decoder("decoder_src", zd))
        else:
            ab_s, ab_d, b_d = self.inter("inter_AB", es), self.inter("inter_AB", ed), self.inter("inter_B", ed)
            cat = lambda a, b: np.concatenate([a, b], axis=-1)  # noqa: E731
            (ss, ssm), (dd, ddm), (sd, sdm) = (self.decoder("decoder", cat(ab_s, ab_s)),
                                               self.decoder("decoder", cat(b_d, ab_d)),
                                               self.decoder("decoder", cat(ab_d, ab_d)))
        return {"pred_src_src": ss, "pred_src_srcm": ssm, "pred_dst_dst": dd, "pred_dst_dstm": ddm,
                "pred_src_dst": sd, "pred_src_dstm": sdm}


@pytest.mark.parametrize("archi", ["df-ud", "liae-ud"])
def test_imported_model_matches_dfl_network_in_float64(archi, tmp_path):
    """Our imported model (RGB) against DFL's network on the DFL files (BGR): src->src, dst->dst
    and dst->src faces and masks agree to 1e-5 absolute (float32 vs float64; measured ~1e-7)."""
    dims = dict(TINY, resolution=64)
    parts = random_weights(template_shapes(archi, dims), seed=11)
    write_dfl_model(str(tmp_path / "dfl"), "SAEHD", parts, dfl_options(archi, dims), iteration=5)
    model_io.import_model(str(tmp_path / "dfl"), NAME, str(tmp_path / "run"))
    cfg, _, params, _ = model_io.load_train_state(str(tmp_path / "run"))
    graphdef = nnx.split(nnx.eval_shape(lambda: SAEHD(cfg.model, rngs=nnx.Rngs(0))))[0]

    rng = np.random.default_rng(2)
    src, dst = rng.random((2, 2, 64, 64, 3), dtype=np.float32)
    ours = jax.device_get(jax.jit(lambda p, s, d: nnx.merge(graphdef, p)(s, d))(params, src, dst))
    ref = DflNet(parts, archi, 64).outputs(src[..., ::-1].astype(np.float64), dst[..., ::-1].astype(np.float64))
    for key, value in ref.items():
        want = value[..., ::-1] if value.shape[-1] == 3 else value  # BGR -> RGB
        assert ours[key].shape == want.shape
        np.testing.assert_allclose(ours[key], want, rtol=0, atol=1e-5, err_msg=key)
        assert np.std(want) > 1e-3, key  # the outputs are not saturated constants


# --------------------------------------------------------------------------------- names, errors
def test_key_names_and_shapes_of_liae_ud_64():
    """The issue's spot checks: liae-ud, res 64, ae 64 / e 32 / d 32 / d_mask 16."""
    shapes = template_shapes("liae-ud", dict(resolution=64, ae_dims=64, e_dims=32, d_dims=32, d_mask_dims=16))
    assert set(shapes) == {"encoder", "inter_AB", "inter_B", "decoder"}
    enc, inter, dec = shapes["encoder"], shapes["inter_AB"], shapes["decoder"]
    assert enc["down1/downs_0/conv1/weight:0"] == (5, 5, 3, 32)
    assert enc["down1/downs_0/conv1/bias:0"] == (32,)
    assert enc["down1/downs_3/conv1/weight:0"] == (5, 5, 128, 256)
    assert len(enc) == 8
    assert inter["dense1/weight:0"] == (4096, 64) and inter["dense2/weight:0"] == (64, 512)
    assert inter["upscale1/conv1/weight:0"] == (3, 3, 128, 512)
    assert shapes["inter_B"] == inter
    assert dec["out_conv/weight:0"] == (1, 1, 64, 3)
    assert dec["out_conv1/weight:0"] == dec["out_conv3/weight:0"] == (3, 3, 64, 3)
    assert dec["out_convm/weight:0"] == (1, 1, 16, 1)
    layers = ([f"upscale{k}/conv1" for k in range(3)] + [f"res{k}/conv{c}" for k in range(3) for c in (1, 2)]
              + [f"upscalem{k}/conv1" for k in range(4)]
              + ["out_conv", "out_conv1", "out_conv2", "out_conv3", "out_convm"])
    assert set(dec) == {f"{layer}/{leaf}:0" for layer in layers for leaf in ("weight", "bias")}


def test_dfl_options_map_onto_our_config(caplog):
    """DFL's spellings (numpy scalars, 'y'/'cpu'/'n', short face types) become config values;
    unknown options are named in a warning; the -c archi is refused."""
    cfg = options.config_from_options(
        {"archi": "liae-dt", "face_type": "wf", "resolution": np.int64(224), "ae_dims": np.int64(512),
         "adabelief": np.bool_(False), "lr_dropout": "cpu", "models_opt_on_gpu": False,
         "random_hsv_power": np.float64(0.05), "ct_mode": "rct", "target_iter": np.int64(5000),
         "random_src_flip": np.bool_(True), "random_jpeg": True, "autobackup_hour": 1}, "SAEHD")
    assert (cfg.model.archi, cfg.model.face_type, cfg.model.resolution, cfg.model.ae_dims) == (
        "liae-dt", "whole_face", 224, 512)
    assert (cfg.train.optimizer, cfg.train.lr_dropout, cfg.train.opt_on_host, cfg.train.ct_mode) == (
        "rmsprop", True, True, "rct")
    assert cfg.train.random_hsv_power == 0.05 and cfg.train.max_steps == 5000 and cfg.train.random_src_flip
    assert "ignored: random_jpeg" in caplog.text and "autobackup_hour" not in caplog.text
    with pytest.raises(UserError, match=r"archi='df-udc': the -c \(cosine activation\) option is not supported"):
        options.config_from_options({"archi": "df-udc"}, "SAEHD")
    with pytest.raises(UserError, match=r"face_type='x': expected one of h, mf, f, wf, head"):
        options.config_from_options({"face_type": "x"}, "SAEHD")
    quick = options.config_from_options({}, "Quick96")
    assert quick.name == "quick96" and dict(quick.model) == dict(
        archi="df-ud", resolution=96, face_type="full", ae_dims=128, e_dims=64, d_dims=64, d_mask_dims=16)


@pytest.fixture
def dfl_model(tmp_path):
    archi = "df-ud"
    parts = random_weights(template_shapes(archi, TINY), seed=1)
    folder = str(tmp_path / "dfl")
    write_dfl_model(folder, "SAEHD", parts, dfl_options(archi, TINY), iteration=9)
    return folder, parts


def test_data_dat_with_a_callable_is_refused(dfl_model, tmp_path):
    folder, _ = dfl_model

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(os.path.join(folder, names.file_name(NAME, "SAEHD", "data")), "wb") as f:
        f.write(pickle.dumps({"iter": 1, "options": {"x": Exploit()}}, protocol=4))
    with pytest.raises(UnsafePickleError, match=r"refused to unpickle 'posix\.system'"):
        model_io.import_model(folder, NAME, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def test_wrong_and_missing_keys_are_listed(dfl_model, tmp_path):
    folder, parts = dfl_model
    path = os.path.join(folder, names.file_name(NAME, "SAEHD", "encoder"))
    broken = dict(parts["encoder"])
    del broken["down1/downs_2/conv1/bias:0"]
    broken["down1/downs_9/conv1/bias:0"] = np.zeros(4, np.float32)
    with open(path, "wb") as f:
        f.write(pickle.dumps(broken, protocol=4))
    with pytest.raises(UserError) as e:
        model_io.import_model(folder, NAME, str(tmp_path / "run"))
    assert str(e.value) == (f"{path}: keys do not match the model: missing 1: down1/downs_2/conv1/bias:0; "
                            "unexpected 1: down1/downs_9/conv1/bias:0 (expected 8 keys, found 8)")

    broken = dict(parts["encoder"], **{"down1/downs_1/conv1/weight:0": np.zeros((5, 5, 16, 33), np.float32)})
    with open(path, "wb") as f:
        f.write(pickle.dumps(broken, protocol=4))
    with pytest.raises(UserError, match=r"down1/downs_1/conv1/weight:0 has shape \(5, 5, 16, 33\), "
                                        r"the model expects \(5, 5, 16, 32\)"):
        model_io.import_model(folder, NAME, str(tmp_path / "run"))
    with pytest.raises(UserError, match=r"no m_Quick96_data\.dat \(model state files here: m_SAEHD_data\.dat\)"):
        model_io.import_model(folder, NAME, str(tmp_path / "run"), model="Quick96")


def test_import_and_export_refuse_to_overwrite(dfl_model, tmp_path):
    """A second import into the same workdir is refused with nothing changed; `engine.export
    --format=dfl` writes DFL's files (exit 0) and a second export there is refused."""
    folder, parts = dfl_model
    run, out = str(tmp_path / "run"), str(tmp_path / "out")
    model_io.import_model(folder, NAME, run)
    with pytest.raises(UserError, match=r"run: already holds a checkpoint; import into a new or empty workdir"):
        model_io.import_model(folder, NAME, run)
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["9"]

    proc = subprocess.run([sys.executable, "-m", "engine.export", f"--workdir={run}", "--format=dfl",
                           f"--output={out}", "--name=back"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    written = sorted(os.listdir(out))
    assert written == sorted(names.file_name("back", "SAEHD", p) for p in [*parts, "src_dst_opt", "data"])
    encoder = pickle.load(open(os.path.join(out, "back_SAEHD_encoder.npy"), "rb"))
    np.testing.assert_array_equal(encoder["down1/downs_3/conv1/weight:0"],
                                  parts["encoder"]["down1/downs_3/conv1/weight:0"])
    with pytest.raises(UserError, match=r"back_SAEHD_.*: exists; export into another folder"):
        model_io.export_model(run, out, "back")
    assert sorted(os.listdir(out)) == written


# ---------------------------------------------------------------- import -> train -> merge
def test_imported_model_trains_on_and_merges(dfl_model, tmp_path):
    """The imported workdir resumes in engine.train's Trainer at DFL's iteration (+2 steps, loss
    finite, weights moved) and engine.merge's program swaps a face with it."""
    folder, parts = dfl_model
    run = str(tmp_path / "run")
    model_io.import_model(folder, NAME, run)
    records = turned_face_records(12, 64, FaceType.WHOLE_FACE, 0.6)
    write_faceset(str(tmp_path / "faces"), records, 64, FaceType.WHOLE_FACE)
    cfg = workdir_config.get_config(run)
    cfg.train.max_steps = 11
    cfg.checkpoint.update(every_minutes=0.0, every_steps=1000)
    cfg.log.update(every_steps=1000, preview_every_steps=1000)
    trainer = Trainer(cfg, str(tmp_path / "faces"), str(tmp_path / "faces"), run, progress=False)
    try:
        assert int(trainer.state["step"]) == 9
        last = trainer.run()
    finally:
        trainer.close()
    assert np.isfinite(last["src_loss"]) and np.isfinite(last["dst_loss"])

    model = load_model(run, dtype_name="float32")
    assert model.step == 11
    kernel = np.asarray(model.params["encoder"]["body"]["downs"]["layers"][1]["conv"]["kernel"])
    assert 0 < np.abs(kernel - parts["encoder"]["down1/downs_1/conv1/weight:0"]).max() < 0.1

    frame = astronaut_rgb()
    landmarks = records["source_landmarks"][6].astype(np.float64)
    merger = Merger(model, FaceTable({0: [Face(0, landmarks, (0.0, 0.0))]}),
                    Keyframes(from_config(merge_config("overlay")), []), batch_size=1)
    (merged,) = list(merger.merge([(0, None, frame)], chunk_frames=1))
    assert merged.swapped and merged.image.shape == frame.shape
    inside = merged.mask > 0
    assert inside.sum() > 1000 and np.any(merged.image[inside] != frame[inside])
    np.testing.assert_array_equal(merged.image[~inside], frame[~inside])
