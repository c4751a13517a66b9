"""Memory savers: rematerialisation, optimiser state in host memory, bf16 gradient all-reduce.

References: the same computation without the saver (float32, same device), compiled memory
analyses, the compiled programs' HLO text, and for the bf16 reduction the float32 mean of the
per-device gradients. Tolerances are stated where they are used.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from benchmarks.data_throughput import build
from configs import saehd
from engine import memory_savers
from engine.train_step import StepOptions, init_state, make_eval_step, make_train_step
from engine.trainer import Trainer, init_model, validate_config
from preprocessing.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Remat recomputes the same float32 ops; XLA may fuse the recomputation differently, so gradients
# can differ by float32 rounding: measured <= 1.3e-6 of the largest gradient on a 2-core x86 CPU.
REMAT_TOL = 1e-5  # absolute, as a fraction of the largest gradient


@pytest.fixture(scope="module")
def tiny():
    cfg = saehd.get_config("tiny")
    graphdef, params = init_model(cfg, jnp.float32)
    keys = jax.random.split(jax.random.key(0), 2)
    src, dst = (jax.random.uniform(k, (4, 32, 32, 3)) for k in keys)
    return cfg, graphdef, params, src, dst


def _model_loss_grad(graphdef, remat: str, src, dst):
    """value_and_grad of a reconstruction MSE through the model with `remat` applied as the step does."""
    def loss(params):
        model = nnx.merge(graphdef, params)
        memory_savers.rematerialise(model, remat)
        out = model(src, dst)
        return jnp.mean((out["pred_src_src"] - src) ** 2) + jnp.mean((out["pred_dst_dst"] - dst) ** 2)

    return jax.jit(jax.value_and_grad(loss))


def test_remat_policies_keep_loss_and_gradients_and_cut_temp_memory(tiny):
    cfg, graphdef, params, src, dst = tiny
    results = {}
    for remat in ("none", "dots", "full"):
        compiled = _model_loss_grad(graphdef, remat, src, dst).lower(params).compile()
        loss, grads = compiled(params)
        results[remat] = (float(loss), grads, compiled.memory_analysis().temp_size_in_bytes)
    loss0, grads0, temp0 = results["none"]
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads0))
    for remat in ("dots", "full"):
        loss, grads, temp = results[remat]
        assert loss == pytest.approx(loss0, rel=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads0)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=REMAT_TOL * scale, rtol=0)
        # Measured on this CPU: 10.3 MB without remat, 7.1 MB dots, 7.7 MB full (tiny, batch 4).
        assert temp < 0.9 * temp0, (remat, temp, temp0)


def test_remat_wraps_only_the_named_components(tiny):
    cfg, graphdef, params, _, _ = tiny
    model = nnx.merge(graphdef, params)
    memory_savers.rematerialise(model, "Full:decoder, inter_AB")
    wrapped = {name for name, part in model.components().items()
               if isinstance(part, memory_savers.Rematerialised)}
    assert wrapped == {"decoder", "inter_AB"}
    assert memory_savers.parse_remat("dots", ("a", "b")) == ("dots", ("a", "b"))
    assert memory_savers.parse_remat("none:a", ("a", "b")) == ("none", ())


@pytest.mark.parametrize("field, value, message", [
    ("remat", "some", r"train.remat='some': choose none \| dots \| full"),
    ("remat", "full:inter", r"the model has no component inter; choose from encoder, inter_AB, inter_B, decoder"),
    ("grad_allreduce_dtype", "float16", r"grad_allreduce_dtype='float16': choose float32 or bfloat16"),
])
def test_bad_memory_options_are_refused(field, value, message):
    cfg = saehd.get_config("tiny")
    cfg.train[field] = value
    with pytest.raises(UserError, match=message):
        validate_config(cfg)


def test_bf16_reduction_refuses_fsdp_and_uneven_micro_batches():
    cfg = saehd.get_config("tiny")
    cfg.train.grad_allreduce_dtype = "bfloat16"
    cfg.mesh.fsdp = 2
    with pytest.raises(UserError, match=r"only for data parallelism; FSDP \(mesh.fsdp=2\)"):
        memory_savers.validate_memory_options(cfg, 4)
    cfg.mesh.fsdp, cfg.train.batch_size, cfg.train.micro_batches = 1, 4, 2
    with pytest.raises(UserError, match=r"each of the 4 devices needs a batch slice divisible by "
                                        r"train.micro_batches=2"):
        memory_savers.validate_memory_options(cfg, 4)


def _uint8_batch(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    eye = np.tile(np.array([[1, 0, 0], [0, 1, 0]], np.float32), (4, 1, 1))

    def side(offset: int) -> dict:
        return {"faces": jnp.asarray(rng.integers(0, 256, (4, 32, 32, 3), np.uint8)),
                "masks": jnp.asarray(rng.integers(0, 2, (4, 32, 32, 1), np.uint8) * 255),
                "eyes_mouth_masks": jnp.zeros((4, 32, 32, 1), jnp.uint8),
                "base_matrices": jnp.asarray(eye), "sample_ids": jnp.arange(offset, offset + 4, dtype=jnp.int32)}

    return {"src": side(0), "dst": side(100)}


def test_train_step_wires_remat(tiny):
    """The step's program holds remat regions only when asked for (the eval step never does)."""
    cfg, graphdef, params, _, _ = tiny
    tx = optax.adam(1e-3)
    plain = StepOptions.from_config(cfg)
    for remat, regions in (("none", 0), ("full", 4)):  # liae: encoder, inter_AB, inter_B, decoder
        jaxpr = str(jax.make_jaxpr(make_train_step(graphdef, tx, dataclasses.replace(plain, remat=remat)))(
            init_state(params, tx), _uint8_batch(0)))
        # Each rematerialised region is one remat primitive with its prevent_cse parameter.
        assert jaxpr.count("prevent_cse=") >= regions and (regions or "prevent_cse=" not in jaxpr)
    eval_jaxpr = str(jax.make_jaxpr(make_eval_step(graphdef, dataclasses.replace(plain, remat="full")))(
        params, _uint8_batch(0), jnp.int32(0)))
    assert "prevent_cse=" not in eval_jaxpr


def test_fsdp_steps_keep_every_convolution(tiny):
    """Under an fsdp axis the train and eval steps trace every conv as a convolution (the CPU
    matmul path would make the partitioner all-reduce patch gradients); without one, on a CPU, the
    small maps are matmuls. Only the mesh's shape matters, so an abstract 1x2 mesh stands in."""
    cfg, graphdef, params, _, _ = tiny
    tx = optax.adam(1e-3)
    opts = StepOptions.from_config(cfg)
    fsdp = jax.sharding.AbstractMesh((1, 2), ("data", "fsdp"))

    def convs(mesh):
        train = str(jax.make_jaxpr(make_train_step(graphdef, tx, opts, mesh=mesh))(init_state(params, tx),
                                                                                   _uint8_batch(0)))
        evaluate = str(jax.make_jaxpr(make_eval_step(graphdef, opts, mesh))(params, _uint8_batch(0), jnp.int32(0)))
        return train.count("conv_general_dilated"), evaluate.count("conv_general_dilated")

    (train_plain, eval_plain), (train_fsdp, eval_fsdp) = convs(None), convs(fsdp)
    if jax.default_backend() == "cpu":
        assert train_fsdp > train_plain > 0 and eval_fsdp > eval_plain > 0
    else:  # no matmul path off the CPU
        assert (train_fsdp, eval_fsdp) == (train_plain, eval_plain)


def test_opt_on_host_switched_on_at_resume_continues_the_run_exactly(tmp_path):
    """The trainer's wiring: 2 plain steps, then a resume with the optimiser state in host memory
    (pinned_host arrays; the compiled step's parameters and outputs in host memory space S(5)),
    log the same losses as 4 plain steps (exact resume: same data, same float32 ops)."""
    build(str(tmp_path / "faces"), 16, 64)

    def train(workdir: str, steps: int, on_host: bool) -> tuple[list[float], set, str]:
        cfg = saehd.get_config("tiny")
        cfg.train.update(max_steps=steps, opt_on_host=on_host)
        cfg.checkpoint.every_minutes, cfg.log.every_steps = 0, 1
        trainer = Trainer(cfg, str(tmp_path / "faces"), str(tmp_path / "faces"), workdir, progress=False)
        try:
            trainer.run()
            kinds = {leaf.sharding.memory_kind for leaf in jax.tree.leaves(trainer.state["opt_state"])}
            layout = trainer.step_fn.as_text().splitlines()[0]  # HloModule ... entry_computation_layout
        finally:
            trainer.close()
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            return [json.loads(line)["loss"] for line in f], kinds, layout

    reference, _, plain_layout = train(str(tmp_path / "plain"), 4, False)
    train(str(tmp_path / "switched"), 2, False)
    losses, kinds, layout = train(str(tmp_path / "switched"), 4, True)
    assert kinds == {"pinned_host"}
    assert "S(5)" in layout and "S(5)" not in plain_layout
    assert len(losses) == 4 and losses[-1] != losses[0]
    np.testing.assert_allclose(losses, reference, rtol=1e-6)


FOUR_DEVICE_REDUCTION = textwrap.dedent("""
    import json, re, sys
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from configs import saehd
    from engine import parallel
    from benchmarks.hlo_collectives import collective_bytes
    from engine.grad_reduce import data_parallel_gradients
    from engine.trainer import init_model

    assert jax.device_count() == 4
    cfg = saehd.get_config("tiny")
    graphdef, params = init_model(cfg, jnp.float32)
    mesh = parallel.make_mesh(cfg.mesh)
    keys = jax.random.split(jax.random.key(0), 2)
    aug = {k: jax.random.uniform(key, (8, 32, 32, 3)) for k, key in zip(("src", "dst"), keys)}

    def compute(params, critic_params, aug):  # the step's contract: (loss, terms, grads, critics)
        def loss(p):
            out = nnx.merge(graphdef, p)(aug["src"], aug["dst"])
            return (jnp.mean((out["pred_src_src"] - aug["src"]) ** 2)
                    + jnp.mean((out["pred_dst_dst"] - aug["dst"]) ** 2))
        value, grads = jax.value_and_grad(loss)(params)
        return value, {"half": value / 2}, grads, {}

    aug = jax.device_put(aug, parallel.batch_sharding(mesh))
    report = {"params": int(sum(x.size for x in jax.tree.leaves(params)))}
    for dtype in ("float32", "bfloat16"):
        fn = compute if dtype == "float32" else data_parallel_gradients(compute, mesh, dtype)
        jitted = jax.jit(fn, out_shardings=parallel.replicated(mesh))
        lowered = jitted.lower(params, {}, aug)
        compiled = lowered.compile()
        loss, terms, grads, _ = compiled(params, {}, aug)
        # as_hlo_module().to_string() names values with "%", as compiled.as_text() does
        hlo = {"lowered": lowered.compiler_ir("hlo").as_hlo_module().to_string(), "compiled": compiled.as_text()}
        report[dtype] = {"loss": float(loss), "half": float(terms["half"]),
                         "grads": [np.asarray(g, np.float64).ravel().tolist() for g in jax.tree.leaves(grads)],
                         **{f"{k}_bytes": collective_bytes(text, 4).operand_bytes["all-reduce"]
                            for k, text in hlo.items()},
                         # element types of the all-reduce results, e.g. "f32[64,32]" -> "f32"
                         **{f"{k}_types": sorted(set(re.findall(r"([a-z]+\\d+)\\[[\\d,]*\\][^=\\n]* all-reduce(?:-start)?\\(",
                                                                 text))) for k, text in hlo.items()}}
    json.dump(report, open(sys.argv[1], "w"))
""")


def test_bf16_all_reduce_matches_float32_within_bf16_rounding(tmp_path):
    """4 forced CPU devices: per-device gradients averaged in bf16 vs XLA's float32 reduction."""
    out = tmp_path / "report.json"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", FOUR_DEVICE_REDUCTION, str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    fp32, bf16 = report["float32"], report["bfloat16"]
    # Losses are averaged in float32 either way (per-device means, then their mean).
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=1e-6)
    assert bf16["half"] == pytest.approx(fp32["loss"] / 2, rel=1e-6)
    a, b = np.concatenate(bf16["grads"]), np.concatenate(fp32["grads"])
    # bf16 keeps 8 significant bits: each summand is rounded by <= 2^-9 relative, so the gradient
    # vector is within ~2^-9 of the float32 one in norm; 1e-2 leaves room and still catches a
    # missing or doubled reduction (errors of 100% and more).
    assert np.linalg.norm(a - b) <= 1e-2 * np.linalg.norm(b)
    assert np.linalg.norm(a - b) > 0  # the values really went through bf16
    params = report["params"]
    # What the program asks for: bf16 all-reduces of every gradient (2 bytes per parameter) plus
    # the two float32 loss scalars. XLA's own float32 reduction moves 4 bytes per reduced value; it
    # reduces most weight gradients (measured 7.8 MB for the 2.34 M parameters: a few layers reduce
    # their smaller activation gradients instead), still over 1.5x the bf16 bytes.
    assert bf16["lowered_types"] == ["bf16", "f32"] and bf16["lowered_bytes"] == 2 * params + 8
    assert fp32["compiled_types"] == ["f32"] and fp32["compiled_bytes"] > 1.5 * 2 * params
    # XLA:CPU promotes the bf16 all-reduce to float32 when compiling (GPU/TPU keep bf16).
    assert bf16["compiled_types"] == ["f32"]
