"""Where each of our SAEHD parameters lives in a DeepFaceLab model folder, and under which name.

DFL saves one file per network part (`NAME_SAEHD_encoder.npy`, ...), each a dict keyed by the TF
variable name below the part's scope with the `:0` suffix (DFL_SPEC §3.1, §3.3); e.g. for liae-ud
`down1/downs_0/conv1/weight:0` in the encoder or `upscalem3/conv1/bias:0` in the decoder. Our NNX
modules follow the same layer order, so the mapping is a renaming with two exceptions:

* layouts agree: conv kernels are (kh, kw, in, out), dense (in, out), and our Dense layers already
  read feature maps channel-major (engine/models/layers.py), so no matrix is permuted;
* colour order differs: our networks take and produce RGB, DFL's BGR. The first encoder conv's
  input-channel axis and the RGB output convs' output channels (kernel and bias) are reversed
  on the way in and out (`Variable.flip_axis`).

The -t names (down1, res1, down2..down5, res5; upscale0..3 / res0..3; upscalem0..4), Quick96
(DFL's df-ud network saved under the class name `Quick96`) and the optimiser slots
(`optimizer_key`) follow the same per-module scheme. The issue's liae-ud names are checked in
tests/test_dfl_model_io.py; these others have not been checked against a file DFL wrote.
"""
from __future__ import annotations

from typing import NamedTuple

from engine.models.saehd import Archi, parse_archi

ParamPath = tuple[str | int, ...]

# DFL's model class, the middle part of every file name, per our config name.
MODEL_CLASSES = {"saehd": "SAEHD", "quick96": "Quick96"}
_LEAVES = (("kernel", "weight:0"), ("bias", "bias:0"))


class Variable(NamedTuple):
    """One DFL variable: the part file it is in, its key there, our param path, the axis to reverse."""
    part: str
    key: str
    path: ParamPath
    flip_axis: int | None


def part_names(archi: Archi) -> tuple[str, ...]:
    """DFL's weight files of a model, in the order our `SAEHD.components()` lists them."""
    return (("encoder", "inter", "decoder_src", "decoder_dst") if archi.kind == "df"
            else ("encoder", "inter_AB", "inter_B", "decoder"))


def file_name(model_name: str, model_class: str, part: str) -> str:
    """`NAME_SAEHD_encoder.npy`; `part="data"` gives the state file `NAME_SAEHD_data.dat`."""
    return f"{model_name}_{model_class}_{part}" + (".dat" if part == "data" else ".npy")


def _conv(out: list[Variable], part: str, dfl: str, path: ParamPath,
          flip_kernel: int | None = None, flip_bias: int | None = None) -> None:
    for ours, theirs in _LEAVES:
        flip = flip_kernel if ours == "kernel" else flip_bias
        out.append(Variable(part, f"{dfl}/{theirs}", (part, *path, ours), flip))


def _residual(out: list[Variable], part: str, dfl: str, path: ParamPath) -> None:
    for conv in ("conv1", "conv2"):
        _conv(out, part, f"{dfl}/{conv}", (*path, conv))


def _encoder(out: list[Variable], archi: Archi) -> None:
    if not archi.t:
        for i in range(4):
            _conv(out, "encoder", f"down1/downs_{i}/conv1", ("body", "downs", "layers", i, "conv"),
                  flip_kernel=2 if i == 0 else None)
        return
    names = ("down1", "res1", "down2", "down3", "down4", "down5", "res5")
    for i, name in enumerate(names):
        if name.startswith("res"):
            _residual(out, "encoder", name, ("body", "layers", i))
        else:
            _conv(out, "encoder", f"{name}/conv1", ("body", "layers", i, "conv"),
                  flip_kernel=2 if i == 0 else None)


def _inter(out: list[Variable], part: str, archi: Archi) -> None:
    _conv(out, part, "dense1", ("dense1",))
    _conv(out, part, "dense2", ("dense2",))
    if not archi.t:
        _conv(out, part, "upscale1/conv1", ("upscale", "conv"))


def _decoder(out: list[Variable], part: str, archi: Archi) -> None:
    stages = 4 if archi.t else 3
    for k in range(stages):
        _conv(out, part, f"upscale{k}/conv1", ("rgb", "layers", 2 * k, "conv"))
        _residual(out, part, f"res{k}", ("rgb", "layers", 2 * k + 1))
    for k in range(stages + int(archi.d)):
        _conv(out, part, f"upscalem{k}/conv1", ("mask", "layers", k, "conv"))
    heads = ("out_conv", "out_conv1", "out_conv2", "out_conv3") if archi.d else ("out_conv",)
    for k, name in enumerate(heads):  # RGB outputs: BGR in DFL
        _conv(out, part, name, ("rgb_heads", k), flip_kernel=3, flip_bias=0)
    _conv(out, part, "out_convm", ("mask_head",))


def variables(archi: str | Archi) -> list[Variable]:
    """Every parameter of a SAEHD/Quick96 model of this archi, with its DFL file and key."""
    archi = parse_archi(archi) if isinstance(archi, str) else archi
    out: list[Variable] = []
    for part in part_names(archi):
        if part == "encoder":
            _encoder(out, archi)
        elif part.startswith("inter"):
            _inter(out, part, archi)
        else:
            _decoder(out, part, archi)
    return out


def optimizer_key(prefix: str, var: Variable) -> str:
    """The key of a variable's optimiser slot in `src_dst_opt.npy`.

    DFL's optimisers create one slot per trainable variable named after the variable's full name
    with ':' replaced by '_' (`ms_` / `vs_` for AdaBelief's moments, `acc_` for RMSprop's), inside
    the optimiser's scope; saved below that scope this reads e.g.
    `ms_encoder/down1/downs_0/conv1/weight_0:0`.
    """
    return f"{prefix}_{var.part}/{var.key.replace(':', '_')}:0"
