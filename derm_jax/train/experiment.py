"""The typed experiment: everything the training loop, --mode=eval, derm_jax.evaluate and
the benchmarks need of one task, built by that task's public `build(config, workdir)`.

A task (derm_jax/tasks/vae.py, derm_jax/tasks/classifier.py) defines the model, the loss,
the jitted steps and what to evaluate; the loop (derm_jax/train/loop.py) owns the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from jax.sharding import Mesh

from derm_jax.data.registry import DatasetMeta


@dataclasses.dataclass
class Experiment:
  """One task's built model, state, steps and evaluators for one config."""

  config: Any
  meta: DatasetMeta
  dataset: Any                 # the registry's Dataset (sources, labels, describe())
  mesh: Mesh
  state: Any                   # initial train state, replicated over the mesh
  train_step: Callable         # jitted (state, batch) -> (state, step outputs)
  eval_step: Callable          # jitted (state, batch) -> per-example outputs
  steps_per_epoch: int
  total_steps: int
  learning_rate: Callable[[int], float]
  # Host reduction of the step outputs of a window of steps -> train metrics.
  summarize_train: Callable[[list[dict]], dict[str, Any]]
  # evaluator factory: source -> an object with .run(state) -> metrics dict
  make_evaluator: Callable[[Any], Any]
  train_labels: np.ndarray | None = None  # for balanced sampling and the majority baseline
  balanced_sampling: bool = False
  progress_keys: tuple[str, ...] = ("loss",)
  # Optional hook after each evaluation: (experiment, state, step, eval row, writer,
  # workdir) -> None.
  after_eval: Callable | None = None

  @property
  def batch_size(self) -> int:
    return int(self.config.batch_size)
