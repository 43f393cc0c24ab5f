"""The study in one run: pretrain (each arm's VAE, SimCLR, MICLe, DINO...), train every arm x
seed classifier under identical conditions, score the outside sets, report.

The runs are the study's plan (derm_jax/study/plan.py); where each lives is
derm_jax/layout.py. Each stage is ONE program (derm_jax/train/population.py): the
pretraining runs of one task (every arm and seed of it) train side by side; then every
(fraction, seed, arm) classifier of a protocol, vmapped over the members
(`config.population_size` caps a program's members; 1 trains them one after another, the
default on a CPU). A stage builds its task once: its later groups reuse the training split,
compiled programs and outside sets of the first (`Task.memo`), so a group after the first
costs its own steps and evaluations only. Then, with `config.closed_form_fractions`, the
closed-form probes of every arm's frozen starting features (derm_jax/study/probes.py, seconds per
arm) and the report.
"""

from __future__ import annotations

import contextlib
import time

import jax
from absl import logging

from derm_jax import fileio, layout
from derm_jax.study import plan as plan_lib


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
  cache = (compile_cache.persistent(fileio.join(workdir, layout.CACHE_DIR))
           if config.get("compilation_cache", False) else contextlib.nullcontext())
  with cache:
    return _run_stages(config, workdir, is_main)


def groups(members: list, size: int) -> list[list]:
  """Members in groups of at most `size` (0: one group), each trained as one program."""
  if size <= 0 or size >= len(members):
    return [members] if members else []
  return [members[i:i + size] for i in range(0, len(members), size)]


def population_size(config) -> int:
  """Members per program: `config.population_size`, where 0 (automatic) means all of a
  stage's members on an accelerator and one at a time on a CPU. On a CPU a vmapped
  population gains nothing (the step is compute-bound, not dispatch-bound) and loses much
  where the members' convolutions become one grouped convolution, which XLA:CPU runs
  slowly: the smoke `:recipe` VAE step took 8 s for 3 vmapped members and 1 s for one."""
  size = int(config.get("population_size", 0) or 0)
  if size == 0 and jax.default_backend() == "cpu":
    return 1
  return size


def _run_stages(config, workdir: str, is_main: bool):
  from derm_jax import report
  from derm_jax.evaluation import classification, scoring
  from derm_jax.tasks import classifier as classifier_task
  from derm_jax.tasks import registry
  from derm_jax.train.population import Member
  clock = _StageClock()
  size = population_size(config)
  plan = plan_lib.build(config, workdir)
  for task_name, runs in plan.pretraining.items():
    logging.info("Pretraining stage (%s), %d run(s): %s", task_name, len(runs),
                 ", ".join(r.workdir for r in runs))
    train_members = registry.get(task_name).train_members
    task = None  # built by the first group, reused by the others
    for group in groups([Member(r.name, r.workdir, r.config) for r in runs], size):
      task = train_members(group, task).task
    clock.lap(f"{task_name} x{len(runs)}")
  results = {}
  for protocol, runs in plan.classifiers.items():
    members = [Member(r.name, r.workdir, r.config) for r in runs]
    n = len(groups(members, size))
    logging.info("Classifier stage (%s): %d run(s) (%s) as %s", protocol, len(members),
                 ", ".join(m.name for m in members),
                 "one program" if n == 1 else f"{n} programs of at most {size}")
    task = None  # built by the first group, reused by the others
    for group in groups(members, size):
      run, tests = classifier_task.train_members(group, task)
      task = run.task
      results.update({m.name: t for m, t in zip(group, tests, strict=True)})
      for name, images, csv_path in plan.external:
        # The run's own training and validation images are left out (data/outside.py).
        source, _, image_ids, check = task.once(
            ("outside", name),
            lambda: scoring.checked_outside(task, group[0].workdir, images, csv_path))
        scoring.score(run, source, [layout.external_dir(m.workdir, name) for m in group],
                      name=name, image_ids=image_ids, isic_images=images, isic_csv=csv_path,
                      quiet=True, outside_check=check)
    clock.lap(f"{protocol} x{len(members)}")
  for name, test in results.items():
    logging.info("Test split, %s: %s", name, classification.summary_line(test))
  fractions = tuple(config.get("closed_form_fractions", ()) or ())
  if fractions and jax.process_count() > 1:
    logging.info("Closed-form probes are left to one process after the job: python -m "
                 "derm_jax.probes --workdir=%s", workdir)
  elif fractions:  # seconds per arm: cached frozen features, ridge and k-NN
    from derm_jax.study import probes
    probes.probe_study(workdir, fractions=fractions, log=logging.info)
    clock.lap("closed-form probes")
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
