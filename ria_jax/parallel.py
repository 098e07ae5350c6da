"""The data-parallel mesh: one axis, ``'data'``, over every device of every process."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: all global devices)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a host pytree on every device of the mesh (same value everywhere)."""
  sharding = NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(lambda x: jax.make_array_from_callback(np.shape(x), sharding,
                                                             lambda idx, x=x: np.asarray(x)[idx]), tree)


def describe(mesh: Mesh) -> str:
  """One line on the topology, for the logs."""
  kinds = sorted({d.device_kind for d in mesh.devices.flat})
  return (f"{mesh.devices.size} device(s) [{', '.join(kinds)}] in {jax.process_count()} process(es); "
          f"this is process {jax.process_index()} with {jax.local_device_count()} local device(s)")
