"""Multi-process (multi-host) set-up: `jax.distributed.initialize` from flags or the environment,
and the few host-side decisions that every process must take identically.

One process drives all the devices of one host (or, on GPUs, one process per GPU: both work).
Launch the same command on every host with

  --coordinator_address=host0:1234 --num_processes=N --process_id=i

or the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; or
`--auto_distributed` where JAX detects the cluster itself (Cloud TPU slices, SLURM, Open MPI,
Kubernetes). Without any of these the run is single-process.

Why `agree` / `any_process`: a decision taken from a local clock or a local signal can differ
between hosts; a host that then saves (a collective orbax write) or stops alone waits forever for
the others. Such decisions go through one tiny collective so all processes take the same branch.
Importing this module does not start JAX (the flags must parse first).
"""
from __future__ import annotations

import os

import numpy as np
from absl import flags

from preprocessing.errors import UserError

_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0's coordinator service, for multi-host training (default: "
    "$JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "How many processes take part (default: $JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index in [0, num_processes) (default: $JAX_PROCESS_ID).")
_AUTO = flags.DEFINE_boolean(
    "auto_distributed", False,
    "Initialise the multi-process runtime with what JAX detects from the cluster (Cloud TPU "
    "slices, SLURM, Open MPI, Kubernetes); explicit flags or variables take precedence.")


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"${name}={value!r}: must be an integer") from None


def initialize_from_flags() -> bool:
    """Starts JAX's multi-process runtime when asked to; returns whether it did.

    Must run before anything touches a device (jax.devices(), any computation). A given address
    or count with a missing part leaves that part to JAX's cluster detection; what cannot be
    detected is reported as a UserError naming the flag.
    """
    address = _ADDRESS.value or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num = _NUM_PROCESSES.value if _NUM_PROCESSES.value is not None else _int_env("JAX_NUM_PROCESSES")
    pid = _PROCESS_ID.value if _PROCESS_ID.value is not None else _int_env("JAX_PROCESS_ID")
    if num == 1 or (address is None and num is None and pid is None and not _AUTO.value):
        return False
    import jax  # not at import time: `--help` must stay fast

    try:
        jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)
    except (ValueError, TypeError) as e:
        raise UserError(f"multi-host set-up failed ({e}); pass --coordinator_address, "
                        f"--num_processes and --process_id (or JAX_COORDINATOR_ADDRESS, "
                        f"JAX_NUM_PROCESSES, JAX_PROCESS_ID)") from None
    return True


def is_main_process() -> bool:
    """Process 0 writes what there is one of: previews, metrics, config.json."""
    import jax

    return jax.process_index() == 0


def agree(flag: bool) -> bool:
    """Process 0's `flag` on every process (the caller's own flag in a single-process run)."""
    import jax

    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.bool_)))


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on any (a signal that reached one host)."""
    import jax

    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.bool_))))
