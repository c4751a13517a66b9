"""Faceset tools: inspect, sort, filter, resize, preview, export and import facesets.

Usage: python -m preprocessing.faceset COMMAND [--flags]

Commands (every command that changes faces writes a NEW faceset to --output; inputs are never edited):
  info        --faceset=DIR [--json]
  sort        --faceset=DIR --output=DIR2 --by=METHOD [--target=2000] [--trash=DIR3]
  filter      --faceset=DIR --output=DIR2 [--min_blur=..] [--max_abs_yaw=deg] [--max_abs_pitch=deg]
              [--min_score=..] [--drop=1,5,7-9] [--max_hist_similarity=..] [--trash=DIR3]
  resize      --faceset=DIR --output=DIR2 --size=N [--face_type=same|half|mid_full|full|whole_face|head]
  preview     --faceset=DIR --output=sheet.png [--max_faces=64] [--cols=8] [--show_landmarks] [--show_masks]
  export      --faceset=DIR --output_dir=D [--format=png|jpg] [--masks] [--dfl]
  import      --input_dir=D --output=DIR [--face_type=whole_face] [--size=256]
  import-dfl  --input_dir=ALIGNED --output=DIR [--size=N]
  import-pak  --input=faceset.pak --output=DIR [--size=N]
  xseg-import --faceset=DIR (--labels=FILE_OR_DIR [--label_format=auto|labelme|coco] | --from_dfl)
              [--exclude_labels=exclude,ex,hole,-] [--replace]
  xseg-export --faceset=DIR --output_dir=D [--what=labels|masks|overlay]
  xseg-remove-labels --faceset=DIR

The xseg-* commands are the sanctioned in-place change: they add or drop the faceset's XSeg label
arrays (xseg_labels, xseg_labelled) and polygons.json, leaving every other array untouched.
LabelMe/COCO label files name the PNGs `export` wrote (00012.png = face 12); labels or categories
named in --exclude_labels are EXCLUDE polygons, all others INCLUDE.

Sort methods (DeepFaceLab's): blur, motion-blur, face-yaw, face-pitch, source-rect-size, hist,
hist-dissim, brightness, hue, black, origname, oneface, final (best faces), final-fast.
Run with --helpfull for every flag.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence

from absl import flags

from preprocessing.errors import UserError, run_app
from preprocessing.face_types import FaceType
from preprocessing.faceset.export import export_faceset
from preprocessing.faceset.filtering import FilterRules, filter_faces
from preprocessing.faceset.import_aligned import import_aligned
from preprocessing.faceset.import_dfl import import_dfl
from preprocessing.faceset.info import faceset_info, format_info
from preprocessing.faceset.preview import write_preview
from preprocessing.faceset.reader import Faceset
from preprocessing.faceset.resize import resize_faceset
from preprocessing.faceset.sort import METHODS, Ordering, sort_faces
from preprocessing.faceset.subset import check_new_output, write_subset
from preprocessing.faceset.xseg_labels import (
    DEFAULT_EXCLUDE_LABELS, EXPORT_KINDS, LABEL_FORMATS, export_xseg, import_xseg_labels, read_labels,
    remove_xseg_labels,
)

FLAGS = flags.FLAGS

flags.DEFINE_string("faceset", None, "Input faceset folder.")
flags.DEFINE_string("output", None, "Output: a new faceset folder (sort, filter, resize, import*) "
                    "or the PNG file of `preview`.")
flags.DEFINE_string("trash", None, "sort/filter: also write the faces that were dropped to this new faceset.")
flags.DEFINE_bool("progress", True, "Show progress bars.")
# info
flags.DEFINE_bool("json", False, "info: print JSON instead of the text report.")
# sort
flags.DEFINE_enum("by", None, list(METHODS), "sort: the sort method (DeepFaceLab's).")
flags.DEFINE_integer("target", 2000, "sort --by=final|final-fast: how many faces to keep.", lower_bound=1)
# filter
flags.DEFINE_float("min_blur", None, "filter: drop faces whose blur (sharpness) score is below this.")
flags.DEFINE_float("max_abs_yaw", None, "filter: drop faces turned further than this many degrees left/right.")
flags.DEFINE_float("max_abs_pitch", None, "filter: drop faces tilted further than this many degrees up/down.")
flags.DEFINE_float("min_score", None, "filter: drop faces whose detector score is below this.")
flags.DEFINE_string("drop", "", "filter: face indices/ranges to drop, e.g. 1,5,7-9 (0-based).")
flags.DEFINE_float("max_hist_similarity", None,
                   "filter: drop a face whose colour-histogram similarity (1 - mean Bhattacharyya "
                   "distance, in [0, 1]) to the previously kept face exceeds this, e.g. 0.97.",
                   lower_bound=0.0, upper_bound=1.0)
# resize / import
flags.DEFINE_integer("size", None, "resize: new face size in pixels (required); import: face size "
                     "(default 256); import-dfl/import-pak: face size (default: the input's).")
flags.DEFINE_string("face_type", None, "resize: new face type or `same` (default); import: face type "
                    "of the aligned images (default whole_face). One of half, mid_full, full, whole_face, head.")
flags.DEFINE_string("detector", "blazeface", "import: detector backend that finds the landmarks.")
# preview
flags.DEFINE_integer("max_faces", 64, "preview: most thumbnails on the sheet (spread over the faceset).", lower_bound=1)
flags.DEFINE_integer("cols", 8, "preview: thumbnails per row.", lower_bound=1)
flags.DEFINE_integer("thumb_size", 128, "preview: thumbnail side in pixels.", lower_bound=8)
flags.DEFINE_bool("show_landmarks", False, "preview: draw the 68 landmarks.")
flags.DEFINE_bool("show_masks", False, "preview: tint the mask (XSeg if present, else the landmark hull).")
# export
flags.DEFINE_string("output_dir", None, "export, xseg-export: folder for the exported images (must be new or empty).")
flags.DEFINE_enum("format", "png", ["png", "jpg"], "export: image format of the faces.")
flags.DEFINE_bool("masks", False, "export: also write <name>_mask.png for every face.")
flags.DEFINE_bool("dfl", False, "export: write DeepFaceLab DFLJPG files with metadata (implies jpg).")
flags.DEFINE_integer("quality", 90, "export: JPEG quality.", lower_bound=1, upper_bound=100)
# import
flags.DEFINE_string("input_dir", None, "import: folder of aligned face images; import-dfl: DFL aligned folder.")
flags.DEFINE_string("input", None, "import-pak: DeepFaceLab faceset.pak file.")
# xseg labels
flags.DEFINE_string("labels", None, "xseg-import: a LabelMe JSON file, a COCO JSON file or a folder of them.")
flags.DEFINE_enum("label_format", "auto", list(LABEL_FORMATS), "xseg-import: format of --labels (auto: by content).")
flags.DEFINE_list("exclude_labels", list(DEFAULT_EXCLUDE_LABELS),
                  "xseg-import: label / category names (case-insensitive) of EXCLUDE polygons; others INCLUDE.")
flags.DEFINE_bool("from_dfl", False, "xseg-import: rasterise the polygons already in polygons.json "
                  "(DeepFaceLab's, kept by import-dfl) instead of reading --labels.")
flags.DEFINE_bool("replace", False, "xseg-import: faces named in --labels get exactly its polygons "
                  "(default: they are added to the face's existing ones).")
flags.DEFINE_enum("what", "labels", list(EXPORT_KINDS), "xseg-export: labels (labelled faces), masks "
                  "(the applied xseg_masks) or overlay (the mask tinted on each face).")


def _required(name: str, command: str) -> str:
    value = getattr(FLAGS, name)
    if not value:
        raise UserError(f"{command}: --{name} is required")
    return value


def _open_input(command: str) -> Faceset:
    return Faceset.open(_required("faceset", command))


def _outputs(fs, command: str) -> tuple[str, str | None]:
    """--output and --trash, checked before any work so a long sort never fails at the end."""
    output = _required("output", command)
    check_new_output(output, not_same_as=fs.path)
    if FLAGS.trash:
        check_new_output(FLAGS.trash, not_same_as=fs.path)
        if os.path.abspath(FLAGS.trash) == os.path.abspath(output):
            raise UserError(f"{FLAGS.trash}: --trash must differ from --output")
    return output, FLAGS.trash


def _write_ordering(fs, ordering: Ordering, command: str, outputs: tuple[str, str | None], start: float) -> str:
    output, trash = outputs
    producer = {"program": f"preprocessing.faceset {command}", "input": os.path.abspath(fs.path)}
    write_subset(fs, ordering.keep, output, producer=producer, progress=FLAGS.progress)
    dropped = ""
    if len(ordering.trash):
        dropped = f", dropped {len(ordering.trash)}"
        if trash:
            write_subset(fs, ordering.trash, trash, producer={**producer, "trash": True}, progress=FLAGS.progress)
            dropped += f" (written to {trash})"
    return f"{command}: kept {len(ordering.keep)} of {len(fs)} faces{dropped} in {time.time() - start:.1f}s -> {output}"


def cmd_info() -> str:
    info = faceset_info(_open_input("info"))
    return json.dumps(info, indent=1) if FLAGS.json else format_info(info)


def cmd_sort() -> str:
    start = time.time()
    fs = _open_input("sort")
    outputs = _outputs(fs, "sort")
    ordering = sort_faces(fs, _required("by", "sort"), target=FLAGS.target, progress=FLAGS.progress)
    return _write_ordering(fs, ordering, f"sort --by={FLAGS.by}", outputs, start)


def cmd_filter() -> str:
    start = time.time()
    fs = _open_input("filter")
    outputs = _outputs(fs, "filter")
    rules = FilterRules(FLAGS.min_blur, FLAGS.max_abs_yaw, FLAGS.max_abs_pitch, FLAGS.min_score,
                        FLAGS.drop, FLAGS.max_hist_similarity)
    return _write_ordering(fs, filter_faces(fs, rules, progress=FLAGS.progress), "filter", outputs, start)


def _face_type_flag(default: str) -> FaceType | None:
    """--face_type as a FaceType; None for `same` (only resize accepts it)."""
    value = FLAGS.face_type or default
    if value == "same" and default == "same":
        return None
    try:
        return FaceType.from_flag(value)
    except ValueError as e:
        raise UserError(f"--face_type: {e}") from None


def cmd_resize() -> str:
    fs = _open_input("resize")
    size = FLAGS.size
    if not size or size < 16:
        raise UserError(f"{fs.path}: resize needs --size >= 16")
    return resize_faceset(fs, _required("output", "resize"), size=size, face_type=_face_type_flag("same"),
                          progress=FLAGS.progress).line()


def cmd_preview() -> str:
    fs = _open_input("preview")
    return write_preview(fs, _required("output", "preview"), max_faces=FLAGS.max_faces, cols=FLAGS.cols,
                         thumb=FLAGS.thumb_size, show_landmarks=FLAGS.show_landmarks,
                         show_masks=FLAGS.show_masks).line()


def cmd_export() -> str:
    fs = _open_input("export")
    return export_faceset(fs, _required("output_dir", "export"), fmt=FLAGS.format, masks=FLAGS.masks,
                          dfl=FLAGS.dfl, quality=FLAGS.quality, progress=FLAGS.progress).line()


def cmd_import() -> str:
    return import_aligned(_required("input_dir", "import"), _required("output", "import"),
                          face_type=_face_type_flag("whole_face"), size=FLAGS.size or 256,
                          detector=FLAGS.detector, progress=FLAGS.progress).line()


def _import_dfl(input_flag: str, command: str) -> str:
    return import_dfl(_required(input_flag, command), _required("output", command), size=FLAGS.size,
                      progress=FLAGS.progress).line()


def cmd_xseg_import() -> str:
    fs = _open_input("xseg-import")
    if bool(FLAGS.labels) == FLAGS.from_dfl:
        raise UserError("xseg-import: give either --labels=FILE_OR_FOLDER or --from_dfl")
    if FLAGS.replace and FLAGS.from_dfl:
        raise UserError("xseg-import: --replace needs --labels")
    labels = None if FLAGS.from_dfl else read_labels(
        FLAGS.labels, size=fs.size, count=fs.count, exclude_labels=FLAGS.exclude_labels,
        label_format=FLAGS.label_format)
    return import_xseg_labels(fs, labels, replace=FLAGS.replace).line()


def cmd_xseg_export() -> str:
    fs = _open_input("xseg-export")
    return export_xseg(fs, _required("output_dir", "xseg-export"), what=FLAGS.what, progress=FLAGS.progress).line()


COMMANDS: dict[str, Callable[[], str]] = {
    "info": cmd_info,
    "sort": cmd_sort,
    "filter": cmd_filter,
    "resize": cmd_resize,
    "preview": cmd_preview,
    "export": cmd_export,
    "import": cmd_import,
    "import-dfl": lambda: _import_dfl("input_dir", "import-dfl"),
    "import-pak": lambda: _import_dfl("input", "import-pak"),
    "xseg-import": cmd_xseg_import,
    "xseg-export": cmd_xseg_export,
    "xseg-remove-labels": lambda: remove_xseg_labels(_required("faceset", "xseg-remove-labels")),
}


def main(argv: Sequence[str]) -> None:
    commands = list(argv[1:])
    if len(commands) != 1 or commands[0] not in COMMANDS:
        given = " ".join(commands) or "none"
        raise UserError(f"preprocessing.faceset: expected one command ({', '.join(COMMANDS)}), got {given}; "
                        "see --help")
    print(COMMANDS[commands[0]]())


def run() -> None:
    """Console-script entry point (`fs-faceset`)."""
    run_app(main)


if __name__ == "__main__":
    run()
