"""Pretraining (engine/pretrain.py, DFL_SPEC §3.2): the options it forces, the batches they give, and
the switch to normal training (step 0, fresh inters, encoder and decoder kept), on the tiny LIAE
model and a synthetic faceset. References: the spec's option list written out here, ramp faces
whose pixels say where they were sampled (and in which direction), a fresh initialisation with the
run's seed, and the pretrained state itself."""
from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from test_train_step import _ramp_batch

from benchmarks.data_throughput import build
from configs import saehd
from engine import optim, pretrain
from engine.optim import path_names
from engine.train_step import StepOptions, augmented_inputs, init_state
from engine.trainer import Trainer, init_model
from preprocessing.errors import UserError

B, S = 4, 32
PRE_STEPS, NORMAL_STEPS = 3, 2
# DFL_SPEC §3.2 "Pretrain mode", plus ct_mode and true_face_power (engine/pretrain.py says why).
SPEC_FORCED = {"random_warp": False, "random_src_flip": True, "random_dst_flip": True, "uniform_yaw": True,
               "lr_dropout": False, "random_hsv_power": 0.0, "gan_power": 0.0, "face_style_power": 0.0,
               "bg_style_power": 0.0, "true_face_power": 0.0, "ct_mode": "none"}


def tiny(archi: str = "tiny", **train) -> ml_collections.ConfigDict:
    """A tiny SAEHD config with cfg.train overrides, every step logged, no checkpoint before the end."""
    cfg = saehd.get_config(archi)
    cfg.train.update(**train)
    cfg.log.update(every_steps=1, preview_every_steps=1000)
    cfg.checkpoint.update(every_steps=1000, every_minutes=0.0)
    return cfg


def test_pretraining_forces_the_spec_options_and_says_which(capsys):
    cfg = tiny("tiny-df", pretrain=True, random_warp=True, gan_power=0.1, true_face_power=0.01, lr_dropout=True,
               ct_mode="rct", face_style_power=10.0, random_hsv_power=0.1)
    forced = pretrain.effective_config(cfg)
    assert {k: forced.train[k] for k in SPEC_FORCED} == SPEC_FORCED
    assert cfg.train.random_warp is True and cfg.train.gan_power == 0.1  # the caller's config is untouched
    [line] = capsys.readouterr().out.splitlines()
    for edit in ("random_warp True -> False", "gan_power 0.1 -> 0.0", "ct_mode rct -> none",
                 "random_src_flip False -> True", "uniform_yaw False -> True"):
        assert edit in line
    assert "random_dst_flip" not in line and "bg_style_power" not in line  # already what pretraining wants
    normal = tiny()
    assert pretrain.effective_config(normal) is normal
    with pytest.raises(UserError, match="needs --pretrain_faceset"):
        pretrain.training_facesets(cfg, "a", "b", None)
    assert pretrain.training_facesets(cfg, None, None, "p") == ("p", "p")


def _augment(cfg):
    return jax.jit(functools.partial(augmented_inputs, StepOptions.from_config(pretrain.effective_config(cfg))))


def test_pretraining_batches_are_unwarped_and_both_sides_flipped():
    """Ramp faces (R = 8·x): a flipped target's R falls from left to right. Pretraining: every input
    equals its target bit for bit (no elastic warp) and both sides are flipped at DFL's rate 0.4
    (32 draws per side: measured 0.31 and 0.44); the normal tiny config warps every input (mean
    |input - target| > 1e-3 per sample) and never flips src."""
    def draws(augment):
        flips, warp = {"src": [], "dst": []}, {"src": [], "dst": []}
        for step in range(8):
            ids = np.arange(B) + 10 * step
            out = augment(jnp.int32(step), {"src": _ramp_batch(S, ids), "dst": _ramp_batch(S, ids + 1000)})
            for side in flips:
                target, warped = np.asarray(out[f"target_{side}"]), np.asarray(out[f"warped_{side}"])
                flips[side] += list(np.diff(target[..., 0], axis=2).mean(axis=(1, 2)) < 0)
                warp[side] += list(np.abs(warped - target).mean(axis=(1, 2, 3)))
        return {k: np.array(v) for k, v in flips.items()}, {k: np.array(v) for k, v in warp.items()}

    flips, warp = draws(_augment(tiny(pretrain=True)))
    for side in ("src", "dst"):
        assert warp[side].max() == 0.0
        assert 0.15 < flips[side].mean() < 0.65, (side, flips[side].mean())
    flips, warp = draws(_augment(tiny()))
    assert warp["src"].min() > 1e-3 and warp["dst"].min() > 1e-3
    assert not flips["src"].any() and flips["dst"].any()


def test_archiving_the_pretraining_phase_finishes_an_interrupted_move(tmp_path):
    """The move into pretrain/ is resumable (an output already in pretrain.partial/ stays there),
    idempotent, and refuses to overwrite an earlier pretraining phase."""
    work = tmp_path / "run"
    (work / "checkpoints" / "5").mkdir(parents=True)
    (work / "tb").mkdir()
    (work / "preview.png").write_bytes(b"png")
    (work / "pretrain.partial").mkdir()
    (work / "pretrain.partial" / "metrics.jsonl").write_text('{"step": 5}\n')  # moved before a crash
    assert pretrain.archived_workdir(str(work)) is None  # its checkpoints have not moved yet
    pretrain.archive_phase(str(work))
    assert sorted(os.listdir(work)) == ["pretrain"]
    assert sorted(os.listdir(work / "pretrain")) == ["checkpoints", "metrics.jsonl", "preview.png", "tb"]
    assert pretrain.archived_workdir(str(work)) == str(work / "pretrain")
    pretrain.archive_phase(str(work))  # already archived: nothing to do
    (work / "checkpoints" / "7").mkdir(parents=True)  # a second pretraining phase
    with pytest.raises(UserError, match="already holds an earlier pretraining phase"):
        pretrain.archive_phase(str(work))
    assert os.listdir(work / "checkpoints") == ["7"]


# ------------------------------------------------------------------------ pretrain -> normal
def _leaves(tree) -> dict[tuple[str, ...], np.ndarray]:
    return {path_names(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="module")
def switched(tmp_path_factory):
    """PRE_STEPS pretraining steps; then the same workdir with pretraining off: a Trainer closed before
    it saved (a crash), a second one that redoes the switch and trains NORMAL_STEPS steps, and a
    pretraining Trainer on the result (switched on again)."""
    root = tmp_path_factory.mktemp("pretrain")
    faceset, work = str(root / "faces"), str(root / "run")
    build(faceset, 24, 64)
    trainer = Trainer(tiny(pretrain=True, max_steps=PRE_STEPS), None, None, work, progress=False,
                      pretrain_faceset=faceset)
    try:
        pre_opts = trainer.opts
        trainer.run()
        pretrained = jax.device_get(trainer.state)
    finally:
        trainer.close()
    with contextlib.redirect_stdout(io.StringIO()) as said:
        first = Trainer(tiny(max_steps=NORMAL_STEPS), faceset, faceset, work, progress=False)
    first.close()
    second = Trainer(tiny(max_steps=NORMAL_STEPS), faceset, faceset, work, progress=False)
    try:
        start = jax.device_get(second.state)
        second.run()
    finally:
        second.close()
    with contextlib.redirect_stdout(said):
        again = Trainer(tiny(pretrain=True), None, None, work, progress=False, pretrain_faceset=faceset)
    again.close()
    return types.SimpleNamespace(work=work, faceset=faceset, pre_opts=pre_opts, pretrained=pretrained,
                                 first=jax.device_get(first.state), start=start,
                                 again_step=int(again.state["step"]), said=said.getvalue())


def _read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f] if path.endswith(".jsonl") else json.load(f)


def test_pretraining_run_uses_the_forced_options_and_records_them(switched):
    opts = switched.pre_opts
    assert (opts.random_warp, opts.src_flip, opts.dst_flip, opts.hsv_power) == (False, True, True, 0.0)
    archive = os.path.join(switched.work, pretrain.ARCHIVE)
    saved = _read_json(os.path.join(archive, "config.json"))
    assert saved["train"]["pretrain"] is True and saved["train"]["uniform_yaw"] is True
    meta = _read_json(os.path.join(archive, "checkpoints", str(PRE_STEPS), "meta", "metadata"))
    assert meta["pretrain_faceset"] == switched.faceset and meta["config"]["train"]["pretrain"] is True
    assert [r["step"] for r in _read_json(os.path.join(archive, "metrics.jsonl"))] == list(range(1, PRE_STEPS + 1))
    # LIAE trains without inter_AB when random_warp is off (DFL_SPEC §3.3): pretraining leaves it as initialised.
    _, init = init_model(tiny(), jnp.float32)
    for name, moved in (("inter_AB", False), ("inter_B", True)):
        got, fresh = _leaves(switched.pretrained["params"][name]), _leaves(init[name])
        assert any(not np.array_equal(got[k], fresh[k]) for k in got) is moved, name


def test_switching_pretraining_off_restarts_at_0_with_fresh_inters(switched):
    """Step 0; encoder and decoder bit-identical to the pretrained ones; inter_AB and inter_B equal to a
    fresh initialisation with the run's seed; their AdaBelief moments zero again while the encoder's
    and decoder's are kept; the optimiser's own update counter carries on (PRE_STEPS)."""
    pre, start = switched.pretrained, switched.start
    assert int(start["step"]) == 0
    assert (f"pretraining switched off at step {PRE_STEPS}: training restarts at step 0 with inter_AB and "
            f"inter_B re-initialised") in switched.said
    cfg = tiny()
    _, init = init_model(cfg, jnp.float32)
    for name, want in (("encoder", pre["params"]), ("decoder", pre["params"]), ("inter_AB", init),
                       ("inter_B", init)):
        got, expected = _leaves(start["params"][name]), _leaves(want[name])
        assert got.keys() == expected.keys()
        for k in got:
            np.testing.assert_array_equal(got[k], expected[k], err_msg=f"{name} {k}")
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(pre["params"]["inter_B"]),
                                                         jax.tree.leaves(start["params"]["inter_B"])))
    fresh_opt = _leaves(init_state(init, optim.make_optimizer(cfg.train, cfg.seed))["opt_state"])
    got_opt, pre_opt = _leaves(start["opt_state"]), _leaves(pre["opt_state"])
    inter = [k for k in got_opt if {"inter_AB", "inter_B"} & set(k)]
    kept = [k for k in got_opt if {"encoder", "decoder"} & set(k)]
    assert len(inter) == 2 * 2 * len(jax.tree.leaves(init["inter_AB"]))  # mu and nu of both inters
    for k in inter:
        np.testing.assert_array_equal(got_opt[k], fresh_opt[k], err_msg=str(k))
        assert not got_opt[k].any()
    assert any(pre_opt[k].any() for k in kept)
    for k in kept:
        np.testing.assert_array_equal(got_opt[k], pre_opt[k], err_msg=str(k))
    counts = [int(v) for k, v in got_opt.items() if k[-1] == "count"]
    assert counts and all(c == PRE_STEPS for c in counts)  # the lr schedule's and lr_dropout's


def test_the_switch_survives_a_crash_before_the_first_save_and_trains_from_step_1(switched):
    """The Trainer closed before saving left the checkpoints in pretrain/ only; the next start switched
    again from there, to the same state, and its run logged steps 1.. and saved its own checkpoint."""
    for a, b in zip(jax.tree.leaves(switched.first), jax.tree.leaves(switched.start)):
        np.testing.assert_array_equal(a, b)
    work = switched.work
    assert sorted(os.listdir(os.path.join(work, pretrain.ARCHIVE, "checkpoints"))) == [str(PRE_STEPS)]
    assert [r["step"] for r in _read_json(os.path.join(work, "metrics.jsonl"))] == list(range(1, NORMAL_STEPS + 1))
    assert os.listdir(os.path.join(work, "checkpoints")) == [str(NORMAL_STEPS)]
    meta = _read_json(os.path.join(work, "checkpoints", str(NORMAL_STEPS), "meta", "metadata"))
    assert meta["config"]["train"]["pretrain"] is False and meta["pretrain_faceset"] is None
    # Switched on again for this normally trained model: it continues from its step (as DFL allows).
    assert switched.again_step == NORMAL_STEPS
    assert f"pretraining a model trained normally: it continues from step {NORMAL_STEPS}" in switched.said
