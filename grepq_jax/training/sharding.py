"""Data parallelism over a device mesh: the mesh, replicated placement and the
global batch.

The step is one global-view `jax.jit` over a 1-D `data` mesh: the batch is
sharded on `data`, parameters and optimizer state are replicated, and each
process feeds its own devices its own rows.
"""

import jax
from jax.sharding import NamedSharding
import numpy as np


def make_mesh(num_devices: int) -> jax.sharding.Mesh:
    """A 1-D `data` mesh over the first `num_devices` devices (0: all)."""
    devices = jax.devices()
    if num_devices and jax.process_count() > 1 and num_devices != len(devices):
        # Each process feeds its own devices an equal share of the batch.
        raise ValueError(
            f"config.num_devices={num_devices}: with {jax.process_count()} "
            f"processes every device takes part; use 0 (all {len(devices)})"
        )
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(
                f"config.num_devices={num_devices} but only "
                f"{len(devices)} devices are visible"
            )
        devices = devices[:num_devices]
    # Auto axes: the compiler propagates shardings through the global-view
    # step (jax 0.10 defaults to Explicit, where a sort over the batch fails).
    return jax.make_mesh(
        (len(devices),),
        ("data",),
        axis_types=(jax.sharding.AxisType.Auto,),
        devices=devices,
    )


def replicate(tree, replicated: NamedSharding):
    """`tree`, the same in every process, copied to every device of the mesh.

    Each process fills its own devices from a host copy: an array on one
    device cannot move to another process's, and `jax.device_put` would first
    compare the values across processes, one all-gather per array.
    """

    def place(x):
        host = np.asarray(x)
        return jax.make_array_from_callback(
            host.shape, replicated, lambda index: host[index]
        )

    return jax.tree.map(place, tree)


def global_batch(
    local_batch: dict[str, np.ndarray], sharding: NamedSharding
) -> dict[str, jax.Array]:
    """Each process's rows, assembled into arrays sharded over the mesh."""
    return {
        k: jax.make_array_from_process_local_data(sharding, v)
        for k, v in local_batch.items()
    }
