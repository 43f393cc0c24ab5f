"""What every evaluator shares: run a population's prediction over a whole split.

`collect` feeds each padded eval batch through `predict(batch) -> {name: (B, M, ...)}` (the
eval step of all M members of a run, `population.Run.predict`), keeps the results on the device
until the split is done, then brings them to the host in one transfer (gathered over
processes in multi-host runs) and drops the padding. Nothing waits on the device between
batches. `per_member(out, m)` is member m's view of the result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from derm_jax.data import input_pipeline
from derm_jax.train import mesh as mesh_lib


def collect(predict: Callable, source: Any, *, batch_size: int, mesh) -> dict[str, np.ndarray]:
  """Per-example outputs of `predict` over every example of `source` once, in source order.

  The returned dict also holds the batches' 'label', 'id' and 'index' (position in
  `source`); the padding of the last batch is removed. Images reach `predict` as stored
  (uint8): the eval step resizes them on the device (`device_augment.model_images`)."""
  outs, batches = [], []
  for batch in input_pipeline.eval_batches(source, global_batch_size=batch_size,
                                           image_size=None):
    sharded = mesh_lib.shard_batch(batch, mesh)
    outs.append(predict(sharded))
    batches.append({k: sharded[k] for k in ("label", "id", "index", "mask")})
  host_outs, host_batches = mesh_lib.to_host((outs, batches))
  merged = {k: np.concatenate([o[k] for o in host_outs]) for k in host_outs[0]}
  merged.update({k: np.concatenate([b[k] for b in host_batches]) for k in host_batches[0]})
  keep = merged.pop("mask") > 0
  merged = {k: v[keep] for k, v in merged.items()}
  order = np.argsort(merged["index"], kind="stable")  # processes' shares come interleaved
  return {k: v[order] for k, v in merged.items()}


BATCH_KEYS = ("label", "id", "index")


def per_member(out: dict[str, np.ndarray], m: int) -> dict[str, np.ndarray]:
  """Member m's outputs of `collect` (the batch's own keys are shared by every member)."""
  return {k: (v if k in BATCH_KEYS else v[:, m]) for k, v in out.items()}


def num_members(out: dict[str, np.ndarray]) -> int:
  return next(v.shape[1] for k, v in out.items() if k not in BATCH_KEYS)
