"""Pickles in DeepFaceLab's files: a restricted unpickler and a numpy-1-compatible pickler.

DFL stores face metadata as Python pickles (DFL_SPEC §1.8, §1.13, §7): in the APP15 segment of
every aligned JPEG and in the header of `faceset.pak`. Facesets are traded between strangers, and
a plain `pickle.loads` runs any callable the file names (`os.system`, `builtins.eval`, ...). This
unpickler resolves only the handful of globals that plain data needs: numpy arrays, scalars and
dtypes (under both the numpy 1.x module paths DFL's numpy 1.19 wrote and the numpy 2.x ones) and a
few builtin containers. Containers, numbers, strings, bytes, bool and None need no globals at all.
Anything else is refused before it is called.

Writing goes the other way: numpy 2 pickles arrays under `numpy._core.multiarray`, a module the
numpy 1.x inside DFL cannot import, so `dumps_for_numpy1` writes the old module name instead.
"""
from __future__ import annotations

import io
import pickle
import pickletools
import struct
from typing import Any

import numpy as np
from numpy._core.multiarray import _reconstruct, scalar
from numpy._core.numeric import _frombuffer

from preprocessing.errors import UserError


class UnsafePickleError(UserError):
    """The pickle names a callable or class that plain data does not need."""


class _Refused(Exception):
    """Raised inside the unpickler; `safe_loads` turns it into UnsafePickleError naming the file."""


class _NdarrayName:
    """What `numpy.ndarray` resolves to. numpy's pickles name the class only as the first argument
    of `_reconstruct`; the stand-in refuses to be called (that could allocate any size)."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise _Refused("a direct call of 'numpy.ndarray'")


_NDARRAY = _NdarrayName()


def _ndarray_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's pickled array constructor. numpy always asks it for an empty ndarray, which the
    BUILD opcode then fills from bytes inside the pickle; nothing else is allowed."""
    if subtype is not _NDARRAY or shape != (0,):
        raise _Refused(f"'numpy.core.multiarray._reconstruct' of {subtype!r} with shape {shape!r}")
    return _reconstruct(np.ndarray, shape, dtype)


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """Protocol-2 pickles spell bytes as `_codecs.encode(text, 'latin1')`; nothing else is needed."""
    if encoding not in ("latin1", "latin-1"):
        raise _Refused(f"'_codecs.encode' with encoding {encoding!r}")
    return text.encode("latin1")


def _fresh_dtype(spec: Any, align: bool = False, *_copy_flag: Any) -> np.dtype:
    """`numpy.dtype`, always as a copy whatever the pickle asks: a later BUILD opcode must not
    change numpy's shared built-in dtype objects."""
    return np.dtype(spec, align, True)


def _enum_value(value: int) -> int:
    """DFL pickles members of its own IntEnums (FaceType, SampleType) into faceset.pak sample
    configs. They load as plain ints (FaceType keeps DFL's integer values, DFL_SPEC §1.5); an int
    also cannot be mutated by a later BUILD opcode, unlike an enum member."""
    return int(value)


_ALLOWED: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _ndarray_reconstruct
       for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _fresh_dtype,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): _latin1_bytes,
    ("facelib.FaceType", "FaceType"): _enum_value,
    ("samplelib.Sample", "SampleType"): _enum_value,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # protocols 0-2 spell `builtins` the Python 2 way
            module = "builtins"
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"'{module}.{name}'") from None


def safe_loads(data: bytes, source: str = "pickle") -> object:
    """Unpickles plain data (containers, numbers, strings, bytes, numpy arrays) and nothing else.

    `source` names the file in error messages. Refused globals raise `UnsafePickleError`; a
    truncated or malformed pickle raises `UserError`.
    """
    try:
        return _RestrictedUnpickler(io.BytesIO(bytes(data))).load()
    except _Refused as e:
        raise UnsafePickleError(
            f"{source}: refused to unpickle {e} (only plain data is allowed)"
        ) from None
    except Exception as e:  # any malformed stream: pickle/numpy raise many different types
        raise UserError(f"{source}: corrupt metadata pickle ({type(e).__name__}: {e})") from None


_NUMPY2_MODULE, _NUMPY1_MODULE = "numpy._core.multiarray", "numpy.core.multiarray"


def dumps_for_numpy1(obj: object) -> bytes:
    """`pickle.dumps(obj, protocol=4)` that numpy 1.x (DFL) and numpy 2 can both load.

    numpy 2 names `_reconstruct` and `scalar` under `numpy._core.multiarray`; numpy 1.x only has
    `numpy.core.multiarray`, which numpy 2 still resolves. The module string (pickled once and then
    memoised) is rewritten in place, and the length of the protocol-4 frame holding it shrinks.
    """
    data = pickle.dumps(obj, protocol=4)
    frames, hits = [], []
    for op, arg, pos in pickletools.genops(data):
        if op.name == "FRAME":  # opcode byte, u64 length, then `arg` bytes of opcodes
            frames.append((pos, pos + 9, pos + 9 + arg))
        elif op.name == "SHORT_BINUNICODE" and arg == _NUMPY2_MODULE:
            hits.append(pos)
    out = bytearray(data)
    new = _NUMPY1_MODULE.encode()
    for pos in reversed(hits):  # back to front, so earlier positions stay valid
        out[pos + 1:pos + 2 + len(_NUMPY2_MODULE)] = bytes([len(new)]) + new
        for header, start, end in frames:
            if start <= pos < end:
                (length,) = struct.unpack_from("<Q", out, header + 1)
                struct.pack_into("<Q", out, header + 1, length - (len(_NUMPY2_MODULE) - len(new)))
    return bytes(out)
