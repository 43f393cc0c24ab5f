"""The one training loop, shared by every task: open the workdir, resume, step, log,
evaluate, checkpoint, stop on non-finite values, close.

  state, last_eval = loop.train(experiment, workdir)

Cadence is by step (`u.itstime`-style): log every `log_every_steps`, evaluate every
`eval_every_epochs` epochs, checkpoint every `checkpoint_every_steps` steps (0 = once an
epoch), and all three at the last step. Between those points nothing waits on the device:
step outputs stay on the device and are fetched once per log point, so the host keeps
dispatching steps while the accelerator works. The train metrics written with each
evaluation are computed from every step since the previous one (exact, not a running
estimate), which is what the overfitting gap compares with validation.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
from absl import logging

from derm_jax import fileio
from derm_jax.data import input_pipeline, memory_source
from derm_jax.evaluation import common
from derm_jax.evaluation import metrics as metrics_lib
from derm_jax.train import mesh as mesh_lib
from derm_jax.train import outputs
from derm_jax.train.experiment import Experiment
from derm_jax.train.workdir_lock import WorkdirLock


class StoppedAfterStep(SystemExit):
  """Raised once the run has checkpointed `config.stop_after_step` (exit status 0): the job
  ends as a preempted one would, and the same command resumes it."""

  def __init__(self, step: int):
    super().__init__(0)
    self.step = step


def epoch_of(step: int, steps_per_epoch: int) -> float | int:
  """The epoch reached after `step` steps: an int at epoch ends, else 3 decimals."""
  e = step / steps_per_epoch
  return int(e) if float(e).is_integer() else round(e, 3)


def itstime(step: int, every: int, total: int) -> bool:
  """True every `every` steps (0 = never) and at the last step."""
  return step == total or (every > 0 and step % every == 0)


class _Window:
  """Step outputs since the last log point (on the device) and since the last evaluation
  (on the host), with the check that every step so far was finite."""

  def __init__(self, first_step: int):
    self.device: list[dict] = []
    self.host: list[dict] = []
    self.first = first_step  # step number of device[0]

  def add(self, out: dict) -> None:
    self.device.append(out)

  def fetch(self) -> list[dict]:
    """Brings the pending outputs to the host (one transfer), checks them, returns them."""
    fetched = common.to_host(self.device) if self.device else []
    for i, out in enumerate(fetched):
      if not bool(np.all(out["finite"])):
        step = self.first + i
        raise FloatingPointError(
            f"Non-finite training loss or gradient at step {step}; stopping. No checkpoint "
            f"after step {step - 1} was written; lower the learning rate or enable gradient "
            "clipping (config.optimizer.grad_clip).")
    self.first += len(self.device)
    self.device = []
    self.host.extend(fetched)
    return fetched

  def take_host(self) -> list[dict]:
    self.fetch()
    out, self.host = self.host, []
    return out


def train_dataset(exp: Experiment):
  """The experiment's training stream (a Grain MapDataset indexed by global batch)."""
  c = exp.config
  source = exp.dataset.source("train")
  # Decoded once into host memory where it fits (input.cache_mb): batches become gathers.
  # Grain worker processes (input.num_workers) are the other way: they decode every epoch.
  if not c.input.get("num_workers", 0):
    source = memory_source.InMemorySource.load(
        source, c.input.get("cache_mb", 0), c.input.num_threads) or source
  return input_pipeline.train_dataset(
      source, global_batch_size=c.batch_size, image_size=c.image_size,
      aug=c.aug, seed=c.seed, labels=exp.train_labels, balanced=exp.balanced_sampling)


def train_iterator(exp: Experiment, ds):
  """The Grain iterator over `ds` (`train_dataset(exp)`, or a `from_step` of it), with the
  experiment's reader threads, prefetch and worker processes."""
  c = exp.config
  return input_pipeline.train_iterator(ds, c.input.num_threads, c.input.prefetch,
                                       c.input.get("num_workers", 0))


def _eval_row(exp: Experiment, state, step: int, train_outputs: list[dict]) -> dict[str, Any]:
  train_m = exp.summarize_train(train_outputs) if train_outputs else {}
  val_m = exp.make_evaluator(exp.dataset.source("val")).run(state)
  row = {f"train/{k}": v for k, v in train_m.items() if np.isscalar(v) or v is None}
  row.update({f"val/{k}": v for k, v in val_m.items() if np.isscalar(v) or v is None})
  if "accuracy" in val_m and "loss" in val_m:
    row.update(metrics_lib.overfitting_gap(train_m, val_m))
  return row


def _fmt(row: dict) -> str:
  return ", ".join(f"{k}={v:.4f}" for k, v in row.items() if isinstance(v, float))


def step_flops(step_fn, state, batch) -> float | None:
  """FLOPs of one train step from XLA's cost analysis of the lowered step (no compile)."""
  try:
    cost = step_fn.lower(state, batch).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
  except Exception as e:  # cost analysis is best effort: never fail a run over it
    logging.info("No FLOP count for the train step (%s).", e)
    return None
  return flops if flops > 0 else None


def train(exp: Experiment, workdir: str) -> tuple[Any, dict[str, Any]]:
  """Trains `exp` in `workdir`, resuming from its latest checkpoint; returns the final
  state and the last evaluation row."""
  ds = train_dataset(exp)  # fails on bad data settings before the workdir is touched
  lock = WorkdirLock(workdir, is_main=jax.process_index() == 0).acquire()
  try:
    return _train_locked(exp, workdir, ds)
  finally:
    lock.release()


def _train_locked(exp: Experiment, workdir: str, ds):
  c = exp.config
  spe, total = exp.steps_per_epoch, exp.total_steps
  ckpt, writer, is_main = outputs.open_run(workdir, c, c.keep_checkpoints)
  state = exp.state
  start = ckpt.latest_step()
  if start is not None:  # the newest intact step (damaged ones are skipped, with a warning)
    start, state = ckpt.restore_latest(state)
    logging.info("Resuming from checkpoint at step %d in %s", start, ckpt.directory)
    writer.truncate_after(start)
  else:
    start = 0
    if is_main:
      outputs.write_parameter_overview(workdir, state.params)
  logging.info("Training %d steps (%d per epoch, batch %d on %d devices).", total, spe,
               c.batch_size, jax.device_count())
  eval_every = max(1, int(round(c.get("eval_every_epochs", 1.0) * spe)))
  ckpt_every = c.get("checkpoint_every_steps", 0) or spe
  profile = tuple(c.get("profile_steps", ()) or ())
  if profile and (len(profile) != 2 or not 0 < profile[0] < profile[1]):
    raise ValueError(f"config.profile_steps={profile}: expected (first, last) steps, "
                     "0 < first < last.")
  stop_after = c.get("stop_after_step", 0) or 0
  resumed = train_iterator(exp, input_pipeline.from_step(ds, start))
  batches = mesh_lib.prefetch_to_device(resumed, exp.mesh, c.input.get("device_prefetch", 2))
  progress = None
  window = _Window(start + 1)
  last_eval: dict[str, Any] = {}
  try:
    for step in range(start + 1, total + 1):
      batch = next(batches)
      if progress is None:
        progress = outputs.Progress(total, start, c.batch_size, c.log_every_steps,
                                    flops_per_step=step_flops(exp.train_step, state, batch))
      if profile and step == profile[0]:
        jax.profiler.start_trace(fileio.join(workdir, "profile"))
      t_step = time.monotonic()
      state, out = exp.train_step(state, batch)
      if step == start + 1:  # jit compiles (or loads from a cache) on the first call
        logging.info("Train step compiled in %.1f s.", time.monotonic() - t_step)
      window.add(out)
      if profile and step == profile[1]:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        logging.info("Profile of steps %d-%d written to %s (TensorBoard's profile tab, or "
                     "Perfetto).", profile[0], profile[1], fileio.join(workdir, "profile"))
      if step == start + 1:
        progress.restart_clock(step)
      t_other = time.monotonic()
      log_time = 0.0
      if itstime(step, c.log_every_steps, total):
        logged = window.fetch()
        scalars = {f"train/{k}": v for k, v in exp.summarize_train(logged).items()
                   if isinstance(v, float)}
        scalars["train/learning_rate"] = exp.learning_rate(step)
        writer.write_scalars(step, scalars)
        progress(step, {k: scalars[f"train/{k}"] for k in exp.progress_keys})
        log_time = time.monotonic() - t_other  # waiting for the device is training time
      if itstime(step, eval_every, total):
        row = _eval_row(exp, state, step, window.take_host())
        epoch = epoch_of(step, spe)
        writer.write_scalars(step, {k: v for k, v in row.items() if v is not None})
        writer.write_row({"step": step, "epoch": epoch, **row})
        logging.info("epoch %s/%s (step %d) | %s", epoch, epoch_of(total, spe), step,
                     _fmt(row))
        if exp.after_eval is not None:
          exp.after_eval(exp, state, step, row, writer, workdir)
        writer.flush()
        last_eval = row
      stop = step == stop_after and step < total
      if itstime(step, ckpt_every, total) or stop:
        window.fetch()  # never checkpoint a state that followed a non-finite step
        ckpt.save(step, state)
      if stop:
        logging.info("Stopping after step %d of %d (config.stop_after_step); the same command "
                     "resumes the run.", step, total)
        raise StoppedAfterStep(step)
      progress.exclude(time.monotonic() - t_other - log_time)
  finally:  # also on errors: finish pending saves, keep the last good checkpoint
    ckpt.close()
    writer.close()
  if start >= total:
    logging.info("Checkpoint at step %d already completes the %d-step run.", start, total)
  return state, last_eval


def restore(exp: Experiment, workdir: str, step: int | None = None):
  """The state of a run's checkpoint (latest or `step`), without its optimiser state."""
  from derm_jax.train import checkpoint
  ckpt_dir = fileio.join(workdir, "checkpoints")
  if not fileio.isdir(ckpt_dir):
    raise FileNotFoundError(f"No checkpoints directory in workdir {workdir!r}.")
  return checkpoint.restore_for_inference(ckpt_dir, exp.state, step,
                                          mesh_lib.replicated(exp.mesh))
