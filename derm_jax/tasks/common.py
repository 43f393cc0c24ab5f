"""What several tasks share, written once: applying a backbone with its BatchNorm statistics,
and the mean of each per-step scalar over a window of steps (the train metrics).

A task's state keeps the backbone's statistics as {'backbone': stats} (or {} for a backbone
without BatchNorm, e.g. ConvNeXt); `apply_backbone` takes and returns that collection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def apply_backbone(backbone, params, batch_stats, x, *, train: bool, rng=None):
  """(feature map, batch_stats) of `backbone` with parameters `params` on images `x`.

  train=True normalises with the batch's statistics, returns the updated running averages
  and draws dropout from `rng`; train=False uses the running averages and returns
  `batch_stats` as given."""
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats["backbone"]
  if not train:
    return backbone.apply(variables, x, train=False), batch_stats
  if batch_stats:
    feats, upd = backbone.apply(variables, x, train=True, rngs={"dropout": rng},
                                mutable=["batch_stats"])
    return feats, {"backbone": upd["batch_stats"]}
  return backbone.apply(variables, x, train=True, rngs={"dropout": rng}), batch_stats


def mean_summary(keys: Sequence[str]) -> Callable[[list[dict]], dict[str, float]]:
  """A task's `summarize_train`: the mean of each of `keys` over a window of step outputs."""
  def summarize(outputs: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([o[k] for o in outputs], dtype=np.float64)) for k in keys}
  return summarize
