"""Run outputs: TensorBoard event files (tensorboardX: no TensorFlow needed), a plain
`metrics.jsonl` (one JSON object per eval), PNG images, and a progress line with step
rate and ETA.

clu.metric_writers would pull in TensorFlow (see NOTES.md), so this module writes the
same three things directly. Every file goes through `derm_jax.fileio`, so the workdir may
be a local folder or a `gs://` URL.

TensorBoard on a cloud workdir: tensorboardX writes its event files itself, local files
with `open`, and `gs://` / `s3://` URLs with its own writers (google-cloud-storage /
boto3); it has no writer for other schemes. Those writers keep the whole event file in
memory and upload all of it again at every flush (every 120 s and at the end), so event
files of long runs with many images cost upload time. A `gs://` or `s3://` workdir without
that client library installed is refused when the run opens (`TensorBoardUnavailable`,
naming the package) rather than training without the events; a workdir of another scheme
gets no events, with a warning (metrics.jsonl holds every logged number either way).
"""

from __future__ import annotations

import json
import math
import time

import jax
import numpy as np
from absl import logging

from derm_jax import config_lib, fileio
from derm_jax.errors import ConfigError
from derm_jax.metrics import to_jsonable
from derm_jax.train import checkpoint

# Fields that may change between a run and its resumption (they do not change the numbers).
_RESUME_SAFE = ("log_every_steps", "input.", "eval_batch_size", "data.data_dir", "profile_steps",
                "stop_after_step", "steps_per_dispatch",
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
  path = fileio.join(workdir, "config.json")
  if not fileio.exists(path):
    return
  with fileio.open(path) as f:
    old = config_lib.upgrade_flat(_flatten(json.load(f)))  # an older run's renamed fields
  new = config_lib.upgrade_flat(_flatten(json.loads(config.to_json_best_effort())))
  diff = sorted(k for k in old.keys() | new.keys()
                if old.get(k) != new.get(k) and not k.startswith(_RESUME_SAFE))
  if diff:
    changes = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:8])
    raise ConfigError(f"{workdir} holds a run started with other settings ({changes}). "
                     "Resuming needs the same config: repeat the original overrides or use a "
                     "new --workdir.")


def write_config(workdir: str, config) -> None:
  """Writes config.json atomically (a kill never leaves half a file)."""
  fileio.atomic_write_text(fileio.join(workdir, "config.json"),
                           config.to_json_best_effort(indent=2))


class TensorBoardUnavailable(ConfigError):
  """tensorboardX cannot write event files into this (cloud) workdir; says what to install."""


# The package tensorboardX's own writer for each URL scheme needs (see the module docstring).
_TB_CLIENTS = {"gs": ("google.cloud.storage", "google-cloud-storage"), "s3": ("boto3", "boto3")}


def tensorboard_supported(logdir: str, warn: bool = False) -> bool:
  """Whether tensorboardX can write event files into `logdir` (local, gs://, s3://).

  Raises TensorBoardUnavailable for a gs:// / s3:// URL whose client library is missing;
  False (with a warning if `warn`) for other URL schemes."""
  kind = fileio.scheme(logdir)
  if not kind:
    return True
  if kind not in _TB_CLIENTS:
    if warn:
      logging.warning("No TensorBoard events for %s: tensorboardX writes only to local "
                      "folders, gs:// and s3://. metrics.jsonl has every logged number.",
                      logdir)
    return False
  module, package = _TB_CLIENTS[kind]
  try:
    __import__(module)
  except ImportError as e:
    raise TensorBoardUnavailable(
        f"TensorBoard events for the workdir {logdir} need {package} (tensorboardX writes "
        f"{kind}:// event files itself): pip install {package}, or use a local "
        "workdir.") from e
  return True


def _summary_writer(logdir: str):
  """tensorboardX's SummaryWriter for `logdir`, or None where it cannot write there."""
  if not tensorboard_supported(logdir, warn=True):
    return None
  from tensorboardX import SummaryWriter
  return SummaryWriter(logdir=logdir)


class MetricWriter:
  """Writes scalars to TensorBoard and to metrics.jsonl, images to TensorBoard and PNG."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.workdir = workdir
    self.enabled = enabled
    self._tb = _summary_writer(fileio.join(workdir, "tensorboard")) if enabled else None
    self.jsonl_path = fileio.join(workdir, "metrics.jsonl")

  def truncate_after(self, step: int) -> None:
    """Drops metrics.jsonl rows written after `step` (left by a run killed before its next
    checkpoint), so a resumed run's file has each eval once."""
    if not (self.enabled and fileio.exists(self.jsonl_path)):
      return
    with fileio.open(self.jsonl_path) as f:
      rows = [line for line in f if line.strip()]
    keep = []
    for r in rows:
      try:
        if json.loads(r).get("step", 0) <= step:
          keep.append(r)
      except json.JSONDecodeError:  # a line cut short by a kill mid-write
        logging.warning("Dropping a truncated line of %s", self.jsonl_path)
    if len(keep) != len(rows):
      with fileio.open(self.jsonl_path, "w") as f:
        f.writelines(keep)

  def write_scalars(self, step: int, scalars: dict, jsonl: bool = False, **extra) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    if self._tb is not None:
      for k, v in clean.items():
        self._tb.add_scalar(k, v, step)
    if jsonl:
      fileio.append_text(self.jsonl_path, json.dumps({"step": int(step), **extra, **clean}) + "\n")

  def write_row(self, row: dict) -> None:
    """Appends one row (JSON-safe: NaN and numpy types converted) to metrics.jsonl."""
    if self.enabled:
      fileio.append_text(self.jsonl_path, json.dumps(to_jsonable(row)) + "\n")

  def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
    """image: (H, W, 3) float in [0, 1]."""
    if self._tb is not None:
      self._tb.add_image(tag, np.clip(image, 0, 1), step, dataformats="HWC")

  def write_hparams(self, config, metrics: dict) -> None:
    """The run's config (flattened) as TensorBoard hyperparameters, beside `metrics`."""
    if self._tb is None:
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
    names = fileio.listdir(fileio.join(workdir, "checkpoints"))
  except OSError:
    return False
  return any(n.isdigit() and fileio.isdir(fileio.join(workdir, "checkpoints", n))
             for n in names)


def open_run(workdir: str, config, keep_checkpoints: int):
  """Creates the workdir (config.json, checkpoint manager, writers) of a training run.

  Returns (checkpointer, writer, is_main); only process 0 writes logs and config.json."""
  is_main = jax.process_index() == 0
  if workdir_has_run(workdir):  # a workdir without a checkpoint never blocks a rerun
    check_resume_config(workdir, config)
  if is_main:  # a cloud workdir TensorBoard cannot write to fails before anything is written
    tensorboard_supported(fileio.join(workdir, "tensorboard"))
  fileio.makedirs(workdir)
  if is_main:
    write_config(workdir, config)
  # Old steps are deleted by the training loop (`restore.prune_checkpoints`), only once every
  # member of its population holds a newer one; `keep_checkpoints` is how many it keeps.
  del keep_checkpoints
  ckpt = checkpoint.Checkpointer(fileio.join(workdir, "checkpoints"), max_to_keep=None)
  return ckpt, MetricWriter(workdir, enabled=is_main), is_main


def write_parameter_overview(workdir: str, params) -> None:
  """The table of parameter shapes and counts, written to DIR/parameters.txt (not the log)."""
  from clu import parameter_overview
  table = parameter_overview.get_parameter_overview(params)
  path = fileio.join(workdir, "parameters.txt")
  with fileio.open(path, "w") as f:
    f.write(table + "\n")
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  logging.info("%s parameters (table in %s)", f"{n:,}", path)


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
    msg = f"step {step}/{self.total} ({100 * step / self.total:.1f}%)"
    if math.isfinite(rate):  # none yet right after the clock restarts (the first chunk)
      msg += f" | {rate:.2f} steps/s, {rate * self.batch:.1f} img/s"
      if self.flops:
        msg += f", {rate * self.flops / 1e12:.3g} TFLOP/s"
    msg += f" | ETA {_fmt_duration(eta) if math.isfinite(eta) else '?'}"
    if scalars:
      msg += " | " + ", ".join(f"{k}={float(v):.4g}" for k, v in scalars.items())
    logging.info(msg)
