"""Restoring a population from its members' checkpoints: where a training run resumes
(`resume`), the old steps it deletes (`prune_checkpoints`), and a restored population for
evaluation (`restore`, `evaluate_checkpoint`; `init_run` for an untrained one).

The loop (derm_jax/train/loop.py) resumes from the newest step that every member holds
intact; `--mode=eval`, derm_jax.evaluate and derm_jax.load restore a checkpoint's every field
but the optimiser's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from derm_jax import fileio
from derm_jax.train import checkpoint, population
from derm_jax.train.population import Member
from derm_jax.train.task import Task


def prune_checkpoints(ckpts, keep: int) -> None:
  """Waits for every member's pending save, then deletes each member's steps older than the
  `keep` newest steps they all hold intact (none when they share none)."""
  for ck in ckpts:
    ck.wait()
  common = set.intersection(*(set(ck.usable_steps()) for ck in ckpts)) if ckpts else set()
  for ck in ckpts:
    ck.prune(keep, common)


def resume(members, ckpts, host_states, mesh):
  """(start step, stacked states on the mesh, restored windows): the newest step that every
  member has intact (later steps of some members are discarded), else step 0."""
  usable = [set(ck.usable_steps()) for ck in ckpts]
  for ck in ckpts:
    ck.latest_step()  # warns about damaged steps, naming the step used instead
  common_steps = set.intersection(*usable) if usable else set()
  if not common_steps:
    if any(usable):
      logging.warning("The members' checkpoints have no step in common (%s): every member "
                      "starts again from step 0.",
                      {m.name: sorted(u) for m, u in zip(members, usable, strict=True)})
    return 0, population.replicate(host_states, mesh), None
  start = max(common_steps)
  states, windows = [], []
  for m, ck in enumerate(ckpts):
    target = population.replicate(population.member(host_states, m), mesh)
    state, window = ck.restore_with_window(start, target)
    states.append(jax.tree.map(np.asarray, state))
    windows.append(unstack_window(window))
    ck.discard_after(start)
  logging.info("Resuming from checkpoint at step %d (%s).", start,
               ", ".join(m.workdir for m in members))
  return start, population.replicate(population.stack(states), mesh), windows


def unstack_window(saved: dict[str, np.ndarray] | None) -> list[dict]:
  if not saved:
    return []
  n = len(next(iter(saved.values())))
  return [{k: v[t] for k, v in saved.items()} for t in range(n)]


def init_run(task: Task, members: Sequence[Member]) -> population.Run:
  """The members' starting states as a Run, untrained (tests, benchmarks)."""
  states, keys = population.initial_states(task, members)
  return population.Run(task, list(members), population.replicate(states, task.mesh),
             population.replicate(keys, task.mesh), population.Programs.of(task, len(members), 1),
             last_rows=[{} for _ in members])


def restore(task: Task, members: Sequence[Member], step: int | None = None) -> population.Run:
  """The members' checkpoints (latest, or `step`) as a Run for evaluation: every field of
  the state but the optimiser's comes from the checkpoint; nothing is trained."""
  states, keys = [], []
  for m in members:
    ckpt_dir = fileio.join(m.workdir, "checkpoints")
    if not fileio.isdir(ckpt_dir):
      raise checkpoint.CheckpointNotFoundError(
          f"No checkpoints directory in workdir {m.workdir!r}.")
    state, key = task.init_member(m.config, m.workdir, for_inference=True)
    states.append(checkpoint.restore_for_inference(ckpt_dir, state, step))
    keys.append(key)
  run_states = population.replicate(population.stack(states), task.mesh)
  programs = population.Programs.of(task, len(members), 1)
  return population.Run(task, list(members), run_states, population.replicate(np.stack(keys), task.mesh),
             programs, last_rows=[{} for _ in members], step=int(states[0].step))


def evaluate_checkpoint(task: Task, name: str, workdir: str, step: int | None,
                        splits: Sequence[str]) -> dict[str, Any]:
  """`--mode=eval` of a one-member task: the checkpoint (latest or `step`) through the
  task's evaluator on each split, logged and written to WORKDIR/eval_step<step>.json."""
  run = restore(task, [Member(name, workdir, task.config)], step)
  results: dict[str, Any] = {"step": run.step}
  for split in splits:
    for k, v in task.make_evaluator(task.dataset.source(split)).run(run.predict)[0].items():
      results[f"{split}/{k}"] = v
  logging.info("Eval of %s at step %d: %s", workdir, run.step,
               ", ".join(f"{k}={v:.4f}" for k, v in results.items()
                         if k != "step" and isinstance(v, float)))
  if jax.process_index() == 0:
    with fileio.open(fileio.join(workdir, f"eval_step{run.step}.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results
