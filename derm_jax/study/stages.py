"""The study in one run: pretrain the VAE, train both arms under identical conditions, report.

Layout of the workdir (read by derm_jax.report):
  vae/                      the VAE run (unless config.vae_workdir points at one)
  arms/<arm>/seed_<s>/      one classifier run per arm and seed
  report.md, figures/       the comparison
  compilation_cache/        compiled programs, shared by the stages (config.compilation_cache)
The arms' configs are built by `arm_config`, which changes nothing but `init.*`: the
same data, splits, augmentation, backbone, head, optimiser, schedule, epochs and seed.
"""

from __future__ import annotations

import contextlib
import time

from absl import logging

from derm_jax import fileio
from derm_jax.study.arms import arm_config, arm_dir, external_sets, vae_stage_config

CACHE_DIR = "compilation_cache"  # in the study's workdir (config.compilation_cache)


def run(config, workdir: str):
  import jax

  from derm_jax.train.workdir_lock import WorkdirLock
  is_main = jax.process_index() == 0
  with WorkdirLock(workdir, is_main=is_main):
    return _run_locked(config, workdir, is_main)


def _run_locked(config, workdir: str, is_main: bool):
  from derm_jax.train import compile_cache, outputs
  fileio.makedirs(workdir)
  if is_main:
    outputs.write_config(workdir, config)
  cache = (compile_cache.persistent(fileio.join(workdir, CACHE_DIR))
           if config.get("compilation_cache", False) else contextlib.nullcontext())
  with cache:
    return _run_stages(config, workdir, is_main)


def _run_stages(config, workdir: str, is_main: bool):
  from derm_jax import report
  from derm_jax.evaluation import classification, scoring
  from derm_jax.tasks import classifier as classifier_task
  from derm_jax.tasks import vae as vae_task
  clock = _StageClock()
  vae_workdir = config.vae_workdir
  if "vae" in config.arms and not vae_workdir:
    vae_workdir = fileio.join(workdir, "vae")
    logging.info("Stage 1: VAE pretraining in %s", vae_workdir)
    vae_task.train_and_evaluate(vae_stage_config(config), vae_workdir)
    clock.lap("VAE")
  results = {}
  for seed in config.seeds:
    for arm in config.arms:
      run_dir = arm_dir(workdir, arm, seed)
      logging.info("Stage 2: arm %s, seed %d in %s", arm, seed, run_dir)
      results[(arm, seed)] = classifier_task.train_and_evaluate(
          arm_config(config, arm, seed, vae_workdir), run_dir)
      for name, images, csv_path in external_sets(config):
        logging.info("Outside set %s: arm %s, seed %d", name, arm, seed)
        scoring.evaluate_checkpoint(run_dir, isic_images=images, isic_csv=csv_path,
                                       out=fileio.join(run_dir, "external", name))
      clock.lap(f"{arm} seed {seed}")
  for (arm, seed), test in results.items():
    logging.info("Test split, arm %s, seed %d: %s", arm, seed,
                 classification.summary_line(test))
  if is_main:
    path = report.write_report(workdir)
    logging.info("Report written to %s", path)
    for line in _section(path, "## Conclusion"):
      logging.info("%s", line)
  clock.lap("report")
  logging.info("Study wall time: %s", clock.summary())
  return results


class _StageClock:
  """Wall time of each stage of a study, for the closing log line."""

  def __init__(self):
    self.start = self.last = time.monotonic()
    self.laps: list[tuple[str, float]] = []

  def lap(self, name: str) -> None:
    now = time.monotonic()
    self.laps.append((name, now - self.last))
    self.last = now

  def summary(self) -> str:
    stages = ", ".join(f"{name} {secs:.0f} s" for name, secs in self.laps)
    return f"{self.last - self.start:.0f} s ({stages})"


def _section(markdown_path: str, heading: str) -> list[str]:
  """The non-empty lines of the section of a markdown file that starts with `heading`."""
  lines, inside = [], False
  with fileio.open(markdown_path) as f:
    for line in f:
      if line.startswith("## "):
        inside = line.startswith(heading)
      elif inside and line.strip():
        lines.append(line.rstrip())
  return lines
