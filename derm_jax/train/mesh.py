"""Device mesh and shardings: batches split along a 'data' axis, model state replicated;
device results back on the host (`to_host`).

The same jitted step runs on 1 CPU, 8 GPUs or a TPU pod slice: only the mesh changes.
Host batches (this process's share) become global `jax.Array`s with
`jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from derm_jax.errors import ConfigError


def make_mesh() -> Mesh:
  # Auto axes: XLA propagates shardings (jax.make_mesh defaults to Explicit in new JAX).
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def check_batch_sizes(config) -> None:
  """Both batch sizes must split evenly over the devices (and so over the processes)."""
  n = jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    if config[field] % n:
      raise ConfigError(f"config.{field}={config[field]} must be divisible by the number of "
                       f"devices ({n}).")


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Process-local numpy batch -> global arrays sharded over the 'data' axis.

  The host arrays are copied first: `device_put` on CPU may alias host memory, and the
  input pipeline reuses its buffers.
  """
  sharding = data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.array(v, copy=True))
          for k, v in batch.items()}


def to_host(tree):
  """Device arrays -> numpy, gathered over all processes (one transfer for the whole tree)."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(np.asarray, jax.device_get(tree))
