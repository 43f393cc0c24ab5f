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
          raise ConfigError(f"arm {arm!r} pairs images of one lesion, but this "
                            f"{config.data.name!r} data has no lesion ids (dermamnist files the "
                            "lesion table knows, ham10000, isic2019 and folders with a "
                            "'group' column have them).")
        continue
      arm_cfg = study_arms.arm_config(config, arm, seed, vae_workdir)
      if arm == "vae" and not config.vae_workdir:
        continue  # trained by the study itself
      backbone_init.check_source(arm_cfg, study_arms.arm_dir(workdir, arm, seed))
    from derm_jax.data import isic, outside
    for name, images, csv_path in study_arms.external_sets(config):
      # The CSV parses, every image it lists exists, it has classes of the run, and it is
      # not mostly the study's own training or validation images.
      source = isic.IsicSource(images, csv_path, image_size=dataset.describe()["image_size"],
                               class_names=dataset.meta.class_names)
      found = outside.check(outside.fingerprint_of(dataset), source, source.image_ids)
      outside.refuse_if_mostly(found, name)
      logging.info("Outside set %s: %s with %s (%d images; %d of them training or "
                   "validation images, to be left out)", name, images, csv_path, len(source),
                   found.summary()["overlapping"])


def _metadata_keys(dataset) -> set[str]:
  """The per-image metadata fields of the training split (none where the dataset has no
  metadata)."""
  metadata = getattr(dataset, "metadata", None)
  return set(metadata("train")) if metadata is not None else set()
