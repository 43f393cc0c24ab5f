"""What a task defines for the one training loop: pure single-member functions and evaluators.

A task (derm_jax/tasks/vae.py, derm_jax/tasks/classifier.py, ...) returns a `Task` from
its `build(config, ...)`: the model's state, its train and eval steps as pure functions of
ONE member, and what to evaluate. Everything else is the loop's
(derm_jax/train/loop.py): it trains a population of members of a task side by side
(derm_jax/train/population.py: `jax.vmap` over members, `lax.scan` over steps); a plain
run is a population of one, a study's stage a population of every (arm, seed).

Members of a population share the task: the architecture, optimiser, schedule, batch size,
data and augmentation. They differ in their initial state, their key (initialisation,
dropout, augmentation draws) and their data order: `init_member(member_config, workdir)`
makes one member's starting point from that member's own config (its seed, and where its
backbone starts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from jax.sharding import Mesh

from derm_jax.data.registry import DatasetMeta


@dataclasses.dataclass
class Task:
  """One task's model, steps and evaluators for one (shared) config."""

  config: Any
  meta: DatasetMeta
  dataset: Any                 # the registry's Dataset (sources, labels, describe())
  mesh: Mesh
  steps_per_epoch: int
  total_steps: int
  learning_rate: Callable[[int], float]
  # (member config, member workdir, for_inference) -> (state pytree of host arrays, key
  # data uint32). for_inference: a checkpoint will provide the values; no optimiser state.
  init_member: Callable[..., tuple[Any, np.ndarray]]
  # (state, batch, key) -> (state, step outputs); outputs include 'finite' (a bool scalar:
  # the loss and gradient were finite). batch: {'image': uint8 (B,S,S,3), 'label': (B,)}.
  train_step: Callable
  # (state, batch, key) -> per-example outputs, each (B, ...).
  eval_step: Callable
  # Host reduction of one member's step outputs over a window of steps -> train metrics.
  summarize_train: Callable[[list[dict]], dict[str, Any]]
  # (source, has_labels=True) -> an evaluator: .run(predict) -> one metrics dict per member.
  make_evaluator: Callable[..., Any]
  train_source: Any = None     # the training split the stream indexes (random access)
  train_labels: np.ndarray | None = None  # balanced sampling and the majority baseline
  balanced_sampling: bool = False
  # Method-specific batch contents: (members, indices (L, M, B), step, n) -> {name:
  # indices (L, M, B)} of other training images, gathered on the device into batch[name]
  # (MICLe: another image of each example's lesion, tasks/simclr.py). Host-side, per chunk.
  extra_inputs: Callable | None = None
  # Config fields in which this task's members may differ besides the seed, init.* and the
  # label fraction (population.MEMBER_FIELDS), e.g. SimCLR's kind of positive pair.
  member_fields: tuple[str, ...] = ()
  progress_keys: tuple[str, ...] = ("loss",)
  # After each evaluation: (task, run, step, rows) -> None, `run` the loop's
  # population (states, keys, members, predict).
  after_eval: Callable | None = None
  # What is computed once per task (`once`) and reused by every population of it: the
  # training split (in memory and on the devices), the compiled programs per (members,
  # steps per dispatch), the step's FLOPs, the VAE's latent-map encoder, outside sets. A study stage builds its task once and trains its groups
  # of members with it, so a second group compiles and decodes nothing.
  memo: dict = dataclasses.field(default_factory=dict)

  def once(self, key, make: Callable[[], Any]) -> Any:
    """`make()`, computed on the first call with `key` and kept in `memo` for the next."""
    if key not in self.memo:
      self.memo[key] = make()
    return self.memo[key]

  @property
  def batch_size(self) -> int:
    return int(self.config.batch_size)
