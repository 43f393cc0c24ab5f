"""The one training loop, shared by every task: open the members' workdirs, resume, train
chunks of steps, log, evaluate, checkpoint, stop on non-finite values, close.

  run = loop.train(task, members)        # a plain run: members = [Member(name, workdir, config)]
  run.states, run.keys, run.predict(batch), run.last_rows

A run trains a population (derm_jax/train/population.py): one member for a plain run, every
(arm, seed) of a study's stage for a study. Each member keeps its own workdir: config.json,
metrics.jsonl, TensorBoard events and Orbax checkpoints, exactly as a run of its own.

Cadence is by step (`u.itstime`-style): log every `log_every_steps`, evaluate every
`eval_every_epochs` epochs, checkpoint every `checkpoint_every_steps` steps (0 = once an
epoch), and all three at the last step. The steps between two such points run as ONE
dispatch (a `lax.scan` over up to `scan_len` steps, every member at once); the host only
prepares the next chunk's indices and, at a log point, fetches the step outputs. The data
live on the device when the training split fits (`config.input.device_data_mb`,
derm_jax/data/device_data.py): a step gathers its batch there from the stream's indices,
with no host work per step; otherwise the chunk's batches come through Grain. The train
metrics written with each evaluation are computed from every step since the previous one
(exact, not a running estimate), which is what the overfitting gap compares with
validation; a checkpoint keeps those steps' outputs, so a run resumed mid-epoch writes the
same metrics as an uninterrupted one (the rows of evaluations after the checkpoint it resumes
from, left by a run killed before its next checkpoint, are dropped first: each evaluation is
one row).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from derm_jax import fileio, metrics
from derm_jax.data import device_data
from derm_jax.errors import ConfigError, TrainingDivergedError
from derm_jax.train import feed as feed_lib
from derm_jax.train import mesh as mesh_lib
from derm_jax.train import outputs, population, restore
from derm_jax.train.population import Member
from derm_jax.train.task import Task


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


def progress_text(step: int, steps_per_epoch: int, total: int) -> str:
  """Where an evaluation stands, for the log: `epoch 2/10 (step 68)` when the run is whole
  epochs long; a run cut short of an epoch end (`total_steps`, `smoke_steps`) counts steps,
  with the epoch reached: `step 26/30 (epoch 2)`, `step 30/30 (epoch 2.31)`."""
  if total % steps_per_epoch == 0 and step % steps_per_epoch == 0:
    return f"epoch {step // steps_per_epoch}/{total // steps_per_epoch} (step {step})"
  return f"step {step}/{total} (epoch {_epoch_text(step, steps_per_epoch)})"


def _epoch_text(step: int, steps_per_epoch: int) -> str:
  """An epoch count for the log: an integer at epoch ends, else 2 decimals."""
  e = step / steps_per_epoch
  return str(int(e)) if float(e).is_integer() else f"{e:.2f}"


def itstime(step: int, every: int, total: int) -> bool:
  """True every `every` steps (0 = never) and at the last step."""
  return step == total or (every > 0 and step % every == 0)


@dataclasses.dataclass
class Cadence:
  """When a run logs, evaluates, checkpoints, stops and profiles, in steps."""

  total: int
  log_every: int
  eval_every: int
  ckpt_every: int
  stop_after: int = 0
  profile: tuple[int, ...] = ()

  @classmethod
  def of(cls, config, steps_per_epoch: int, total: int) -> Cadence:
    profile = tuple(config.get("profile_steps", ()) or ())
    if profile and (len(profile) != 2 or not 0 < profile[0] < profile[1]):
      raise ConfigError(f"config.profile_steps={profile}: expected (first, last) steps, "
                       "0 < first < last.")
    return cls(total=total, log_every=int(config.log_every_steps),
               eval_every=max(1, int(round(config.get("eval_every_epochs", 1.0)
                                           * steps_per_epoch))),
               ckpt_every=int(config.get("checkpoint_every_steps", 0) or steps_per_epoch),
               stop_after=int(config.get("stop_after_step", 0) or 0), profile=profile)

  def scan_len(self, limit: int = 0) -> int:
    """Steps per dispatch: the longest stretch between two log, eval or checkpoint points
    (capped by `limit` > 0, `config.steps_per_dispatch`)."""
    periods = [p for p in (self.log_every, self.eval_every, self.ckpt_every, self.total)
               if p > 0]
    n = min(periods)
    return max(1, min(n, limit) if limit > 0 else n)

  def next_stop(self, step: int, scan_len: int) -> int:
    """The end of the chunk that starts after `step`: the next step at which the host has
    something to do, at most `scan_len` steps on."""
    ends = [self.total, step + scan_len]
    for every in (self.log_every, self.eval_every, self.ckpt_every):
      if every > 0:
        ends.append((step // every + 1) * every)
    for point in (self.stop_after, *([self.profile[0] - 1, self.profile[1]]
                                     if self.profile else [])):
      if point > step:
        ends.append(point)
    return min(ends)


def dispatch_limit(config) -> int:
  """`config.steps_per_dispatch`, where 0 (automatic) means up to the next log, eval or
  checkpoint point on an accelerator and 1 on a CPU, where a step inside a loop is many
  times slower than the same step dispatched alone (train/population.py)."""
  limit = int(config.get("steps_per_dispatch", 0) or 0)
  if limit == 0 and jax.default_backend() == "cpu":
    return 1
  return limit


# ----------------------------------------------------------------------------- outputs


class _Window:
  """Step outputs per member: chunks still on the device, and on the host those since the
  last log point and since the last evaluation; checks that every step was finite."""

  def __init__(self, members: Sequence[Member], restored: list[list[dict]] | None = None):
    self.members = members
    self.pending: list[tuple[int, int, Any]] = []  # (first step, steps, outputs on device)
    self.host: list[list[dict]] = restored or [[] for _ in members]
    self.since_log: list[list[dict]] = [[] for _ in members]

  def add(self, first: int, n: int, outs) -> None:
    self.pending.append((first, n, outs))

  def fetch(self) -> None:
    """Brings the pending chunks to the host (one transfer) and checks them."""
    if not self.pending:
      return
    host = mesh_lib.to_host([o for _, _, o in self.pending])
    for (first, n, _), outs in zip(self.pending, host, strict=True):
      finite = np.asarray(outs["finite"])[:n]  # (n, M)
      for t in range(n):
        for m, member in enumerate(self.members):
          if not bool(finite[t, m]):
            step = first + t
            who = (f" of {member.name} ({member.workdir})" if len(self.members) > 1
                   else "")
            raise TrainingDivergedError(
                f"Non-finite training loss or gradient at step {step}{who}; stopping. No "
                f"checkpoint after step {step - 1} was written; lower the learning rate or "
                "enable gradient clipping (config.optimizer.grad_clip).")
          out = {k: v[t, m] for k, v in outs.items()}
          self.host[m].append(out)
          self.since_log[m].append(out)
    self.pending = []

  def take_log(self) -> list[list[dict]]:
    self.fetch()
    out, self.since_log = self.since_log, [[] for _ in self.members]
    return out

  def take_host(self) -> list[list[dict]]:
    self.fetch()
    out, self.host = self.host, [[] for _ in self.members]
    return out

  def saved(self, m: int) -> dict[str, np.ndarray] | None:
    """Member m's outputs since the last evaluation, stacked over steps (for a checkpoint)."""
    steps = self.host[m]
    if not steps:
      return None
    return {k: np.stack([np.asarray(o[k]) for o in steps]) for k in steps[0]}


def _fmt(row: dict) -> str:
  return ", ".join(f"{k}={v:.4f}" for k, v in row.items() if isinstance(v, float))


def eval_rows(task: Task, run: population.Run, windows: list[list[dict]], step: int
              ) -> list[dict[str, Any]]:
  """Each member's row: train metrics of its window, validation metrics, overfitting gap
  (the evaluator stays on the run: `run.val_evaluator`, `run.val_step`)."""
  evaluator = task.make_evaluator(task.dataset.source("val"))
  val = evaluator.run(run.predict)
  run.val_evaluator, run.val_step = evaluator, step
  rows = []
  for train_out, val_m in zip(windows, val, strict=True):
    train_m = task.summarize_train(train_out) if train_out else {}
    row = {f"train/{k}": v for k, v in train_m.items() if np.isscalar(v) or v is None}
    row.update({f"val/{k}": v for k, v in val_m.items() if np.isscalar(v) or v is None})
    if "accuracy" in val_m and "loss" in val_m:
      row.update(metrics.overfitting_gap(train_m, val_m))
    rows.append(row)
  return rows


def step_flops(task: Task, member_state, image_shape) -> float | None:
  """FLOPs of one member's train step from XLA's cost analysis of the lowered step (traced,
  not compiled); once per task (`task.memo`)."""
  return task.once("step_flops", lambda: _step_flops(task, member_state, image_shape))


def _step_flops(task: Task, member_state, image_shape) -> float | None:
  b = task.batch_size
  batch = {"image": jax.ShapeDtypeStruct((b, *image_shape), np.uint8),
           "label": jax.ShapeDtypeStruct((b,), np.int32)}
  try:
    key = jax.random.key_data(jax.random.key(0))
    fn = jax.jit(lambda s, x, k: task.train_step(s, x, jax.random.wrap_key_data(k)))
    cost = fn.lower(member_state, batch, key).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
  except Exception as e:  # cost analysis is best effort: never fail a run over it
    logging.info("No FLOP count for the train step (%s).", e)
    return None
  return flops if flops > 0 else None


# ----------------------------------------------------------------------------- the loop


def train(task: Task, members: Sequence[Member]) -> population.Run:
  """Trains `members` of `task`, resuming from their checkpoints; returns the Run. The
  members' configs must equal the task's but for `population.MEMBER_FIELDS`; later calls
  with the same task (a study stage's next group) reuse its split and compiled programs."""
  members = list(members)
  population.check_members(members, like=task.config, fields=task.member_fields)
  c = task.config
  source, split = feed_lib.training_split(task)  # bad data settings fail before a workdir is touched
  opened = [outputs.open_run(m.workdir, m.config, c.keep_checkpoints) for m in members]
  ckpts = [o[0] for o in opened]
  writers = [o[1] for o in opened]
  try:
    run = _train(task, members, source, split, ckpts, writers)
    restore.prune_checkpoints(ckpts, c.keep_checkpoints)  # a stopped or failed run keeps its steps
    return run
  finally:  # also on errors: finish pending saves, keep the last good checkpoint
    for ckpt in ckpts:
      ckpt.close()
    for w in writers:
      w.close()


def _train(task: Task, members, source, split, ckpts, writers) -> population.Run:
  c = task.config
  spe, total = task.steps_per_epoch, task.total_steps
  mesh = task.mesh
  host_states, keys = population.initial_states(task, members)
  start, states, restored = restore.resume(members, ckpts, host_states, mesh)
  for w in writers:  # rows of evaluations after that checkpoint are written again
    w.truncate_after(start)
  one = population.member(host_states, 0)
  if start == 0 and jax.process_index() == 0:
    for m in members:
      outputs.write_parameter_overview(m.workdir, one.params)
  keys = population.replicate(keys, mesh)
  cadence = Cadence.of(c, spe, total)
  scan_len = cadence.scan_len(dispatch_limit(c))
  programs = population.Programs.of(task, len(members), scan_len, split)
  run = population.Run(task, members, states, keys, programs, last_rows=[{} for _ in members], step=start,
            writers=writers)
  logging.info("Training %d steps (%d per epoch, batch %d on %d devices) for %d member(s) "
               "as one program, %d steps per dispatch, data %s.", total, spe, c.batch_size,
               jax.device_count(), len(members), scan_len, device_data.describe(split))
  if start >= total:
    logging.info("Checkpoint at step %d already completes the %d-step run.", start, total)
    return run
  feed = feed_lib.Feed(task, members, source, split, scan_len, start)
  image_shape = source[0]["image"].shape
  arrays = split.arrays if split is not None else {}
  first_xs = feed.xs(start, cadence.next_stop(start, scan_len) - start)
  eval_batch = mesh_lib.shard_batch(population.abstract_eval_batch(task, image_shape), mesh)
  t0 = time.monotonic()
  reused = not programs.precompile(run.states, run.keys, arrays, first_xs, eval_batch)
  if not reused:  # compiling runs in the background from here; the first chunk waits for it
    logging.info("Compiling the train and evaluation steps (or loading them from the "
                 "compilation cache) ...")
  window = _Window(members, restored)
  stats = _Stats()
  flops = step_flops(task, one, image_shape)
  del host_states, one
  progress = outputs.Progress(total, start, c.batch_size * len(members), c.log_every_steps,
                              flops_per_step=flops and flops * len(members))
  step, xs = start, first_xs
  while step < total:
    end = cadence.next_stop(step, scan_len)
    if xs is None:
      xs = feed.xs(step, end - step)
    if cadence.profile and step + 1 == cadence.profile[0]:
      jax.profiler.start_trace(fileio.join(members[0].workdir, "profile"))
    run.states, outs = programs.train_chunk(run.states, run.keys, arrays, xs)
    xs = None
    window.add(step + 1, end - step, outs)
    if step == start:  # the first call waits for the compiled program (or its cache entry)
      compiled = time.monotonic()
      if not reused:
        logging.info("Train program compiled (or loaded) in %.1f s (not counted in the epoch "
                     "times).", compiled - t0)
      stats.last = max(stats.last, compiled)  # the first epoch's time leaves compiling out
      jax.block_until_ready(run.states)
      progress.restart_clock(end)
    step = end
    if cadence.profile and step == cadence.profile[1]:
      jax.block_until_ready(run.states)
      jax.profiler.stop_trace()
      logging.info("Profile of steps %d-%d written to %s (TensorBoard's profile tab, or "
                   "Perfetto).", *cadence.profile, fileio.join(members[0].workdir, "profile"))
    t_other = time.monotonic()
    if itstime(step, cadence.log_every, total):
      logged = window.take_log()
      for m, w in enumerate(writers):
        scalars = {f"train/{k}": v for k, v in task.summarize_train(logged[m]).items()
                   if isinstance(v, float)}
        scalars["train/learning_rate"] = task.learning_rate(step)
        w.write_scalars(step, scalars)
        if m == 0:
          shown = {k: scalars[f"train/{k}"] for k in task.progress_keys}
      progress(step, shown)
    stop = step == cadence.stop_after and step < total
    evaluating = itstime(step, cadence.eval_every, total)
    checkpointing = itstime(step, cadence.ckpt_every, total) or stop
    if evaluating or checkpointing:
      # Steps still running on the device are training time, not evaluation time: without
      # this wait, an evaluation between two log lines made the next line's rate too high.
      jax.block_until_ready(run.states)
    train_wait = time.monotonic() - t_other  # logging included: it waits for the device too
    if evaluating:
      rows = eval_rows(task, run, window.take_host(), step)
      epoch = epoch_of(step, spe)
      for m, (member, row, w) in enumerate(zip(members, rows, writers, strict=True)):
        w.write_scalars(step, {k: v for k, v in row.items() if v is not None})
        w.write_row({"step": step, "epoch": epoch, **row})
        logging.info("%s%s | %s", progress_text(step, spe, total),
                     f" [{member.name}]" if len(members) > 1 else "", _fmt(row))
      run.last_rows = rows
      if task.after_eval is not None:
        task.after_eval(task, run, step, rows)
      for w in writers:
        w.flush()
      stats.epoch(step, spe)
    if checkpointing:
      window.fetch()  # never checkpoint a state that followed a non-finite step
      # Old steps go only now that every member's last save is complete: a kill during
      # this round's saves leaves the step they all share.
      restore.prune_checkpoints(ckpts, c.keep_checkpoints)
      for m, ck in enumerate(ckpts):
        ck.save(step, run.member_state(m), window=window.saved(m))
    run.step = step
    if stop:
      logging.info("Stopping after step %d of %d (config.stop_after_step); the same command "
                   "resumes the run.", step, total)
      raise StoppedAfterStep(step)
    progress.exclude(time.monotonic() - t_other - train_wait)
  return run


class _Stats:
  """Wall time of each epoch (logged), to see stalls."""

  def __init__(self):
    self.last = time.monotonic()

  def epoch(self, step: int, spe: int) -> None:
    now = time.monotonic()
    logging.info("Epoch %s took %.1f s (training, evaluation and writing).",
                 _epoch_text(step, spe), now - self.last)
    self.last = now
