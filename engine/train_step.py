"""The SAEHD training step: augmentation, forward, losses, gradients and update in one jitted call.

The whole step runs on the accelerator (DFL's CPU sample generators are its best-known
bottleneck): uint8 faces go in, the step re-crops, warps and recolours them on the device, runs the
autoencoder, computes DFL's losses, and applies the optimiser. It is a pure function of
(state, batch, report) so it compiles once and can be donated and sharded; `report` (a traced bool)
says whether the step's metrics will be read, and only then are update_norm and param_norm computed:

  state = {"params", "opt_state", "step", "counters": {"nonfinite", "skipped"},
           ["disc_params", "disc_opt_state"], ["code_disc_params", "code_disc_opt_state"]}

The bracketed items exist only while their discriminator ("critic") is on: the UNet patch GAN
(train.gan_power > 0) and the true-face code discriminator (train.true_face_power > 0, DF only).
They are separate checkpoint items, so a checkpoint without them restores into a run with them
(the trainer initialises them fresh). Generator and critics are updated in the same compiled step,
from one forward pass: each critic learns from the predictions the generator's update was computed
on. DFL instead runs the critic updates afterwards on a second forward pass of the updated
generator; ours saves that pass and lags the critic by one generator update. With every power 0
(the default) the step is exactly the plain reconstruction step: no critic, no extra computation.

A non-finite loss or gradient (generator or critic) skips the whole update inside the step
(params and optimiser states are kept), counts it in `counters.nonfinite` (consecutive) and
`counters.skipped` (total); the trainer rolls back to the last checkpoint after
`train.nan_patience` consecutive skips.
"""
from __future__ import annotations

import dataclasses
import functools
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from engine import grad_reduce, losses, memory_savers, optim
from engine.augment import augment_batch
from engine.augment.pipeline import SCALE_RANGE
from engine.models import parse_archi
from engine.models.discriminators import CodeDiscriminator, UNetPatchDiscriminator, patch_layers
from engine.models.layers import plain_convolutions
from preprocessing.errors import UserError

Batch = dict[str, dict[str, jax.Array]]
State = dict[str, Any]

QUICK96_SCALE_RANGE = (-0.05, 0.05)  # Quick96's milder zoom (DFL_SPEC §3.8)
QUICK96_NO_WARP_EVERY = 3  # Quick96 trains every 3rd iteration on its previous batch, unwarped


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """Static settings of the compiled step (changing one recompiles)."""

    resolution: int
    seed: int
    masked_training: bool = True
    eyes_mouth_prio: bool = False
    blur_out_mask: bool = False
    random_warp: bool = True
    src_flip: bool = False
    dst_flip: bool = True
    hsv_power: float = 0.0
    ct_mode: str = "none"
    micro_batches: int = 1
    quick96: bool = False  # Quick96's recipe: see QUICK96_* and `reuses_previous_batch`
    gan_power: float = 0.0
    true_face_power: float = 0.0
    face_style_power: float = 0.0  # DFL's 0-100 scale
    bg_style_power: float = 0.0
    remat: str = "none"  # engine/memory_savers.py: policy[:components]
    opt_on_host: bool = False
    grad_allreduce_dtype: str = "float32"  # engine/grad_reduce.py

    @classmethod
    def from_config(cls, cfg) -> "StepOptions":
        t = cfg.train
        return cls(
            resolution=cfg.model.resolution, seed=cfg.seed, masked_training=t.masked_training,
            eyes_mouth_prio=t.eyes_mouth_prio, blur_out_mask=t.blur_out_mask, random_warp=t.random_warp,
            src_flip=t.random_src_flip, dst_flip=t.random_dst_flip, hsv_power=t.random_hsv_power,
            ct_mode=t.ct_mode, micro_batches=t.micro_batches, quick96=cfg.name == "quick96",
            gan_power=t.gan_power, true_face_power=t.true_face_power,
            face_style_power=t.face_style_power, bg_style_power=t.bg_style_power,
            remat=t.remat, opt_on_host=t.opt_on_host,
            grad_allreduce_dtype=t.grad_allreduce_dtype)

    @property
    def trains_swap(self) -> bool:
        """Whether the step decodes the swap: only the style losses read it."""
        return self.face_style_power > 0 or self.bg_style_power > 0


# Inclusive ranges of DFL_SPEC §3.2.
POWER_RANGES = {"gan_power": (0.0, 5.0), "true_face_power": (0.0, 1.0),
                "face_style_power": (0.0, 100.0), "bg_style_power": (0.0, 100.0)}
CRITIC_SEEDS = {"disc": 1, "code_disc": 2}  # folded into cfg.seed: each critic's own init and lr_dropout


def gan_patch_size(cfg) -> int:
    """train.gan_patch_size, where 0 means DFL's default res//8."""
    return cfg.train.gan_patch_size or cfg.model.resolution // 8


def code_resolution(model_cfg) -> int:
    """Side of the DF inter's output (the true-face discriminator's input): res/16, or res/32 with
    -d, doubled by the inter's Upscale unless -t (DFL_SPEC §3.3)."""
    archi = parse_archi(model_cfg.archi)
    low = model_cfg.resolution // (32 if archi.d else 16)
    return low if archi.t else 2 * low


def validate_critic_options(cfg) -> None:
    """The GAN, true-face and style options, each failure one line (UserError)."""
    t = cfg.train
    for name, (lo, hi) in POWER_RANGES.items():
        if not lo <= t[name] <= hi:
            raise UserError(f"--config.train.{name}={t[name]}: must be in [{lo:g}, {hi:g}]")
    if t.gan_patch_size != 0 and not 3 <= t.gan_patch_size <= 640:
        raise UserError(f"--config.train.gan_patch_size={t.gan_patch_size}: must be in 3..640 (0 = res//8)")
    if not 4 <= t.gan_dims <= 512:
        raise UserError(f"--config.train.gan_dims={t.gan_dims}: must be in 4..512")
    if t.true_face_power > 0 and parse_archi(cfg.model.archi).kind != "df":
        raise UserError(f"--config.train.true_face_power={t.true_face_power}: the true-face discriminator "
                        f"needs a df archi (model.archi={cfg.model.archi!r}); set it to 0")
    stride = 2 ** patch_layers(gan_patch_size(cfg)).count(2)
    if t.gan_power > 0 and cfg.model.resolution % stride:
        raise UserError(f"--config.train.gan_patch_size={gan_patch_size(cfg)}: its discriminator strides "
                        f"{stride}x, which does not divide model.resolution={cfg.model.resolution}")


class Critic(NamedTuple):
    """A discriminator's network (pure graph) and optimiser; its parameters live in the state."""
    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation


def make_critics(cfg, dtype: jnp.dtype) -> tuple[dict[str, Critic], dict[str, Any]]:
    """The enabled critics and their initial parameters: "disc", the UNet patch GAN (gan_power > 0;
    gan_patch_size, gan_dims), and "code_disc", the true-face code discriminator (true_face_power >
    0). Each gets the generator's optimiser settings (type, lr, lr_dropout, clipgrad), as in DFL."""
    t = cfg.train
    builders = {}
    if t.gan_power > 0:
        builders["disc"] = lambda rngs: UNetPatchDiscriminator(gan_patch_size(cfg), t.gan_dims, 3,
                                                               dtype=dtype, rngs=rngs)
    if t.true_face_power > 0:
        builders["code_disc"] = lambda rngs: CodeDiscriminator(cfg.model.ae_dims, code_resolution(cfg.model),
                                                               dtype=dtype, rngs=rngs)
    critics, params = {}, {}
    for name, build in builders.items():
        graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(nnx.Rngs(0))))
        init = jax.jit(lambda key: nnx.to_pure_dict(nnx.split(build(nnx.Rngs(params=key)))[1]))  # noqa: B023
        params[name] = init(jax.random.fold_in(jax.random.key(cfg.seed, impl="rbg"), CRITIC_SEEDS[name]))
        critics[name] = Critic(graphdef, optim.make_optimizer(t, cfg.seed + CRITIC_SEEDS[name]))
    return critics, params


def reuses_previous_batch(opts: StepOptions, step: int | jax.Array) -> bool | jax.Array:
    """Quick96's no-warp steps (DFL_SPEC §3.8): at steps 3, 6, 9, ... (the number of steps done
    before, DFL's iteration counter) DFL trains again on the previous step's samples with each
    input replaced by its target. The trainer feeds the previous batch again; the step recognises
    these steps from its traced step counter, so one compiled program serves both kinds.
    Works on Python ints (the trainer) and traced int32 scalars (the step)."""
    if not opts.quick96:
        return False
    return (step % QUICK96_NO_WARP_EVERY == 0) & (step > 0)


def augmented_inputs(opts: StepOptions, step: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """Model inputs and loss targets for one batch (float32, model resolution).

    On a no-warp step the augmentation draws the previous step's randomness (its affine jitter),
    so with the previous batch fed again the targets are exactly that step's.
    """
    no_warp = reuses_previous_batch(opts, step)
    draw_step = jnp.where(no_warp, step - 1, step) if opts.quick96 else step
    return augment_batch(
        opts.seed, draw_step, batch["src"], batch["dst"], resolution=opts.resolution,
        random_warp=opts.random_warp, src_flip=opts.src_flip, dst_flip=opts.dst_flip,
        hsv_power=opts.hsv_power, ct_mode=opts.ct_mode,
        scale_range=QUICK96_SCALE_RANGE if opts.quick96 else SCALE_RANGE, input_is_target=no_warp)


def step_losses(opts: StepOptions, aug: dict[str, jax.Array],
                preds: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The step's reconstruction losses with its options (shared with benchmarks/train_breakdown.py)."""
    return losses.saehd_losses(
        aug, preds, resolution=opts.resolution, masked_training=opts.masked_training,
        eyes_mouth_prio=opts.eyes_mouth_prio, blur_out_mask=opts.blur_out_mask, quick96=opts.quick96,
        face_style_power=opts.face_style_power, bg_style_power=opts.bg_style_power)


def _critic_logits(critic: Critic, params, x: jax.Array) -> tuple[jax.Array, ...]:
    """The critic's logit maps as a tuple (the GAN has two heads, the code discriminator one)."""
    out = nnx.merge(critic.graphdef, params)(x)
    return out if isinstance(out, tuple) else (out,)


def _loss_fn(graphdef: nnx.GraphDef, opts: StepOptions, critics: Mapping[str, Critic]):
    """loss(params, aug, critic_params) -> (G loss, (metrics, each critic's (real, fake) inputs)).

    Gradients flow into the generator only; the critics' terms use their current parameters.
    """
    def loss(params, aug: dict[str, jax.Array], critic_params: Mapping[str, Any]):
        model = nnx.merge(graphdef, params)
        memory_savers.rematerialise(model, opts.remat)
        preds = model(aug["warped_src"], aug["warped_dst"], swap=opts.trains_swap)
        if opts.face_style_power > 0 or "code_disc" in critics:
            # Recomputes the encoder/inter forward, which XLA's CSE merges with the one above.
            codes = model.inter_codes(aug["warped_src"], aug["warped_dst"])
        if opts.face_style_power > 0:
            swap_decoder = model.decoder_src if model.archi.kind == "df" else model.decoder
            preds = dict(preds, pred_src_dst_no_code_grad=swap_decoder(jax.lax.stop_gradient(codes[2]))[0])
        total, terms = step_losses(opts, aug, preds)
        critic_inputs = {}
        if "disc" in critics:
            real, fake = losses.gan_inputs(aug, preds, resolution=opts.resolution,
                                           masked_training=opts.masked_training, blur_out_mask=opts.blur_out_mask)
            gan = opts.gan_power * losses.generator_adversarial_loss(
                _critic_logits(critics["disc"], critic_params["disc"], fake))
            if opts.masked_training:
                gan = gan + losses.gan_regularisers(aug, preds, resolution=opts.resolution,
                                                    blur_out_mask=opts.blur_out_mask)
            terms["gan_loss"] = jnp.mean(gan)
            total = total + terms["gan_loss"]
            critic_inputs["disc"] = (real, fake)
        if "code_disc" in critics:  # dst codes are "real": src codes are pushed toward them
            true_face = opts.true_face_power * losses.generator_adversarial_loss(
                _critic_logits(critics["code_disc"], critic_params["code_disc"], codes[0]))
            terms["true_face_loss"] = jnp.mean(true_face)
            total = total + terms["true_face_loss"]
            critic_inputs["code_disc"] = (codes[1], codes[0])
        return total, (terms, critic_inputs)

    return loss


def _critic_grad_fn(critic: Critic):
    """(critic params, real, fake) -> (batch mean of `losses.discriminator_loss`, its gradient)."""
    def loss(params, real: jax.Array, fake: jax.Array) -> jax.Array:
        return jnp.mean(losses.discriminator_loss(_critic_logits(critic, params, real),
                                                  _critic_logits(critic, params, fake)))

    return jax.value_and_grad(loss)


def _split_micro(tree: dict, n: int) -> dict:
    """[B, ...] leaves -> [n, B/n, ...] for a scan over micro-batches; micro-batch i holds rows
    i, i+n, i+2n, ... With the batch sharded over devices in contiguous blocks, each device keeps
    its own rows in every micro-batch (the naive [n, B/n] reshape would put the sharded axis on
    the scanned one, and XLA would gather the whole batch onto every device)."""
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape((x.shape[0] // n, n) + x.shape[1:]), 0, 1), tree)


def _global_norm(tree) -> jax.Array:
    return optax.tree.norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree))


def _guarded_update(tx: optax.GradientTransformation, finite: jax.Array, report: jax.Array | bool,
                    params, opt_state, grads):
    """(new params, new optimiser state, {update_norm, param_norm}); the old ones when the step is
    not finite. A lax.switch rather than a select of old and new: the select re-read and re-wrote
    every parameter and moment once more (8% of a CPU step, df-ud 64/4). The two norms are
    computed only when `report` (the metrics of the step are read): on that step they cost 11%.
    Otherwise, and on a skipped step, they are NaN."""
    not_computed = {"update_norm": jnp.float32(jnp.nan), "param_norm": jnp.float32(jnp.nan)}

    def keep(params, opt_state, grads):
        return params, opt_state, not_computed

    def update(params, opt_state, grads, norms: bool):
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        return new_params, new_opt, ({"update_norm": _global_norm(updates), "param_norm": _global_norm(new_params)}
                                     if norms else not_computed)

    branches = [keep, functools.partial(update, norms=False)]
    if report is not False:  # a critic's update never reports: no norms branch to compile
        branches.append(functools.partial(update, norms=True))
    branch = jnp.where(finite, 1 + jnp.asarray(report, jnp.int32), 0)
    return jax.lax.switch(branch, branches, params, opt_state, grads)


def _is_fsdp(mesh: jax.sharding.Mesh | None) -> bool:
    """Whether parameters are split over an fsdp axis (then convolutions stay convolutions)."""
    return mesh is not None and mesh.shape["fsdp"] > 1


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, opts: StepOptions,
                    critics: Mapping[str, Critic] = MappingProxyType({}), mesh: jax.sharding.Mesh | None = None
                    ) -> Callable[[State, Batch], tuple[State, dict[str, jax.Array]]]:
    """Builds the pure step function (jit it with shardings and donate the state); `critics` from
    `make_critics` (their powers come from `opts`); `mesh` for a bf16 gradient all-reduce and, when
    it has an fsdp axis, to keep convolutions (layers.plain_convolutions).
    With opts.opt_on_host the optimiser states arrive in host memory (see engine/memory_savers.py)."""
    grad_fn = jax.value_and_grad(_loss_fn(graphdef, opts, critics), has_aux=True)
    critic_grad_fns = {name: _critic_grad_fn(critic) for name, critic in critics.items()}

    def compute(params, critic_params, aug):
        """(G loss, metrics, G grads, {critic: (loss, grads)}) of one (micro-)batch."""
        (loss, (terms, inputs)), grads = grad_fn(params, aug, critic_params)
        critic_out = {name: fn(critic_params[name], *inputs[name]) for name, fn in critic_grad_fns.items()}
        return loss, terms, grads, critic_out

    def gradients(params, critic_params, aug):
        """`compute` over the whole batch, accumulated over opts.micro_batches."""
        if opts.micro_batches > 1:
            def accumulate(carry, micro):
                return jax.tree.map(jnp.add, carry, compute(params, critic_params, micro)), None

            micro = _split_micro(aug, opts.micro_batches)
            first = jax.tree.map(lambda x: x[0], micro)
            shapes = jax.eval_shape(compute, params, critic_params, first)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            summed, _ = jax.lax.scan(accumulate, zeros, micro)
            return jax.tree.map(lambda x: x / opts.micro_batches, summed)
        return compute(params, critic_params, aug)

    if opts.grad_allreduce_dtype != "float32":
        if mesh is None:
            raise ValueError("a gradient all-reduce in another dtype than float32 needs the mesh")
        gradients = grad_reduce.data_parallel_gradients(gradients, mesh, opts.grad_allreduce_dtype)

    @plain_convolutions(_is_fsdp(mesh))
    def step_fn(state: State, batch: Batch, report: jax.Array | bool = True) -> tuple[State, dict[str, jax.Array]]:
        """One step; `report`: whether its update_norm and param_norm are computed (else NaN)."""
        if opts.opt_on_host:
            state = {k: memory_savers.to_device(v) if k in memory_savers.OPT_STATE_KEYS else v
                     for k, v in state.items()}
        params = state["params"]
        critic_params = {name: state[f"{name}_params"] for name in critics}
        aug = augmented_inputs(opts, state["step"], batch)
        loss, terms, grads, critic_out = gradients(params, critic_params, aug)
        grad_norm = _global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        for critic_loss, critic_grads in critic_out.values():
            finite = finite & jnp.isfinite(critic_loss) & jnp.isfinite(_global_norm(critic_grads))
        new_params, new_opt, norms = _guarded_update(tx, finite, report, params, state["opt_state"], grads)
        new_state = {
            "params": new_params,
            "opt_state": new_opt,
            "step": state["step"] + 1,
            "counters": {
                "nonfinite": jnp.where(finite, 0, state["counters"]["nonfinite"] + 1),
                "skipped": state["counters"]["skipped"] + (~finite).astype(jnp.int32),
            },
        }
        metrics = {
            "loss": loss, **terms,
            "grad_norm": grad_norm,
            **norms,
            "nonfinite": new_state["counters"]["nonfinite"],
        }
        for name, critic in critics.items():
            critic_loss, critic_grads = critic_out[name]
            new_state[f"{name}_params"], new_state[f"{name}_opt_state"], _ = _guarded_update(
                critic.tx, finite, False, critic_params[name], state[f"{name}_opt_state"], critic_grads)
            metrics[f"{name}_loss"] = critic_loss
        return new_state, metrics

    return step_fn


def critic_state(critics: Mapping[str, Critic], critic_params: Mapping[str, Any]) -> State:
    """The state items of fresh critics: `{name}_params` and `{name}_opt_state`."""
    out = {}
    for name, critic in critics.items():
        out[f"{name}_params"] = critic_params[name]
        out[f"{name}_opt_state"] = critic.tx.init(critic_params[name])
    return out


def init_state(params, tx: optax.GradientTransformation, critics: Mapping[str, Critic] = MappingProxyType({}),
               critic_params: Mapping[str, Any] = MappingProxyType({})) -> State:
    """A fresh train state around initial parameters (and the critics', see `make_critics`)."""
    return {
        "params": params,
        "opt_state": tx.init(params),
        "step": jnp.int32(0),
        "counters": {"nonfinite": jnp.int32(0), "skipped": jnp.int32(0)},
        **critic_state(critics, critic_params),
    }


def make_eval_step(graphdef: nnx.GraphDef, opts: StepOptions, mesh: jax.sharding.Mesh | None = None):
    """Validation loss and the predictions used for previews (no augmentation randomness beyond
    the re-crop: warp, flips and colour jitter are off so the numbers are comparable over time);
    `mesh` as for make_train_step."""
    plain = dataclasses.replace(opts, random_warp=False, src_flip=False, dst_flip=False, hsv_power=0.0,
                                ct_mode="none", gan_power=0.0, true_face_power=0.0, face_style_power=0.0,
                                bg_style_power=0.0, remat="none")
    loss = _loss_fn(graphdef, plain, {})

    @plain_convolutions(_is_fsdp(mesh))
    def eval_fn(params, batch: Batch, step: jax.Array):
        aug = augment_batch(plain.seed, step, batch["src"], batch["dst"], resolution=plain.resolution,
                            random_warp=False, src_flip=False, dst_flip=False, hsv_power=0.0, ct_mode="none",
                            scale_range=(0.0, 0.0), rotation_range=(0.0, 0.0), shift_range=(0.0, 0.0))
        total, (terms, _) = loss(params, aug, {})
        model = nnx.merge(graphdef, params)
        preds = model(aug["target_src"], aug["target_dst"])
        return total, terms, aug, preds

    return eval_fn
