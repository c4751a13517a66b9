"""DFL's optimisers and learning-rate tricks as optax transformations (DFL_SPEC §3.5, §3.8).

optax's stock `adabelief` and `rmsprop` are not DFL's: they bias-correct the moments and/or put
ε inside the square root. DFL's versions have no bias correction and ε = 1e-6 outside the root:

    AdaBelief: m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·(g − m)² (new m);  Δw = −lr·m/(√v + ε)
    RMSprop:   a ← ρ·a + (1−ρ)·g²;  Δw = −lr·g/(√a + ε)

The spec gives RMSprop's ε no value; we use AdaBelief's 1e-6 (float32's resolution) for both.

`make_optimizer` chains: global-norm clip (clipgrad) → the optimiser's scaling → learning rate (with
lr_dropout's 500-step cosine) → lr_dropout's Bernoulli mask on the update. The state has the same
structure whatever the clipgrad / lr_dropout / lr_cos switches, so those can change on resume and
the saved optimiser state still restores; only the optimiser type changes its structure.

Config fields read from cfg.train: optimizer (adabelief|rmsprop), lr, lr_dropout, clipgrad, and the
optional `lr_cos` (cosine period in steps; absent means DFL's default: 500 with lr_dropout, else
off; Quick96 and XSeg use lr_dropout with lr_cos = 0).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from preprocessing.errors import UserError

EPS = 1e-6  # np.finfo(np.float32).resolution, DFL's ε
LR_DROPOUT_KEEP = 0.3
LR_COS_PERIOD = 500
CLIP_NORM = 1.0


class DflAdaBeliefState(NamedTuple):
    mu: optax.Updates  # m, first moment
    nu: optax.Updates  # v, variance of the gradient around m


class DflRmsState(NamedTuple):
    nu: optax.Updates  # a, running mean of g²


def _zeros_like(params: optax.Params) -> optax.Updates:
    return jax.tree.map(jnp.zeros_like, params)


def scale_by_dfl_adabelief(b1: float = 0.9, b2: float = 0.999,
                           eps: float = EPS) -> optax.GradientTransformation:
    """AdaBelief's direction m/(√v + ε) without bias correction (multiply by −lr to get DFL's step)."""

    def init_fn(params: optax.Params) -> DflAdaBeliefState:
        return DflAdaBeliefState(mu=_zeros_like(params), nu=_zeros_like(params))

    def update_fn(updates: optax.Updates, state: DflAdaBeliefState, params: optax.Params | None = None):
        mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g, m: b2 * v + (1.0 - b2) * (g - m) ** 2, state.nu, updates, mu)
        direction = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        return direction, DflAdaBeliefState(mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_dfl_rms(rho: float = 0.9, eps: float = EPS) -> optax.GradientTransformation:
    """RMSprop's direction g/(√a + ε), ε outside the root (multiply by −lr to get DFL's step)."""

    def init_fn(params: optax.Params) -> DflRmsState:
        return DflRmsState(nu=_zeros_like(params))

    def update_fn(updates: optax.Updates, state: DflRmsState, params: optax.Params | None = None):
        nu = jax.tree.map(lambda a, g: rho * a + (1.0 - rho) * g**2, state.nu, updates)
        direction = jax.tree.map(lambda g, a: g / (jnp.sqrt(a) + eps), updates, nu)
        return direction, DflRmsState(nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def lr_schedule(lr: float, cos_period: int = 0) -> optax.Schedule:
    """lr_t = lr·(cos(2π·t/period) + 1)/2 on the optimiser's step counter t (t = 0 on the first
    update), or a constant lr when cos_period is 0. Always a schedule, so the state keeps a counter."""
    if cos_period <= 0:
        return optax.constant_schedule(lr)
    # count mod period keeps the float32 angle small (exact) however long training runs.
    return lambda count: lr * (jnp.cos(2.0 * jnp.pi * (count % cos_period) / cos_period) + 1.0) / 2.0


def dfl_adabelief(lr: float | optax.Schedule, b1: float = 0.9, b2: float = 0.999,
                  eps: float = EPS) -> optax.GradientTransformation:
    """DFL's AdaBelief: Δw = −lr·m/(√v + ε), no bias correction."""
    return optax.chain(scale_by_dfl_adabelief(b1, b2, eps), optax.scale_by_learning_rate(lr))


def dfl_rmsprop(lr: float | optax.Schedule, rho: float = 0.9,
                eps: float = EPS) -> optax.GradientTransformation:
    """DFL's RMSprop: Δw = −lr·g/(√a + ε)."""
    return optax.chain(scale_by_dfl_rms(rho, eps), optax.scale_by_learning_rate(lr))


class LrDropoutState(NamedTuple):
    count: jax.Array  # int32 [], updates applied so far: the step the next mask is drawn for
    key: jax.Array  # uint32 raw key data of the seed


def lr_dropout_masks(key: jax.Array, step: jax.Array, tree: optax.Updates, keep: float) -> optax.Updates:
    """Bernoulli(keep) masks shaped like `tree`'s leaves, a pure function of (key, step, leaf order).

    JAX draws the same random bits whatever the sharding (the default partitionable threefry does
    it without gathering), so the masks do not depend on the device count.
    """
    leaves, treedef = jax.tree.flatten(tree)
    step_key = jax.random.fold_in(jax.random.wrap_key_data(key), step)
    masks = [jax.random.bernoulli(jax.random.fold_in(step_key, i), keep, leaf.shape)
             for i, leaf in enumerate(leaves)]
    return jax.tree.unflatten(treedef, masks)


def lr_dropout(keep: float = LR_DROPOUT_KEEP, seed: int = 0) -> optax.GradientTransformation:
    """DFL's lr_dropout: each update element is kept with probability `keep`, else zeroed (no rescale).

    A fresh mask every step, drawn from (seed, step) held in the state, so a restored state draws
    the same masks as an uninterrupted run. keep=1 passes updates through (the counter still runs).
    """

    def init_fn(params: optax.Params) -> LrDropoutState:
        return LrDropoutState(count=jnp.zeros([], jnp.int32), key=jax.random.key_data(jax.random.key(seed)))

    def update_fn(updates: optax.Updates, state: LrDropoutState, params: optax.Params | None = None):
        if keep < 1.0:
            masks = lr_dropout_masks(state.key, state.count, updates, keep)
            updates = jax.tree.map(lambda u, m: u * m.astype(u.dtype), updates, masks)
        return updates, LrDropoutState(count=state.count + 1, key=state.key)

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(train_cfg: ml_collections.ConfigDict, seed: int,
                   frozen: Sequence[str] = ()) -> optax.GradientTransformation:
    """The generator's optimiser from cfg.train (see the module docstring for the fields).

    `frozen` names components (e.g. "inter_AB") whose parameters are held still: any leaf with one
    of these names in its path (see `freeze`). Freezing leaves the state's structure unchanged.
    """
    name = train_cfg.optimizer
    if name not in ("adabelief", "rmsprop"):
        raise UserError(f"--config.train.optimizer={name!r}: choose adabelief or rmsprop")
    if not train_cfg.lr > 0:
        raise UserError(f"--config.train.lr={train_cfg.lr}: must be positive")
    cos_period = train_cfg.get("lr_cos", None)
    if cos_period is None:
        cos_period = LR_COS_PERIOD if train_cfg.lr_dropout else 0
    scale = scale_by_dfl_adabelief() if name == "adabelief" else scale_by_dfl_rms()
    tx = optax.chain(
        optax.clip_by_global_norm(CLIP_NORM) if train_cfg.clipgrad else optax.identity(),
        scale,
        optax.scale_by_learning_rate(lr_schedule(train_cfg.lr, cos_period)),
        lr_dropout(LR_DROPOUT_KEEP if train_cfg.lr_dropout else 1.0, seed),
    )
    if frozen:
        frozen_names = frozenset(frozen)
        tx = freeze(tx, lambda names: not frozen_names.isdisjoint(names))
    return tx


def path_names(path: tuple[Any, ...]) -> tuple[str, ...]:
    """A JAX key path as plain names: dict keys, attribute names and sequence indices as strings."""
    names = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                names.append(str(getattr(entry, attr)))
                break
    return tuple(names)


def freeze(tx: optax.GradientTransformation,
           is_frozen: Callable[[tuple[str, ...]], bool]) -> optax.GradientTransformation:
    """`tx` with the leaves whose path `is_frozen` (e.g. `lambda names: "inter_AB" in names`) held still.

    Frozen leaves get zero gradients into `tx` (so they do not count in clipgrad's global norm, as in
    DFL, where they are not in the optimiser at all) and zero updates out. Unlike optax.masked or
    multi_transform, the state keeps every leaf, so freezing can be switched on resume (LIAE's
    InterAB with random_warp) and checkpoints still restore. The price: a frozen leaf's moments still
    move (they see zero gradients: m decays) where DFL's optimiser would not touch them. `is_frozen` is evaluated at trace
    time on the path names (see `path_names`).
    """

    def zero_frozen(tree: optax.Updates) -> optax.Updates:
        return jax.tree_util.tree_map_with_path(
            lambda path, leaf: jnp.zeros_like(leaf) if is_frozen(path_names(path)) else leaf, tree)

    def update_fn(updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None):
        new_updates, state = tx.update(zero_frozen(updates), state, params)
        return zero_frozen(new_updates), state

    return optax.GradientTransformation(tx.init, update_fn)
