"""What every evaluator shares: run a jitted per-example function over a whole split.

`collect` feeds each padded eval batch through `fn(state, batch) -> {name: (B, ...) array}`,
keeps the results on the device until the split is done, then brings them to the host in
one transfer (gathered over processes in multi-host runs) and drops the padding. Nothing
waits on the device between batches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from derm_jax.data import input_pipeline
from derm_jax.train import mesh as mesh_lib


def to_host(tree: Any) -> Any:
  """Device arrays -> numpy, gathered over all processes (one transfer for the whole tree)."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(np.asarray, jax.device_get(tree))


def collect(fn: Callable, state: Any, source: Any, *, batch_size: int,
            mesh) -> dict[str, np.ndarray]:
  """Per-example outputs of `fn` over every example of `source` once, in source order.

  The returned dict also holds the batches' 'label', 'id' and 'index' (position in
  `source`); the padding of the last batch is removed. Images reach `fn` as stored (uint8):
  `fn` resizes them on the device (`device_augment.model_images`)."""
  outs, batches = [], []
  for batch in input_pipeline.eval_batches(source, global_batch_size=batch_size,
                                           image_size=None):
    sharded = mesh_lib.shard_batch(batch, mesh)
    outs.append(fn(state, sharded))
    batches.append({k: sharded[k] for k in ("label", "id", "index", "mask")})
  host_outs, host_batches = to_host((outs, batches))
  merged = {k: np.concatenate([o[k] for o in host_outs]) for k in host_outs[0]}
  merged.update({k: np.concatenate([b[k] for b in host_batches]) for k in host_batches[0]})
  keep = merged.pop("mask") > 0
  merged = {k: v[keep] for k, v in merged.items()}
  order = np.argsort(merged["index"], kind="stable")  # processes' shares come interleaved
  return {k: v[order] for k, v in merged.items()}
