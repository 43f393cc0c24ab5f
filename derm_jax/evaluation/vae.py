"""VAE evaluator: mean ELBO, reconstruction NLL, KL (nats per image) and pixel MSE of a split.

The VAE task's eval step gives {'elbo', 'recon', 'kl', 'mse'} and the posterior mean
('latent') per image; `run(predict)` averages the first four over every image of the split
exactly once, for each member of a run, and keeps the latents (`latents`, (N, M, D), with
`labels`) for the VAE's latent map.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from derm_jax.evaluation import common

KEYS = ("elbo", "recon", "kl", "mse")


class VaeEvaluator:
  """Scores the VAE members of a run on one split."""

  def __init__(self, source: Any, *, batch_size: int, mesh):
    self.source = source
    self.batch_size, self.mesh = batch_size, mesh
    self.latents: np.ndarray | None = None
    self.labels: np.ndarray | None = None

  def run(self, predict: Callable) -> list[dict[str, float]]:
    out = common.collect(predict, self.source, batch_size=self.batch_size, mesh=self.mesh)
    self.latents, self.labels = out.get("latent"), out["label"]
    return [{k: float(np.mean(out[k][:, m], dtype=np.float64)) for k in KEYS}
            for m in range(common.num_members(out))]
