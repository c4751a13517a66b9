"""DFL's weight and state files: reading them safely, writing them as DFL does, converting arrays.

A DFL `.npy` weight file is not a NumPy file: it is a raw pickle (protocol 4) of a dict
{variable name: float32 array} (DFL_SPEC §3.1). `NAME_SAEHD_data.dat` is a pickle of a dict with
`iter`, `options` (numpy scalars inside), `loss_history`, `sample_for_preview`. Model folders are
shared between strangers, so both are read through the faceset importer's restricted unpickler,
which refuses any callable or class that plain data does not need.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

import numpy as np

from engine.dfl.names import Variable, optimizer_key
from preprocessing.errors import UserError, read_bytes
from preprocessing.faceset.safe_pickle import dumps_for_numpy1, safe_loads

# Optimiser slot prefixes in src_dst_opt.npy, per our optimiser and its state field.
OPT_SLOTS = {"adabelief": (("ms", "mu"), ("vs", "nu")), "rmsprop": (("acc", "nu"),)}
ITERS_KEY = "iters:0"
_SHOW = 6  # names listed per group in a key-mismatch error


def _read(path: str) -> Any:
    return safe_loads(read_bytes(path), source=path)


def write_pickle(path: str, obj: Any) -> None:
    """Writes `obj` the way DFL does (pickle protocol 4, loadable by DFL's numpy 1.x), atomically."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(dumps_for_numpy1(obj))
    os.replace(tmp, path)


def read_part(path: str) -> dict[str, np.ndarray]:
    """One weight file as {name: array}; anything but a dict of arrays is a clear error.

    Scalars come as numpy scalars (the optimiser's `iters:0`) and are returned as 0-d arrays."""
    obj = _read(path)
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, (np.ndarray, np.generic))
                                            for k, v in obj.items()):
        raise UserError(f"{path}: not a DFL weight file (expected a pickled dict of name -> array)")
    return {k: np.asarray(v) for k, v in obj.items()}


def read_model_data(path: str) -> dict[str, Any]:
    """`NAME_<Class>_data.dat` as a dict with at least `iter` and `options`."""
    obj = _read(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("options", {}), dict):
        raise UserError(f"{path}: not a DFL model state file (expected a dict with 'iter' and 'options')")
    return obj


def _listing(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_SHOW])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _SHOW else "")


def check_keys(source: str, expected: Iterable[str], found: Iterable[str]) -> None:
    """One UserError naming what is missing and what is unexpected (abbreviated), or nothing."""
    expected, found = set(expected), set(found)
    missing, unknown = expected - found, found - expected
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_listing(missing)}")
        if unknown:
            parts.append(f"unexpected {len(unknown)}: {_listing(unknown)}")
        raise UserError(f"{source}: keys do not match the model: {'; '.join(parts)} "
                        f"(expected {len(expected)} keys, found {len(found)})")


def _get(tree: Mapping, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _converted(var: Variable, array: np.ndarray) -> np.ndarray:
    """DFL <-> ours for one array (the same operation both ways: a channel reversal or nothing)."""
    array = np.asarray(array, np.float32)
    return np.flip(array, var.flip_axis).copy() if var.flip_axis is not None else array


def _check_shape(source: str, key: str, got: tuple, want: tuple) -> None:
    if tuple(got) != tuple(want):
        raise UserError(f"{source}: {key} has shape {tuple(got)}, the model expects {tuple(want)}")


def params_from_dfl(parts: Mapping[str, Mapping[str, np.ndarray]], variables: list[Variable],
                    template: Mapping, sources: Mapping[str, str]) -> dict:
    """Our param tree (shaped like `template`, a pure dict of arrays or shape structs) from DFL's
    part dicts. Every key of every part must be expected and present, with the expected shape;
    `sources[part]` names the file in errors."""
    by_part: dict[str, list[Variable]] = {}
    for var in variables:
        by_part.setdefault(var.part, []).append(var)
    params = copy_tree(template)
    for part, vars_ in by_part.items():
        check_keys(sources[part], (v.key for v in vars_), parts[part].keys())
        for var in vars_:
            array = parts[part][var.key]
            _check_shape(sources[part], var.key, array.shape, _get(template, var.path).shape)
            _set(params, var.path, _converted(var, array))
    return params


def params_to_dfl(params: Mapping, variables: list[Variable]) -> dict[str, dict[str, np.ndarray]]:
    """DFL's part dicts {part: {key: float32 array}} from our param tree."""
    parts: dict[str, dict[str, np.ndarray]] = {}
    for var in variables:
        parts.setdefault(var.part, {})[var.key] = _converted(var, np.asarray(_get(params, var.path)))
    return parts


def moments_from_dfl(opt: Mapping[str, np.ndarray], optimizer: str, variables: list[Variable],
                     template: Mapping, source: str) -> tuple[dict[str, dict], list[str]] | None:
    """Our optimiser moments {state field: param-shaped tree} from DFL's `src_dst_opt.npy` dict.

    Returns None when the file holds no slot of our optimiser (e.g. RMSprop slots for an AdaBelief
    model): the caller starts a fresh optimiser. Otherwise also returns the variables that have no
    slot (DFL leaves frozen parts, e.g. LIAE's inter_AB without random warp, out of the
    optimiser): their moments start at zero. A slot of the wrong shape is an error.
    """
    slots = OPT_SLOTS[optimizer]
    if not any(optimizer_key(prefix, var) in opt for prefix, _ in slots for var in variables):
        return None
    moments, absent = {}, []
    for prefix, field in slots:
        tree = copy_tree(template, zeros=True)
        for var in variables:
            key = optimizer_key(prefix, var)
            if key not in opt:
                absent.append(key)
                continue
            _check_shape(source, key, opt[key].shape, _get(template, var.path).shape)
            _set(tree, var.path, _converted(var, opt[key]))
        moments[field] = tree
    return moments, absent


def moments_to_dfl(moments: Mapping[str, Mapping], optimizer: str, variables: list[Variable],
                   iters: int) -> dict[str, np.ndarray]:
    """DFL's `src_dst_opt.npy` dict from our moments ({state field: param-shaped tree})."""
    out: dict[str, np.ndarray] = {ITERS_KEY: np.asarray(iters, np.int64)}
    for prefix, field in OPT_SLOTS[optimizer]:
        for var in variables:
            out[optimizer_key(prefix, var)] = _converted(var, np.asarray(_get(moments[field], var.path)))
    return out


def copy_tree(tree: Mapping, zeros: bool = False) -> dict:
    """A fresh nested dict with the same keys; leaves kept (or zero float32 arrays of their shape)."""
    return {k: copy_tree(v, zeros) if isinstance(v, Mapping)
            else (np.zeros(v.shape, np.float32) if zeros else v) for k, v in tree.items()}
