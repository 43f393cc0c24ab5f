"""A training split held in accelerator memory, so each train step gathers its batch there.

  split = DeviceSplit.load(source, mesh, budget_mb)   # None when it does not fit
  batch = split.gather(arrays, indices)               # inside the jitted train program

The split (uint8 images at their stored resolution, int32 labels; decoded once on the
host by memory_source.py) is copied to the devices when it fits `budget_mb` per device
(`config.input.device_data_mb`):
  replicated  every device holds the whole split: a step's gather is local to each device,
              with no communication (DermaMNIST is 16 MB; HAM10000's train split at 256 px
              ~1.4 GB);
  sharded     only 1/D of it fits: the rows are split over the mesh's 'data' axis, each
              device gathers the rows it holds for the whole global batch (zeros for the
              others) and one reduce-scatter over 'data' hands every device its part of the
              batch (the only collective: B x S x S x 3 bytes per step).
Otherwise `load` returns None and the loop streams batches through Grain instead
(input_pipeline.py). Either way a step trains on the same images and labels: the
indices come from the same stream (`input_pipeline.TrainIndices`), and a gather returns,
for indices (..., B), {'image': uint8 (..., B, S, S, 3), 'label': int32 (..., B)} with B
sharded over 'data', the arrays the Grain pipeline reads for those indices.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

REPLICATED, SHARDED = "replicated", "sharded"


@dataclasses.dataclass(frozen=True)
class DeviceSplit:
  """Where a split's arrays live on the mesh; `arrays` are passed to the jitted program
  (as an argument, never closed over: a constant would be copied into the program)."""

  arrays: dict[str, jax.Array]
  placement: str               # REPLICATED or SHARDED
  mesh: Mesh
  num_examples: int

  @classmethod
  def load(cls, source, mesh: Mesh, budget_mb: float) -> DeviceSplit | None:
    """`source` (anything with `.images` (N,S,S,3) uint8 and `.labels` (N,) arrays, e.g. an
    InMemorySource) on the devices of `mesh`, or None when it would take more than
    `budget_mb` MB per device (or the budget is <= 0)."""
    images = getattr(source, "images", None)
    if images is None or budget_mb <= 0:
      return None
    n, devices = len(source), mesh.devices.size
    nbytes = images.nbytes + 4 * n
    budget = budget_mb * 2**20
    if nbytes <= budget:
      placement, rows = REPLICATED, n
    elif math.ceil(n / devices) * (nbytes / n) <= budget:
      placement, rows = SHARDED, math.ceil(n / devices) * devices
    else:
      logging.info("Training split not held on the devices: %.0f MB (%.0f MB per device "
                   "sharded) is over input.device_data_mb=%s; batches stream through Grain.",
                   nbytes / 2**20, nbytes / devices / 2**20, budget_mb)
      return None
    spec = P() if placement == REPLICATED else P("data")
    sharding = NamedSharding(mesh, spec)
    host = {"image": _pad_rows(np.asarray(images, np.uint8), rows),
            "label": _pad_rows(np.asarray(source.labels, np.int32), rows)}
    arrays = {k: jax.make_array_from_callback(v.shape, sharding, lambda i, v=v: v[i])
              for k, v in host.items()}
    logging.info("Training split on the devices (%s): %d images of %s, %.0f MB per device.",
                 placement, n, images.shape[1:],
                 (nbytes if placement == REPLICATED else nbytes / devices) / 2**20)
    return cls(arrays=arrays, placement=placement, mesh=mesh, num_examples=n)

  def index_sharding(self, ndim: int) -> NamedSharding:
    """How index arrays of `ndim` dims (last axis: the global batch) are placed: split over
    'data' when the split is replicated (each device gathers its own examples), whole on
    every device when the split is sharded (each device serves rows of any example)."""
    if self.placement == REPLICATED:
      return NamedSharding(self.mesh, P(*([None] * (ndim - 1)), "data"))
    return NamedSharding(self.mesh, P())

  def gather(self, arrays: dict[str, jax.Array], indices: jax.Array) -> dict[str, jax.Array]:
    """The batch of `indices` (..., B) from the split's `arrays` (traced inside jit)."""
    if self.placement == REPLICATED:
      return {"image": jnp.take(arrays["image"], indices, axis=0),
              "label": jnp.take(arrays["label"], indices, axis=0)}
    lead = indices.ndim - 1
    out = P(*([None] * lead), "data")
    fn = jax.shard_map(_sharded_gather_body(lead), mesh=self.mesh,
                       in_specs=(P("data"), P("data"), P()), out_specs=(out, out))
    image, label = fn(arrays["image"], arrays["label"], indices)
    return {"image": image, "label": label}


def _sharded_gather_body(batch_axis: int):
  """The per-device body of a sharded gather: rows this device holds, then reduce-scatter."""

  def body(images, labels, indices):
    rows = images.shape[0]
    local = indices - jax.lax.axis_index("data") * rows
    own = (local >= 0) & (local < rows)
    safe = jnp.clip(local, 0, rows - 1)
    img = jnp.where(own[..., None, None, None], jnp.take(images, safe, axis=0), 0)
    lab = jnp.where(own, jnp.take(labels, safe, axis=0), 0)
    # Exactly one device contributes each row, so the sum is that row (no overflow).
    img = jax.lax.psum_scatter(img, "data", scatter_dimension=batch_axis, tiled=True)
    lab = jax.lax.psum_scatter(lab, "data", scatter_dimension=batch_axis, tiled=True)
    return img, lab

  return body


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
  if len(a) == rows:
    return a
  return np.concatenate([a, np.zeros((rows - len(a), *a.shape[1:]), a.dtype)])


def describe(split: DeviceSplit | None) -> dict[str, Any]:
  """For logs and benchmarks: where the training batches come from."""
  if split is None:
    return {"train_data": "grain"}
  return {"train_data": f"device ({split.placement})", "num_examples": split.num_examples}
