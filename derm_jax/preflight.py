"""Preflight: before anything trains, check everything a run or a study will need later.

A study that would fail after an hour (ImageNet weights missing, a VAE workdir of another
backbone, a data file that is absent) fails here in seconds, naming the fix. The data are
prepared here too (validated before anything is written to the workdir).
"""

from __future__ import annotations

from absl import logging

from derm_jax import fileio
from derm_jax.data import registry
from derm_jax.errors import ConfigError
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
    seed = config.seeds[0]
    for arm in config.arms:
      if arm in study_arms.CONTRASTIVE:  # pretrained by the study: check where it starts
        c = study_arms.contrastive_config(config, arm, seed)
        backbone_init.check_source(c, study_arms.pretrain_dir(workdir, arm, seed))
        if c.positives == "lesion" and "lesion_id" not in _metadata_keys(dataset):
          raise ConfigError(f"arm {arm!r} pairs images of one lesion, but {config.data.name!r} "
                            "has no lesion groups (use a dataset with lesion_id, e.g. "
                            "ham10000, or a folder dataset with a 'group' column).")
        continue
      arm_cfg = study_arms.arm_config(config, arm, seed, vae_workdir)
      if arm == "vae" and not config.vae_workdir:
        continue  # trained by the study itself
      backbone_init.check_source(arm_cfg, study_arms.arm_dir(workdir, arm, seed))
    from derm_jax.data import isic
    for name, images, csv_path in study_arms.external_sets(config):
      # The CSV parses, every image it lists exists, and it has classes of the run.
      isic.IsicSource(images, csv_path, class_names=dataset.meta.class_names)
      logging.info("Outside set %s: %s with %s", name, images, csv_path)


def _metadata_keys(dataset) -> set[str]:
  """The per-image metadata fields of the training split (none for DermaMNIST)."""
  metadata = getattr(dataset, "metadata", None)
  return set(metadata("train")) if metadata is not None else set()
