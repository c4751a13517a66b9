"""The device mesh and the shardings the trainer puts its arrays on.

One code path for 1 CPU, N forced CPU devices, one GPU and many hosts: a 2-D mesh with axes
("data", "fsdp"). The batch is split over both axes (every device gets a different slice of the
batch); parameters and optimiser state are replicated, or split over "fsdp" by `param_shardings`.
Everything runs through `jax.jit` with these shardings; `pmap` is in maintenance mode and is not used.

Axis type: `AxisType.Auto` on both axes. The train step gives its inputs and outputs explicit
shardings and lets the compiler (Shardy) propagate them through the convolutions, gathers and
losses in between. `Explicit` axes ("sharding in types") would make every op inside the step
declare how its output is sharded and reject implicit reshards, which buys nothing for pure data
parallelism and would make each augmentation and loss function mesh-aware.

Config fields read (configs/saehd.py, section `mesh`): `data` (-1 = all remaining devices),
`fsdp`.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from preprocessing.errors import UserError

AXES = ("data", "fsdp")
# Arrays with fewer elements stay replicated under FSDP: splitting a bias saves nothing worth the
# extra all-gather. 2**14 float32 = 64 KiB; every conv kernel of a real SAEHD model is larger.
FSDP_MIN_SIZE = 2**14


def make_mesh(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The ("data", "fsdp") mesh over `devices` (default: all devices of all processes).

    `mesh_cfg.data` = -1 takes every device that `fsdp` leaves. A product that does not equal
    the device count is refused with a UserError, because silently idling devices (or failing
    later inside jit) is worse than saying so up front.
    """
    devices = list(jax.devices() if devices is None else devices)
    total = len(devices)
    data, fsdp = int(mesh_cfg.data), int(mesh_cfg.fsdp)
    if fsdp < 1 or (data < 1 and data != -1):
        raise UserError(f"config mesh: data={data}, fsdp={fsdp}; fsdp must be >= 1 and data >= 1 "
                        f"or -1 (all remaining devices)")
    if data == -1:
        if total % fsdp:
            raise UserError(f"config mesh: fsdp={fsdp} does not divide the {total} devices; "
                            f"choose a divisor of {total}")
        data = total // fsdp
    if data * fsdp != total:
        raise UserError(f"config mesh: data={data} x fsdp={fsdp} = {data * fsdp} devices, but "
                        f"{total} are present; set --config.mesh.data=-1 to use them all")
    return jax.make_mesh((data, fsdp), AXES, axis_types=(AxisType.Auto,) * len(AXES),
                         devices=devices)


def batch_shards(mesh: Mesh) -> int:
    """Into how many slices the batch axis is split (the batch size must be a multiple)."""
    return int(np.prod([mesh.shape[axis] for axis in AXES]))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over data and fsdp; the other axes whole on each device."""
    return NamedSharding(mesh, P(AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device (parameters without FSDP, resident facesets, scalars)."""
    return NamedSharding(mesh, P())


def param_shardings(tree: Any, mesh: Mesh, min_size: int = FSDP_MIN_SIZE) -> Any:
    """A NamedSharding per leaf of `tree` (parameters, optimiser state, the whole train state).

    The FSDP rule, by shape alone so parameters and their optimiser moments always agree: an
    array with at least `min_size` elements is split over the "fsdp" axis along its largest
    dimension that the axis size divides (the last such one on ties: a conv kernel's output
    channels); anything smaller or with no divisible dimension is replicated. With fsdp=1
    everything is replicated. Leaves may be arrays or ShapeDtypeStructs.
    """
    n = mesh.shape["fsdp"]

    def rule(leaf: Any) -> NamedSharding:
        shape = tuple(getattr(leaf, "shape", ()))
        if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
            return replicated(mesh)
        divisible = [axis for axis, size in enumerate(shape) if size % n == 0]
        if not divisible:
            return replicated(mesh)
        axis = max(divisible, key=lambda a: (shape[a], a))
        return NamedSharding(mesh, P(*("fsdp" if a == axis else None for a in range(len(shape)))))

    return jax.tree.map(rule, tree)


def put_global(tree: Any, shardings: Any) -> Any:
    """Arrays that every process holds whole and identical (freshly initialised parameters) ->
    global jax.Arrays placed by `shardings` (a matching tree of shardings).

    Each process fills only its own devices' shards, so this also works where `device_put`
    cannot: shardings that span devices of other processes.
    """
    def put(leaf: Any, sharding: NamedSharding) -> jax.Array:
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, jax.device_get(tree), shardings)


def local_batch_slice(sharding: NamedSharding, global_batch: int) -> slice:
    """The rows of a global batch that this process's devices hold (what it must read).

    Derived from the sharding itself rather than from process_index(), so it stays right for
    any device order the mesh has. Raises ValueError if they are not one contiguous run
    (make_array_from_process_local_data could not assemble such a batch from one local block).
    """
    rows = sorted({(index[0].start or 0, global_batch if index[0].stop is None else index[0].stop)
                   for index in sharding.addressable_devices_indices_map((global_batch,)).values()})
    start, stop = rows[0][0], rows[0][1]
    for a, b in rows[1:]:
        if a > stop:
            raise ValueError(f"this process holds non-contiguous batch rows {rows}")
        stop = max(stop, b)
    return slice(start, stop)


def host_to_global(tree: Any, sharding: NamedSharding) -> Any:
    """Host NumPy leaves (this process's part) -> global jax.Arrays with `sharding`.

    Each leaf is this process's slice along the sharded axis (the whole array in a
    single-process run, or when `sharding` is replicated), so the call is multi-host safe.
    """
    return jax.tree.map(lambda leaf: jax.make_array_from_process_local_data(sharding, np.asarray(leaf)),
                        tree)
