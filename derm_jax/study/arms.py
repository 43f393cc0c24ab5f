"""A study's members, as configs: the VAE stage's config and each arm's classifier config.

The arms' configs are built by `arm_config`, which changes nothing but `init.*` (and the
seed): the same data, splits, augmentation, backbone, head, optimiser, schedule and
epochs. Config-level only (no jax), so validation and preflight can use it.
"""

from __future__ import annotations

import copy

from ml_collections import ConfigDict

from derm_jax import fileio

_ARM_INIT = {"vae": "vae", "imagenet": "imagenet", "scratch": "scratch"}
ARMS = tuple(_ARM_INIT)


def _with_shared_settings(config, stage: ConfigDict) -> ConfigDict:
  """A copy of a stage's config with the study's shared data, size, augmentation, backbone."""
  c = copy.deepcopy(stage)
  with c.unlocked():
    c.data = copy.deepcopy(config.data)
    c.image_size = config.image_size
    c.aug = copy.deepcopy(config.aug)
    c.model.backbone = config.backbone
    c.model.backbone_kwargs = copy.deepcopy(config.backbone_kwargs)
  return c


def vae_stage_config(config) -> ConfigDict:
  """The VAE config with the study's shared settings."""
  return _with_shared_settings(config, config.vae)


def arm_config(config, arm: str, seed: int, vae_workdir: str) -> ConfigDict:
  """Classifier config of one arm: identical for every arm except `init.*`."""
  if arm not in _ARM_INIT:
    raise ValueError(f"Unknown arm {arm!r}; choose from {sorted(_ARM_INIT)}.")
  c = _with_shared_settings(config, config.classifier)
  with c.unlocked():
    c.seed = int(seed)
    c.init.source = _ARM_INIT[arm]
    c.init.vae_workdir = vae_workdir if arm == "vae" else ""
    if arm != "imagenet":
      c.init.imagenet_dir = ""
  return c


def external_sets(config) -> list[tuple[str, str, str]]:
  """(name, images folder, ground-truth CSV) of each `config.external` entry, checked."""
  sets = []
  for entry in config.get("external", ()) or ():
    name, sep, rest = str(entry).partition("=")
    images, comma, csv_path = rest.partition(",")
    if not sep or not comma or not name.strip() or not images.strip() or not csv_path.strip():
      raise ValueError(f"config.external entry {entry!r}: expected "
                       "'name=IMAGES_DIR,GROUND_TRUTH.csv'.")
    name = name.strip()
    if not name.replace("_", "").replace("-", "").isalnum() or name == "test":
      raise ValueError(f"config.external name {name!r}: use letters, digits, '_' or '-' "
                       "(and not 'test', the in-distribution split).")
    if name in [s[0] for s in sets]:
      raise ValueError(f"config.external: the name {name!r} is used twice.")
    sets.append((name, images.strip(), csv_path.strip()))
  return sets


def arm_dir(workdir: str, arm: str, seed: int) -> str:
  """Where one arm's run for one seed lives inside a study's workdir."""
  return fileio.join(workdir, "arms", arm, f"seed_{seed}")
