"""Run outputs: TensorBoard event files (tensorboardX: no TensorFlow needed), a plain
`metrics.jsonl` (one JSON object per eval), PNG images, and a progress line with step
rate and ETA.

clu.metric_writers would pull in TensorFlow (see NOTES.md), so this module writes the
same three things directly.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np
from absl import logging

from derm_jax.metrics import to_jsonable
from derm_jax.train import checkpoint

# Fields that may change between a run and its resumption (they do not change the numbers).
_RESUME_SAFE = ("log_every_steps", "input.", "eval_batch_size", "data.data_dir", "profile_steps",
                "data.npz_path", "keep_checkpoints", "num_image_samples")


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def check_resume_config(workdir: str, config) -> None:
  """A run resumes only under the settings it started with: anything else would silently
  mix two experiments in one workdir."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = _flatten(json.load(f))
  new = _flatten(json.loads(config.to_json_best_effort()))
  diff = sorted(k for k in old.keys() | new.keys()
                if old.get(k) != new.get(k) and not k.startswith(_RESUME_SAFE))
  if diff:
    changes = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:8])
    raise ValueError(f"{workdir} holds a run started with other settings ({changes}). "
                     "Resuming needs the same config: repeat the original overrides or use a "
                     "new --workdir.")


def write_config(workdir: str, config) -> None:
  """Writes config.json atomically (a kill never leaves half a file)."""
  path = os.path.join(workdir, "config.json")
  with open(path + ".tmp", "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  os.replace(path + ".tmp", path)


class MetricWriter:
  """Writes scalars to TensorBoard and to metrics.jsonl, images to TensorBoard and PNG."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.workdir = workdir
    self.enabled = enabled
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")

  def truncate_after(self, step: int) -> None:
    """Drops metrics.jsonl rows written after `step` (left by a run killed before its next
    checkpoint), so a resumed run's file has each eval once."""
    if not (self.enabled and os.path.exists(self.jsonl_path)):
      return
    with open(self.jsonl_path) as f:
      rows = [line for line in f if line.strip()]
    keep = []
    for r in rows:
      try:
        if json.loads(r).get("step", 0) <= step:
          keep.append(r)
      except json.JSONDecodeError:  # a line cut short by a kill mid-write
        logging.warning("Dropping a truncated line of %s", self.jsonl_path)
    if len(keep) != len(rows):
      with open(self.jsonl_path, "w") as f:
        f.writelines(keep)

  def write_scalars(self, step: int, scalars: dict, jsonl: bool = False, **extra) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    for k, v in clean.items():
      self._tb.add_scalar(k, v, step)
    if jsonl:
      with open(self.jsonl_path, "a") as f:
        f.write(json.dumps({"step": int(step), **extra, **clean}) + "\n")

  def write_row(self, row: dict) -> None:
    """Appends one row (JSON-safe: NaN and numpy types converted) to metrics.jsonl."""
    if self.enabled:
      with open(self.jsonl_path, "a") as f:
        f.write(json.dumps(to_jsonable(row)) + "\n")

  def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
    """image: (H, W, 3) float in [0, 1]."""
    if self.enabled:
      self._tb.add_image(tag, np.clip(image, 0, 1), step, dataformats="HWC")

  def write_hparams(self, config, metrics: dict) -> None:
    """The run's config (flattened) as TensorBoard hyperparameters, beside `metrics`."""
    if not self.enabled:
      return
    flat = _flatten(json.loads(config.to_json_best_effort()))
    hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
               for k, v in flat.items()}
    self._tb.add_hparams(hparams, {k: float(v) for k, v in metrics.items() if v is not None},
                         name="hparams")

  def flush(self):
    if self._tb is not None:
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


def workdir_has_run(workdir: str) -> bool:
  """Whether `workdir/checkpoints` holds at least one checkpoint step directory."""
  try:
    names = os.listdir(os.path.join(workdir, "checkpoints"))
  except OSError:
    return False
  return any(n.isdigit() and os.path.isdir(os.path.join(workdir, "checkpoints", n))
             for n in names)


def open_run(workdir: str, config, keep_checkpoints: int):
  """Creates the workdir (config.json, checkpoint manager, writers) of a training run.

  Returns (checkpointer, writer, is_main); only process 0 writes logs and config.json."""
  is_main = jax.process_index() == 0
  if workdir_has_run(workdir):  # a workdir without a checkpoint never blocks a rerun
    check_resume_config(workdir, config)
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    write_config(workdir, config)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 max_to_keep=keep_checkpoints)
  return ckpt, MetricWriter(workdir, enabled=is_main), is_main


def write_parameter_overview(workdir: str, params) -> None:
  """The table of parameter shapes and counts, written to DIR/parameters.txt (not the log)."""
  from clu import parameter_overview
  table = parameter_overview.get_parameter_overview(params)
  with open(os.path.join(workdir, "parameters.txt"), "w") as f:
    f.write(table + "\n")
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  logging.info("%s parameters (table in %s)", f"{n:,}", os.path.join(workdir, "parameters.txt"))


def _fmt_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
  """Logs `step i/N (p%) | x steps/s, y img/s[, z TFLOP/s] | ETA` every `every` steps.

  Rates are over the steps since the previous line, not counting the time the loop spent
  evaluating or checkpointing (`exclude`); the ETA uses the average since the start."""

  def __init__(self, total_steps: int, start_step: int, batch_size: int, every: int,
               flops_per_step: float | None = None):
    self.total, self.batch, self.every = total_steps, batch_size, max(1, every)
    self.flops = flops_per_step
    self._t0, self._s0 = time.monotonic(), start_step
    self._last_t, self._last_s = self._t0, start_step
    self._excluded = self._excluded_window = 0.0

  def restart_clock(self, step: int) -> None:
    """Start timing after the first (compiling) step so rates reflect steady state."""
    self._t0, self._s0 = time.monotonic(), step
    self._last_t, self._last_s = self._t0, step
    self._excluded = self._excluded_window = 0.0

  def exclude(self, seconds: float) -> None:
    """Time spent on evaluation or checkpoints, left out of the training rates."""
    self._excluded += seconds
    self._excluded_window += seconds

  def __call__(self, step: int, scalars: dict | None = None) -> None:
    if step % self.every and step != self.total:
      return
    now = time.monotonic()
    dt_all = now - self._t0 - self._excluded
    dt = now - self._last_t - self._excluded_window
    done = step - self._last_s
    rate = done / dt if dt > 0 and done > 0 else float("nan")
    avg = (step - self._s0) / dt_all if dt_all > 0 and step > self._s0 else float("nan")
    eta = (self.total - step) / avg if math.isfinite(avg) and avg > 0 else float("nan")
    self._last_t, self._last_s, self._excluded_window = now, step, 0.0
    msg = (f"step {step}/{self.total} ({100 * step / self.total:.1f}%) | "
           f"{rate:.2f} steps/s, {rate * self.batch:.1f} img/s")
    if self.flops and math.isfinite(rate):
      msg += f", {rate * self.flops / 1e12:.3g} TFLOP/s"
    msg += f" | ETA {_fmt_duration(eta) if math.isfinite(eta) else '?'}"
    if scalars:
      msg += " | " + ", ".join(f"{k}={float(v):.4g}" for k, v in scalars.items())
    logging.info(msg)
