"""DFL's optimisers (DFL_SPEC §3.5) against float64 NumPy loops of the spec's update equations.

Tolerance: |actual − expected| ≤ 1e-6·(|expected| + max|expected of that step|): float32 arithmetic
is good to a few 1e-7 relative, except where m = β1·m + (1−β1)·g cancels (gradients changing sign),
which the second term allows for at a scale 1e-6 of the step's largest update.
Gradients span 1e-7..1 so that where ε sits (outside vs inside the root) and bias correction
matter; optax's stock optimisers are shown to miss the reference by far more than the tolerance.
"""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from engine import optim
from preprocessing.errors import UserError

RTOL = 1e-6
LR = 5e-5
SHAPES = {"enc": {"kernel": (6, 5), "bias": (5,)}, "inter_AB": {"kernel": (4, 7)}}


def random_tree(rng: np.random.Generator, scale_spread: bool = True) -> dict:
    """A params-shaped tree of float32 values whose magnitudes span 1e-7..1 (log-uniform)."""
    def leaf(shape):
        sign = rng.choice([-1.0, 1.0], size=shape)
        magnitude = 10.0 ** rng.uniform(-7, 0, size=shape) if scale_spread else rng.uniform(0.1, 1, size=shape)
        return (sign * magnitude).astype(np.float32)
    return jax.tree.map(leaf, SHAPES, is_leaf=lambda x: isinstance(x, tuple))


def flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


@pytest.fixture(scope="module")
def grad_steps():
    rng = np.random.default_rng(0)
    return [random_tree(rng) for _ in range(5)]


@pytest.fixture(scope="module")
def params():
    return random_tree(np.random.default_rng(1), scale_spread=False)


def run(tx: optax.GradientTransformation, params, grads_seq, state=None) -> list[np.ndarray]:
    """Flattened updates of `tx` for each gradient in turn."""
    state = tx.init(params) if state is None else state
    update = jax.jit(tx.update)
    out = []
    for grads in grads_seq:
        updates, state = update(grads, state, params)
        out.append(flat(updates))
    return out


def reference_adabelief(grads_seq, lr_t, b1=0.9, b2=0.999, eps=1e-6) -> list[np.ndarray]:
    """§3.5 in float64: no bias correction, v uses the new m, ε outside the root."""
    m = v = 0.0
    out = []
    for t, g in enumerate(grads_seq):
        g = flat(g)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * (g - m) ** 2
        out.append(-lr_t(t) * m / (np.sqrt(v) + eps))
    return out


def reference_rmsprop(grads_seq, lr_t, rho=0.9, eps=1e-6) -> list[np.ndarray]:
    a = 0.0
    out = []
    for t, g in enumerate(grads_seq):
        g = flat(g)
        a = rho * a + (1 - rho) * g**2
        out.append(-lr_t(t) * g / (np.sqrt(a) + eps))
    return out


def max_rel_error(actual: list[np.ndarray], expected: list[np.ndarray]) -> float:
    """Largest |a − e| / (|e| + max|e|) over the steps (see the module docstring)."""
    return max(float(np.max(np.abs(a - e) / (np.abs(e) + np.abs(e).max()))) for a, e in zip(actual, expected))


def train_cfg(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(
        {"optimizer": "adabelief", "lr": LR, "lr_dropout": False, "clipgrad": False})
    cfg.update(overrides)
    return cfg


def test_adabelief_matches_spec_and_optax_stock_does_not(params, grad_steps):
    expected = reference_adabelief(grad_steps, lambda t: LR)
    assert max_rel_error(run(optim.dfl_adabelief(LR), params, grad_steps), expected) < RTOL
    stock = run(optax.adabelief(LR, b1=0.9, b2=0.999, eps=1e-6), params, grad_steps)
    assert max_rel_error(stock, expected) > 1000 * RTOL


def test_rmsprop_matches_spec_and_optax_stock_does_not(params, grad_steps):
    expected = reference_rmsprop(grad_steps, lambda t: LR)
    assert max_rel_error(run(optim.dfl_rmsprop(LR), params, grad_steps), expected) < RTOL
    stock = run(optax.rmsprop(LR, decay=0.9, eps=1e-6), params, grad_steps)
    assert max_rel_error(stock, expected) > 1000 * RTOL


def test_make_optimizer_picks_the_optimizer(params, grad_steps):
    for name, reference in (("adabelief", reference_adabelief), ("rmsprop", reference_rmsprop)):
        tx = optim.make_optimizer(train_cfg(optimizer=name), seed=0)
        assert max_rel_error(run(tx, params, grad_steps), reference(grad_steps, lambda t: LR)) < RTOL


def test_lr_cosine_factor_at_key_steps():
    schedule = optim.lr_schedule(2.0, 500)
    factors = [float(schedule(jnp.int32(t))) / 2.0 for t in (0, 125, 250, 375, 500, 100_125)]
    np.testing.assert_allclose(factors, [1.0, 0.5, 0.0, 0.5, 1.0, 0.5], atol=1e-6)
    assert float(optim.lr_schedule(2.0, 0)(jnp.int32(250))) == 2.0


def test_lr_cos_scales_the_update_by_the_optimizer_step(params):
    """With lr_cos=500 and no dropout, each step's update is the constant-lr update times the factor."""
    grads = random_tree(np.random.default_rng(2))
    with_cos = optim.make_optimizer(train_cfg(optimizer="rmsprop", lr_cos=500), seed=0)
    plain = optim.make_optimizer(train_cfg(optimizer="rmsprop"), seed=0)
    update_cos, update_plain = jax.jit(with_cos.update), jax.jit(plain.update)
    state_cos, state_plain = with_cos.init(params), plain.init(params)
    ratios = {}
    for step in range(501):
        u_cos, state_cos = update_cos(grads, state_cos)
        u_plain, state_plain = update_plain(grads, state_plain)
        if step in (0, 125, 250, 500):
            ratios[step] = flat(u_cos) / flat(u_plain)
    for step, factor in ((0, 1.0), (125, 0.5), (250, 0.0), (500, 1.0)):
        np.testing.assert_allclose(ratios[step], factor, atol=1e-6, err_msg=f"step {step}")


def dropout_output(tx, state, n: int = 100_000):
    """The mask lr_dropout applies: its output for all-ones updates."""
    ones = {"a": jnp.ones((n // 4, 2)), "b": jnp.ones((n // 2,))}
    out, state = jax.jit(tx.update)(ones, state)
    return np.concatenate([np.ravel(out["a"]), np.ravel(out["b"])]), state


def test_lr_dropout_keep_rate_and_determinism():
    tx = optim.lr_dropout(keep=0.3, seed=7)
    params = {"a": jnp.zeros((25_000, 2)), "b": jnp.zeros((50_000,))}
    state = tx.init(params)
    masks = []
    for _ in range(3):
        mask, state = dropout_output(tx, state)
        masks.append(mask)
    assert set(np.unique(masks[0])) == {0.0, 1.0}  # kept elements are not rescaled
    leaf_a, leaf_b = masks[0][:50_000], masks[0][50_000:]  # two leaves of 50 000 elements each
    assert abs(np.mean(leaf_a == leaf_b) - 0.58) < 0.02  # each leaf draws its own mask
    for mask in masks:
        assert abs(mask.mean() - 0.3) < 0.01
    # A fresh mask each step, independent of the last: agreement ≈ 0.3² + 0.7² = 0.58.
    assert abs(np.mean(masks[0] == masks[1]) - 0.58) < 0.01
    # The same (seed, step) gives the same mask: a restored state (count=2) redraws step 2's mask.
    restored = tx.init(params)._replace(count=jnp.int32(2))
    np.testing.assert_array_equal(dropout_output(tx, restored)[0], masks[2])
    other_seed = optim.lr_dropout(keep=0.3, seed=8)
    assert np.mean(dropout_output(other_seed, other_seed.init(params))[0] == masks[0]) < 0.62


def test_lr_dropout_masks_do_not_depend_on_sharding():
    """On two forced CPU devices, masks drawn for a sharded tree equal those for a single-device one."""
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from engine import optim
        assert jax.device_count() == 2
        tx = optim.lr_dropout(keep=0.3, seed=3)
        tree = {"w": jnp.ones((64, 48)), "b": jnp.ones((32,))}
        state = tx.init(tree)._replace(count=jnp.int32(5))
        single, _ = jax.jit(tx.update)(jax.device_put(tree, jax.devices()[0]), state)
        mesh = Mesh(np.array(jax.devices()), ("data",))
        sharding = NamedSharding(mesh, P("data"))
        sharded, _ = jax.jit(tx.update, out_shardings=(sharding, None))(jax.device_put(tree, sharding), state)
        assert len(sharded["w"].sharding.device_set) == 2
        for name in tree:
            np.testing.assert_array_equal(np.asarray(single[name]), np.asarray(sharded[name]))
        print("OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=120)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-2000:]


def test_make_optimizer_with_lr_dropout_matches_reference(params, grad_steps):
    """lr_dropout + its default cosine + clipgrad, 5 steps, against the spec's chain in float64
    (the masks themselves come from optim.lr_dropout_masks)."""
    seed = 11
    tx = optim.make_optimizer(train_cfg(lr_dropout=True, clipgrad=True), seed)
    key = jax.random.key_data(jax.random.key(seed))
    big_grads = [jax.tree.map(lambda g: 30.0 * g, grads) for grads in grad_steps]  # global norm > 1: clips

    def clipped(grads):
        norm = np.sqrt(np.sum(flat(grads) ** 2))
        return jax.tree.map(lambda g: np.asarray(g, np.float64) / max(1.0, norm), grads)

    expected = reference_adabelief([clipped(g) for g in big_grads],
                                   lambda t: LR * (np.cos(2 * np.pi * t / 500) + 1) / 2)
    expected = [e * flat(optim.lr_dropout_masks(key, jnp.int32(t), params, 0.3)) for t, e in enumerate(expected)]
    actual = run(tx, params, big_grads)
    kept = expected[0] != 0
    assert 0.2 < kept.mean() < 0.4
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a == 0, e == 0)
    assert max_rel_error(actual, expected) < RTOL


def test_clipgrad_bounds_the_gradient_by_global_norm(params):
    """Clipping is by the global norm: over 1 the optimiser sees g/‖g‖, at or under 1 it sees g."""
    clip_on = optim.make_optimizer(train_cfg(optimizer="rmsprop", clipgrad=True), seed=0)
    clip_off = optim.make_optimizer(train_cfg(optimizer="rmsprop"), seed=0)
    grads = random_tree(np.random.default_rng(3))
    norm = float(np.sqrt(np.sum(flat(grads) ** 2)))
    large = jax.tree.map(lambda g: g * (50.0 / norm), grads)  # global norm 50
    small = jax.tree.map(lambda g: g * (0.5 / norm), grads)  # global norm 0.5
    unit = jax.tree.map(lambda g: g / 50.0, large)
    # RMSprop with ε = 1e-6 is not scale invariant: elements that clipping brings near ε move less.
    assert max_rel_error(run(clip_on, params, [large]), run(clip_off, params, [large])) > 100 * RTOL
    assert max_rel_error(run(clip_on, params, [large]), run(clip_off, params, [unit])) < RTOL
    assert max_rel_error(run(clip_on, params, [small]), run(clip_off, params, [small])) < RTOL
    # The first RMSprop step from g/‖g‖ is -lr·ĝ/(√0.1·|ĝ| + ε): the update's norm is at most lr·√(N/0.1).
    n = flat(params).size
    assert np.linalg.norm(run(clip_on, params, [large])[0]) <= LR * np.sqrt(n / 0.1)


def test_state_structure_survives_switches_but_not_optimizer_type(params):
    structures = {
        (name, dropout, clip): jax.tree.structure(
            optim.make_optimizer(train_cfg(optimizer=name, lr_dropout=dropout, clipgrad=clip), 0).init(params))
        for name in ("adabelief", "rmsprop") for dropout in (False, True) for clip in (False, True)}
    assert len({s for (name, _, _), s in structures.items() if name == "adabelief"}) == 1
    assert len({s for (name, _, _), s in structures.items() if name == "rmsprop"}) == 1
    assert len(set(structures.values())) == 2


def test_bad_optimizer_name_is_a_user_error():
    with pytest.raises(UserError, match="train.optimizer"):
        optim.make_optimizer(train_cfg(optimizer="adam"), seed=0)


def test_freeze_holds_frozen_leaves_and_excludes_them_from_clipping(params, grad_steps):
    cfg = train_cfg(clipgrad=True)
    frozen_tx = optim.make_optimizer(cfg, 0, frozen=("inter_AB",))  # optim.freeze on the path names
    big = [jax.tree.map(lambda g: 30.0 * g, grads) for grads in grad_steps]
    # Reference: the same optimiser on the trainable leaves only (DFL leaves InterAB out of it).

    def trainable(tree):
        return {"enc": tree["enc"]}

    expected = run(optim.make_optimizer(cfg, 0), trainable(params), [trainable(g) for g in big])
    state = frozen_tx.init(params)
    assert jax.tree.structure(state) == jax.tree.structure(optim.make_optimizer(cfg, 0).init(params))
    update = jax.jit(frozen_tx.update)
    actual = []
    for grads in big:
        updates, state = update(grads, state, params)
        assert not np.any(np.asarray(updates["inter_AB"]["kernel"]))
        actual.append(flat(trainable(updates)))
    assert max_rel_error(actual, expected) < RTOL
