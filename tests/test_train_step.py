"""The pure training step on a synthetic batch: gradient accumulation, the non-finite guard,
Quick96's recipe (DFL_SPEC §3.8: a no-warp step on the previous batch every 3rd iteration, zoom
±0.05) in the step and in the trainer, the plain step when the GAN/true-face/style powers are 0, the
swap decoded only for the style losses, and the GAN switched on mid-run in the trainer (DFL_SPEC §3.4)."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from benchmarks.data_throughput import build
from configs import quick96, saehd
from engine import optim
from engine.train_step import (StepOptions, augmented_inputs, init_state, make_critics, make_train_step,
                               step_losses)
from engine.trainer import Trainer, init_model

B, S = 4, 32


def _side(rng: np.random.Generator, offset: int) -> dict[str, jax.Array]:
    yy, xx = np.mgrid[:S, :S]
    faces = np.stack([
        np.clip(np.stack([xx * 8, yy * 8, (xx + yy) * 4], -1) + rng.integers(0, 40, (S, S, 3)), 0, 255)
        for _ in range(B)]).astype(np.uint8)
    disk = (((xx - S / 2) ** 2 + (yy - S / 2) ** 2) < (S / 3) ** 2).astype(np.uint8) * 255
    masks = np.broadcast_to(disk[None, :, :, None], (B, S, S, 1)).copy()
    eye = np.tile(np.array([[1, 0, 0], [0, 1, 0]], np.float32), (B, 1, 1))
    return {"faces": jnp.asarray(faces), "masks": jnp.asarray(masks), "eyes_mouth_masks": jnp.asarray(masks // 2),
            "base_matrices": jnp.asarray(eye), "sample_ids": jnp.arange(offset, offset + B, dtype=jnp.int32)}


@pytest.fixture(scope="module")
def setup():
    cfg = saehd.get_config("tiny")
    cfg.train.batch_size = B
    graphdef, params = init_model(cfg, jnp.float32)
    rng = np.random.default_rng(0)
    batch = {"src": _side(rng, 0), "dst": _side(rng, 100)}
    return cfg, graphdef, params, batch


def _one_step(cfg, graphdef, params, batch, micro: int):
    tx = optim.make_optimizer(cfg.train, cfg.seed)
    opts = dataclasses.replace(StepOptions.from_config(cfg), micro_batches=micro)
    step = jax.jit(make_train_step(graphdef, tx, opts))
    return step(init_state(params, tx), batch)


def test_two_micro_batches_equal_one_full_batch(setup):
    """Accumulating gradients over 2 halves gives the full batch's loss and update (the losses are
    per-sample means, so the mean of the halves' means is the batch mean)."""
    cfg, graphdef, params, batch = setup
    full_state, full = _one_step(cfg, graphdef, params, batch, 1)
    acc_state, acc = _one_step(cfg, graphdef, params, batch, 2)
    for key in ("loss", "src_loss", "dst_loss", "grad_norm"):
        np.testing.assert_allclose(float(acc[key]), float(full[key]), rtol=1e-5, err_msg=key)
    # AdaBelief's first update is ~lr * sign(g): elements whose gradient is ~0 may flip between the
    # two summation orders, so allow a few of them (< 1%) to differ, by at most one update.
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(acc_state["params"])])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(full_state["params"])])
    diff = np.abs(a - b)
    assert (diff > 1e-6).mean() < 0.01 and diff.max() < 4 * cfg.train.lr
    # and the step moved the parameters at all
    moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(full_state["params"]),
                                                              jax.tree.leaves(params)))
    assert moved > 0


def test_non_finite_step_is_skipped(setup):
    """A NaN in the inputs gives a NaN loss: params and optimiser state stay, the counters count it."""
    cfg, graphdef, params, batch = setup
    tx = optim.make_optimizer(cfg.train, cfg.seed)
    bad = jax.tree.map(lambda x: x, batch)
    bad["src"]["base_matrices"] = batch["src"]["base_matrices"].at[0, 0, 0].set(jnp.nan)
    step = jax.jit(make_train_step(graphdef, tx, StepOptions.from_config(cfg)))
    state = init_state(params, tx)
    new, metrics = step(state, bad)
    assert not np.isfinite(float(metrics["loss"]))
    assert int(new["counters"]["nonfinite"]) == 1 and int(new["counters"]["skipped"]) == 1
    assert int(new["step"]) == 1
    for a, b in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    good, _ = step(new, batch)
    assert int(good["counters"]["nonfinite"]) == 0 and int(good["counters"]["skipped"]) == 1


def test_unreported_step_updates_the_same_and_skips_the_norms(setup):
    """report=False (a step whose metrics are not logged) gives bit for bit the same state and loss
    as report=True, with update_norm and param_norm NaN; the reported norms match float64 norms of
    the parameters and of their change (rtol 1e-5; the change's 1e-3 allows for float32 rounding of
    p + u when |u| << |p|)."""
    cfg, graphdef, params, batch = setup
    tx = optim.make_optimizer(cfg.train, cfg.seed)
    step = jax.jit(make_train_step(graphdef, tx, StepOptions.from_config(cfg)))
    state = init_state(params, tx)
    reported, with_norms = step(state, batch, True)
    quiet, without = step(state, batch, False)
    assert float(with_norms["loss"]) == float(without["loss"])
    for a, b in zip(jax.tree.leaves(reported), jax.tree.leaves(quiet)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.isnan(float(without["update_norm"])) and np.isnan(float(without["param_norm"]))
    new = [np.asarray(x, np.float64) for x in jax.tree.leaves(reported["params"])]
    old = [np.asarray(x, np.float64) for x in jax.tree.leaves(params)]
    np.testing.assert_allclose(float(with_norms["param_norm"]), np.sqrt(sum((x ** 2).sum() for x in new)), rtol=1e-5)
    change = np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(new, old)))
    assert change > 0
    np.testing.assert_allclose(float(with_norms["update_norm"]), change, rtol=1e-3)


# ---------------------------------------------------------------------------------------------
# Quick96
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quick96_augment():
    """(jitted augmented_inputs of tiny Quick96 with a traced step, a list that counts its traces)."""
    traces = []

    def augment(step, batch):
        traces.append(step)
        return augmented_inputs(StepOptions.from_config(quick96.get_config("tiny")), step, batch)

    return jax.jit(augment), traces


def test_quick96_every_third_step_trains_unwarped_on_the_previous_draws(setup, quick96_augment):
    """Steps 3 and 6 (DFL's iteration counter % 3 == 0, not the first): every input is bit for bit its
    target, and the targets and masks are those of the step before (the trainer feeds that step's
    batch again). The other steps are warped. One compiled program serves all steps."""
    _, _, _, batch = setup
    augment, traces = quick96_augment
    outs = [{k: np.asarray(v) for k, v in augment(jnp.int32(step), batch).items()} for step in range(7)]
    assert len(traces) == 1
    for step, out in enumerate(outs):
        for side in ("src", "dst"):
            difference = np.abs(out[f"warped_{side}"] - out[f"target_{side}"]).mean(axis=(1, 2, 3))
            if step in (3, 6):
                np.testing.assert_array_equal(out[f"warped_{side}"], out[f"target_{side}"])
                # The same program and draws: equal up to float rounding (bit-identical on x86 CPUs).
                for name in (f"target_{side}", f"target_{side}m", f"target_{side}m_em"):
                    np.testing.assert_allclose(out[name], outs[step - 1][name], rtol=0, atol=1e-6)
            else:  # warped: >= 0.009 per sample here; not warped: 0
                assert difference.min() > 1e-3, (step, side, difference)
    # Fresh affine draws on the warped steps: step 1's targets are not step 0's.
    assert np.abs(outs[1]["target_src"] - outs[0]["target_src"]).mean(axis=(1, 2, 3)).min() > 0.01


def _ramp_batch(size: int, ids: np.ndarray) -> dict[str, jax.Array]:
    """Faces whose R and G channels hold 8x their pixel's x and y: the target then tells, pixel by
    pixel, where in the face it sampled (bicubic reproduces a ramp)."""
    yy, xx = np.mgrid[:size, :size]
    face = np.stack([xx * 8, yy * 8, np.zeros_like(xx)], -1).astype(np.uint8)
    n = len(ids)
    masks = np.full((n, size, size, 1), 255, np.uint8)
    return {"faces": jnp.asarray(np.repeat(face[None], n, axis=0)), "masks": jnp.asarray(masks),
            "eyes_mouth_masks": jnp.asarray(masks), "sample_ids": jnp.asarray(ids, jnp.int32),
            "base_matrices": jnp.asarray(np.tile(np.array([[1, 0, 0], [0, 1, 0]], np.float32), (n, 1, 1)))}


def _zooms(augment, steps: range) -> np.ndarray:
    """The affine zoom of every target of `steps`, fitted from ramp faces: output -> face pixel map A,
    zoom = 1/sqrt|det A| (the re-crop is the identity here, DFL's 64 px warp width cancels out)."""
    zooms = []
    for step in steps:
        ids = np.arange(B) + 10 * step
        out = augment(jnp.int32(step), {"src": _ramp_batch(S, ids), "dst": _ramp_batch(S, ids + 1000)})
        for side in ("src", "dst"):
            for target in np.asarray(out[f"target_{side}"], np.float64) * 255 / 8:
                fx, fy = target[..., 0], target[..., 1]
                inside = (fx > 1) & (fx < S - 3) & (fy > 1) & (fy < S - 3)  # away from the replicated edge
                gy, gx = np.nonzero(inside)
                design = np.stack([gx, gy, np.ones_like(gx)], axis=1).astype(np.float64)
                fit, *_ = np.linalg.lstsq(design, np.stack([fx[inside], fy[inside]], axis=1), rcond=None)
                # OpenCV's bicubic (a = -0.75) reproduces a ramp to ~0.07 px, so the map is affine to that.
                assert np.abs(design @ fit - np.stack([fx[inside], fy[inside]], axis=1)).max() < 0.1
                zooms.append(1.0 / np.sqrt(abs(np.linalg.det(fit[:2]))))
    return np.array(zooms)


def test_quick96_zooms_by_at_most_5_percent(quick96_augment):
    """Quick96 draws its zoom from U[1/1.05, 1.05] (SAEHD: U[1/1.15, 1.15]). Tolerance 2e-3: the
    zoom fitted from the ramps (residuals < 0.05 px over ~30 px)."""
    augment, _ = quick96_augment
    zooms = _zooms(augment, range(3))
    assert zooms.min() >= 1 / 1.05 - 2e-3 and zooms.max() <= 1.05 + 2e-3
    assert np.ptp(zooms) > 0.05  # 24 draws spread over most of the 0.098 wide range
    saehd_augment = jax.jit(functools.partial(augmented_inputs, StepOptions.from_config(saehd.get_config("tiny"))))
    saehd_zooms = _zooms(saehd_augment, range(1))
    assert saehd_zooms.min() >= 1 / 1.15 - 2e-3 and saehd_zooms.max() <= 1.15 + 2e-3
    assert np.mean((saehd_zooms < 1 / 1.05 - 2e-3) | (saehd_zooms > 1.05 + 2e-3)) > 0.25  # expected 0.64


def _metrics(workdir) -> dict[int, dict]:
    with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
        return {r["step"]: r for r in map(json.loads, f)}


def _quick96_run(faceset: str, workdir, max_steps: int) -> dict:
    cfg = quick96.get_config("tiny")
    cfg.train.max_steps = max_steps
    cfg.log.update(every_steps=1, preview_every_steps=1000)
    cfg.checkpoint.update(every_steps=1000, every_minutes=0.0)
    trainer = Trainer(cfg, faceset, faceset, str(workdir), progress=False)
    try:
        trainer.run()
        return trainer.data.state()
    finally:
        trainer.close()


@pytest.mark.slow
def test_quick96_trainer_feeds_the_previous_batch_again_and_resumes_exactly(tmp_path):
    """5 steps take 4 batches (step 3 reuses step 2's). Stopped after 3 steps and resumed, the run
    fetches step 2's batch again for step 3 and reproduces the uninterrupted run's losses exactly
    (one CPU device: deterministic)."""
    faceset = str(tmp_path / "faces")
    build(faceset, 24, 64)
    batch = quick96.get_config("tiny").train.batch_size
    whole = _quick96_run(faceset, tmp_path / "whole", 5)
    assert whole["src"]["samples"] == whole["dst"]["samples"] == 4 * batch
    assert _quick96_run(faceset, tmp_path / "parts", 3)["src"]["samples"] == 3 * batch
    resumed = _quick96_run(faceset, tmp_path / "parts", 5)
    assert resumed == whole
    expected, got = _metrics(tmp_path / "whole"), _metrics(tmp_path / "parts")
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4, 5]
    for step in (4, 5):
        for key in ("loss", "src_loss", "dst_loss"):
            assert got[step][key] == expected[step][key], (step, key)


# ---------------------------------------------------------------------------------------------
# GAN, true face and style losses off: the plain step, bit for bit
# ---------------------------------------------------------------------------------------------

def test_powers_off_is_the_plain_step_bit_for_bit(setup):
    """With gan/true-face/style powers at 0 (the defaults) there are no critics, the state has no
    discriminator items, and loss, terms and new parameters equal, bit for bit, those of the plain
    reconstruction step written out here (augment -> model -> step_losses -> grad -> update)."""
    cfg, graphdef, params, batch = setup
    assert make_critics(cfg, jnp.float32) == ({}, {})
    tx = optim.make_optimizer(cfg.train, cfg.seed)
    opts = StepOptions.from_config(cfg)
    state = init_state(params, tx)
    assert set(state) == {"params", "opt_state", "step", "counters"}
    new, metrics = jax.jit(make_train_step(graphdef, tx, opts))(state, batch)

    @jax.jit
    def plain(params, opt_state, batch):
        aug = augmented_inputs(opts, jnp.int32(0), batch)

        def loss(p):
            return step_losses(opts, aug, nnx.merge(graphdef, p)(aug["warped_src"], aug["warped_dst"], swap=False))

        (total, terms), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, _ = tx.update(grads, opt_state, params)
        return total, terms, optax.apply_updates(params, updates)

    total, terms, new_params = plain(params, state["opt_state"], batch)
    assert set(metrics) - set(terms) == {"loss", "grad_norm", "update_norm", "param_norm", "nonfinite"}
    assert float(metrics["loss"]) == float(total)
    for name, value in terms.items():
        assert float(metrics[name]) == float(value), name
    for a, b in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(new_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_style_losses_decode_the_swap_in_the_step(setup):
    """The step decodes the swap only for the style losses (StepOptions.trains_swap). With
    bg_style_power 10 its loss and bg-style term equal step_losses on the full forward (swap
    included) recomputed here (rtol 1e-6); face style adds its own positive term."""
    cfg, graphdef, params, batch = setup
    tx = optim.make_optimizer(cfg.train, cfg.seed)
    plain = StepOptions.from_config(cfg)
    assert not plain.trains_swap
    bg = dataclasses.replace(plain, bg_style_power=10.0)
    assert bg.trains_swap
    _, metrics = jax.jit(make_train_step(graphdef, tx, bg))(init_state(params, tx), batch)

    @jax.jit
    def reference(params, batch):
        aug = augmented_inputs(bg, jnp.int32(0), batch)
        return step_losses(bg, aug, nnx.merge(graphdef, params)(aug["warped_src"], aug["warped_dst"]))

    total, terms = reference(params, batch)
    assert float(terms["src_bg_style"]) > 0
    np.testing.assert_allclose(float(metrics["src_bg_style"]), float(terms["src_bg_style"]), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["loss"]), float(total), rtol=1e-6)
    face = dataclasses.replace(plain, face_style_power=10.0)
    _, metrics = jax.jit(make_train_step(graphdef, tx, face))(init_state(params, tx), batch)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["src_face_style"]) > 0


def _bce64(logits, label: float) -> np.ndarray:
    """Sigmoid cross-entropy in float64, per sample (mean over the logit map)."""
    x = np.asarray(logits, np.float64).reshape(len(logits), -1)
    return (np.maximum(x, 0) - x * label + np.log1p(np.exp(-np.abs(x)))).mean(axis=1)


def test_true_face_step_matches_the_reference_code_discriminator_loss(setup):
    """DF tiny, true_face_power 0.01 (DFL_SPEC §3.4): the step's code-discriminator loss is
    ½[BCE(1, D(z_dst)) + BCE(0, D(z_src))] and its generator term tfp·BCE(1, D(z_src)), both
    recomputed here in float64 from the same codes and logits (rtol 1e-5: float32 step vs float64;
    swapping real and fake moves the D loss by 3e-3 relative), and D's parameters move. With the
    power 0 there is no code discriminator in the state at all."""
    _, _, _, batch = setup
    cfg = saehd.get_config("tiny-df")
    cfg.train.update(batch_size=B, true_face_power=0.01)
    graphdef, params = init_model(cfg, jnp.float32)
    critics, critic_params = make_critics(cfg, jnp.float32)
    tx = optim.make_optimizer(cfg.train, cfg.seed)
    opts = StepOptions.from_config(cfg)
    new, metrics = jax.jit(make_train_step(graphdef, tx, opts, critics))(
        init_state(params, tx, critics, critic_params), batch)

    @jax.jit
    def logits(params, disc_params, batch):
        aug = augmented_inputs(opts, jnp.int32(0), batch)
        z_src, z_dst, _ = nnx.merge(graphdef, params).inter_codes(aug["warped_src"], aug["warped_dst"])
        disc = nnx.merge(critics["code_disc"].graphdef, disc_params)
        return disc(z_src), disc(z_dst)

    fake, real = logits(params, critic_params["code_disc"], batch)
    want_d = np.mean(0.5 * (_bce64(real, 1.0) + _bce64(fake, 0.0)))
    want_g = np.mean(0.01 * _bce64(fake, 1.0))
    np.testing.assert_allclose(float(metrics["code_disc_loss"]), want_d, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["true_face_loss"]), want_g, rtol=1e-5)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new["code_disc_params"]),
                                                         jax.tree.leaves(critic_params["code_disc"])))
    cfg.train.true_face_power = 0.0
    assert make_critics(cfg, jnp.float32) == ({}, {})


# ---------------------------------------------------------------------------------------------
# GAN in the trainer: switched on mid-run, learning, and re-initialised on a patch-size change
# ---------------------------------------------------------------------------------------------

GAN_STEPS = 30


def _tiny_run(faceset: str, workdir, max_steps: int, **train) -> tuple[dict, dict]:
    """(metrics by step, final host state) of a tiny SAEHD run with cfg.train overrides."""
    cfg = saehd.get_config("tiny")
    cfg.train.update(max_steps=max_steps, **train)
    cfg.log.update(every_steps=1, preview_every_steps=1000)
    cfg.checkpoint.update(every_steps=1000, every_minutes=0.0)
    trainer = Trainer(cfg, faceset, faceset, str(workdir), progress=False)
    try:
        trainer.run()
        return _metrics(workdir), jax.device_get(trainer.state)
    finally:
        trainer.close()


@pytest.fixture(scope="module")
def gan_resume(tmp_path_factory):
    """A pre-GAN run of 2 steps, then the same workdir resumed with gan_power on for GAN_STEPS."""
    root = tmp_path_factory.mktemp("gan")
    faceset = str(root / "faces")
    build(faceset, 24, 64)
    _, pre = _tiny_run(faceset, root / "run", 2)
    assert "disc_params" not in pre
    metrics, state = _tiny_run(faceset, root / "run", 2 + GAN_STEPS, gan_power=0.1, gan_patch_size=16, lr=5e-4)
    return faceset, root / "run", metrics, state


def test_pre_gan_checkpoint_resumes_into_a_gan_run(gan_resume):
    """The checkpoint of step 2 has no discriminator items: the GAN run resumes from it (step 3 is
    its first logged step) with a fresh discriminator, and its own checkpoint holds them."""
    _, workdir, metrics, state = gan_resume
    gan_steps = sorted(s for s, r in metrics.items() if "disc_loss" in r)
    assert gan_steps == list(range(3, 3 + GAN_STEPS))
    assert int(state["step"]) == 2 + GAN_STEPS
    saved = os.listdir(os.path.join(workdir, "checkpoints", str(2 + GAN_STEPS)))
    assert {"discriminator", "disc_optimizer", "generator", "optimizer"} <= set(saved)
    assert "discriminator" not in os.listdir(os.path.join(workdir, "checkpoints", "2"))


def test_gan_discriminator_learns_while_the_generator_reconstructs(gan_resume):
    """Over GAN_STEPS steps the discriminator's loss falls from ~2·log 2 (undecided) and the dst
    reconstruction loss still falls: means of the first and last 5 steps, measured 1.372 -> 1.246
    and 5.65 -> 4.06 (2-core CPU). lr 5e-4 and patch 16 (3 levels) so that 30 steps suffice."""
    _, _, metrics, _ = gan_resume
    steps = sorted(s for s, r in metrics.items() if "disc_loss" in r)
    first, last = steps[:5], steps[-5:]
    mean = lambda key, ss: float(np.mean([metrics[s][key] for s in ss]))  # noqa: E731
    assert abs(metrics[steps[0]]["disc_loss"] - 2 * np.log(2)) < 0.05
    assert mean("disc_loss", last) < mean("disc_loss", first) - 0.02
    assert mean("dst_loss", last) < mean("dst_loss", first) - 0.05
    assert all(np.isfinite(metrics[s]["gan_loss"]) and metrics[s]["gan_loss"] > 0 for s in steps)


def test_changed_gan_patch_size_reinitialises_the_discriminator(gan_resume, tmp_path, capsys):
    """Resuming the GAN run with another gan_patch_size (16 -> 8: 3 -> 2 levels) warns and starts
    the discriminator afresh (the checkpoint's has other shapes); the generator is restored. No
    step runs (max_steps is the checkpoint's step), so the state holds the fresh initialisation."""
    faceset, workdir, _, trained = gan_resume
    shutil.copytree(workdir, tmp_path / "run")
    _, state = _tiny_run(faceset, tmp_path / "run", 2 + GAN_STEPS, gan_power=0.1, gan_patch_size=8, lr=5e-4)
    assert "gan_patch_size 16 -> 8: the GAN discriminator is re-initialised" in capsys.readouterr().out
    cfg = saehd.get_config("tiny")
    cfg.train.update(gan_power=0.1, gan_patch_size=8)
    fresh = make_critics(cfg, jnp.float32)[1]["disc"]
    assert len(state["disc_params"]["convs"]) == 2
    for a, b in zip(jax.tree.leaves(state["disc_params"]), jax.tree.leaves(fresh)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(state["disc_opt_state"][-1].count) == 0  # lr_dropout's update counter: a new optimiser
    for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(trained["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
