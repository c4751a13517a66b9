"""`python -m engine.export`: a workdir's model in DeepFaceLab's formats.

  python -m engine.export --workdir=runs/liae --format=dfl --output=DFL/workspace/model [--name=new]
  python -m engine.export --workdir=runs/liae --format=dfm --output=liae.dfm [--xseg_workdir=runs/xseg]

`dfl` writes DFL's weight files, optimiser state and `NAME_SAEHD_data.dat` (NAME_Quick96_... for
a Quick96 run) into the --output folder; `engine.import_dfl` reads them back to the same model.
`dfm` writes the DeepFaceLive model (ONNX) and, with --xseg_workdir, `XSeg_model.onnx` beside it
(engine/dfm/). Nothing existing is overwritten: every target is checked before anything is written.
"""
from __future__ import annotations

import os
from typing import Sequence

from absl import flags

from preprocessing.errors import UserError, check_command_line, run_app

_WORKDIR = flags.DEFINE_string("workdir", None, "The run folder to export (its newest checkpoint).")
_FORMAT = flags.DEFINE_enum("format", None, ["dfl", "dfm"], "dfl: DFL model files; dfm: DeepFaceLive ONNX.")
_OUTPUT = flags.DEFINE_string("output", None, "dfl: a folder (DFL's workspace/model); dfm: the .dfm file.")
_NAME = flags.DEFINE_string("name", "imported", "dfl: the model name DFL will list (NAME_SAEHD_*).")
_XSEG = flags.DEFINE_string("xseg_workdir", None, "dfm: an engine.xseg_train run to export as XSeg_model.onnx.")


def _export_dfm(workdir: str, output: str, xseg_workdir: str | None) -> list[str]:
    """The DeepFaceLive files; engine.dfm (and its ONNX dependencies) load only when asked for."""
    import ml_collections
    from flax import nnx

    from engine import dfm
    from engine.merge.model import load_model

    dfm.require_onnx()
    if os.path.exists(output):
        raise UserError(f"{output}: exists; choose another --output")
    xseg_path = os.path.join(os.path.dirname(os.path.abspath(output)), "XSeg_model.onnx")
    if xseg_workdir and os.path.exists(xseg_path):
        raise UserError(f"{xseg_path}: exists; move it away first")
    model = load_model(workdir, dtype_name="float32")
    dfm.write_dfm(nnx.merge(model.graphdef, model.params), ml_collections.ConfigDict(model.config), output)
    written = [output]
    if xseg_workdir:
        from engine.xseg.model import load_trained

        graphdef, params, xseg_cfg = load_trained(xseg_workdir)
        dfm.write_xseg_onnx(nnx.merge(graphdef, params), xseg_cfg, xseg_path)
        written.append(xseg_path)
    return written


def main(argv: Sequence[str]) -> None:
    check_command_line(argv, _WORKDIR, _FORMAT, _OUTPUT)
    if _FORMAT.value == "dfl":
        if _XSEG.value:
            raise UserError("--xseg_workdir goes with --format=dfm")
        from engine.dfl.model_io import export_model

        written = export_model(_WORKDIR.value, _OUTPUT.value, _NAME.value)
    else:
        written = _export_dfm(_WORKDIR.value, _OUTPUT.value, _XSEG.value)
    print(f"wrote {len(written)} file{'s' if len(written) > 1 else ''}: {', '.join(written)}")


def run() -> None:
    run_app(main)


if __name__ == "__main__":
    run()
