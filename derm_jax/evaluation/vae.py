"""VAE evaluator: mean ELBO, reconstruction NLL, KL (nats per image) and pixel MSE of a split.

`eval_fn(state, batch) -> {'elbo', 'recon', 'kl', 'mse'}`, each per image (B,), is the VAE
task's jitted evaluation; the averages are over every image of the split exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from derm_jax.evaluation import common

KEYS = ("elbo", "recon", "kl", "mse")


class VaeEvaluator:
  """Scores a VAE state on one split."""

  def __init__(self, eval_fn: Callable, source: Any, *, batch_size: int, mesh):
    self.eval_fn, self.source = eval_fn, source
    self.batch_size, self.mesh = batch_size, mesh

  def run(self, state) -> dict[str, float]:
    out = common.collect(self.eval_fn, state, self.source, batch_size=self.batch_size,
                         mesh=self.mesh)
    return {k: float(np.mean(out[k], dtype=np.float64)) for k in KEYS}
