"""Preflight: before anything trains, check everything a run or a study will need later.

A study that would fail after an hour (ImageNet weights missing, a VAE workdir of another
backbone, a data file that is absent) fails here in seconds, naming the fix. The data are
prepared here too (validated before anything is written to the workdir).
"""

from __future__ import annotations

from absl import logging

from derm_jax import fileio
from derm_jax.data import registry
from derm_jax.tasks import backbone_init


def check(config, workdir: str) -> None:
  """Raises (ValueError / FileNotFoundError / DataError) if `config` cannot run to the end."""
  task = config.get("task", "vae")
  dataset = registry.get(config.data)
  logging.info("Data: %s", dataset.describe())
  if task == "classify":
    backbone_init.check_source(config, workdir)
  elif task == "compare":
    from derm_jax.study import arms as study_arms
    vae_workdir = config.vae_workdir or fileio.join(workdir, "vae")
    for arm in config.arms:
      arm_cfg = study_arms.arm_config(config, arm, config.seeds[0], vae_workdir)
      if arm == "vae" and not config.vae_workdir:
        continue  # trained by the study itself
      backbone_init.check_source(arm_cfg, study_arms.arm_dir(workdir, arm, config.seeds[0]))
    from derm_jax.data import isic
    for name, images, csv_path in study_arms.external_sets(config):
      isic.IsicSource(images, csv_path)  # the CSV parses and every image it lists exists
      logging.info("Outside set %s: %s with %s", name, images, csv_path)
