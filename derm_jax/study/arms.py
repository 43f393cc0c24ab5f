"""A study's members, as configs: the VAE stage's config and each arm's classifier config.

The arms' configs are built by `arm_config`, which changes nothing but `init.*` (and the
seed): the same data, splits, augmentation, backbone, head, optimiser, schedule and
epochs. Config-level only (no jax), so validation and preflight can use it.
"""

from __future__ import annotations

import copy

from ml_collections import ConfigDict

from derm_jax import fileio
from derm_jax.errors import ConfigError

# arm -> where its classifier's backbone starts (config.init.source).
_ARM_INIT = {"vae": "vae", "imagenet": "imagenet", "scratch": "scratch",
             "simclr": "simclr", "imagenet_simclr": "simclr", "micle": "simclr"}
ARMS = tuple(_ARM_INIT)
# Contrastive arms -> (where their SimCLR backbone starts, what a positive pair is).
CONTRASTIVE = {"simclr": ("scratch", "views"), "imagenet_simclr": ("imagenet", "views"),
               "micle": ("imagenet", "lesion")}
CLASSIFIER, PROBE = "classifier", "probe"  # evaluation protocols


def _with_shared_settings(config, stage: ConfigDict, aug: bool = True) -> ConfigDict:
  """A copy of a stage's config with the study's shared data, size, augmentation (unless the
  stage keeps its own), backbone; and with `config.smoke_steps` its step cap."""
  c = copy.deepcopy(stage)
  with c.unlocked():
    c.data = copy.deepcopy(config.data)
    c.image_size = config.image_size
    if aug:
      c.aug = copy.deepcopy(config.aug)
    c.model.backbone = config.backbone
    c.model.backbone_kwargs = copy.deepcopy(config.backbone_kwargs)
    smoke = int(config.get("smoke_steps", 0) or 0)
    if smoke > 0:
      c.total_steps = smoke
      c.log_every_steps = min(int(c.log_every_steps), smoke)
  return c


def vae_stage_config(config, seed: int | None = None) -> ConfigDict:
  """The VAE config with the study's shared settings (and `seed`, when given)."""
  c = _with_shared_settings(config, config.vae)
  if seed is not None:
    with c.unlocked():
      c.seed = int(seed)
  return c


def vae_dirs(config, workdir: str) -> dict[int, str]:
  """The VAE workdir each seed's VAE arm starts from: `config.vae_workdir` (one pretrained
  VAE reused by every seed), else one VAE per seed in WORKDIR/vae/seed_<s>
  (`config.vae_per_seed`, the default: the arm's seed-to-seed spread then includes the
  pretraining's), else one VAE for all seeds in WORKDIR/vae (seed of the first seed)."""
  if config.vae_workdir:
    return {int(s): config.vae_workdir for s in config.seeds}
  if config.get("vae_per_seed", True):
    return {int(s): fileio.join(workdir, "vae", f"seed_{int(s)}") for s in config.seeds}
  return {int(s): fileio.join(workdir, "vae") for s in config.seeds}


def vae_stage(config, workdir: str) -> list[tuple[str, str, ConfigDict]]:
  """(name, workdir, config) of each VAE the study trains itself (none when the VAE arm is
  not run or `config.vae_workdir` names one)."""
  if "vae" not in config.arms or config.vae_workdir:
    return []
  dirs = vae_dirs(config, workdir)
  if config.get("vae_per_seed", True):
    return [(f"vae seed {s}", dirs[s], vae_stage_config(config, s)) for s in dirs]
  first = int(config.seeds[0])
  return [("vae", dirs[first], vae_stage_config(config, first))]


def arm_config(config, arm: str, seed: int, vae_workdir: str, pretrain_workdir: str = "",
               protocol: str = CLASSIFIER, fraction: float = 1.0) -> ConfigDict:
  """Classifier config of one arm: identical for every arm except `init.*` and the seed
  (and, for a linear probe or a label fraction, the same for every arm)."""
  if arm not in _ARM_INIT:
    raise ConfigError(f"Unknown arm {arm!r}; choose from {sorted(_ARM_INIT)}.")
  c = _with_shared_settings(config, config.classifier)
  with c.unlocked():
    c.seed = int(seed)
    c.init.source = _ARM_INIT[arm]
    c.init.vae_workdir = vae_workdir if arm == "vae" else ""
    c.init.simclr_workdir = pretrain_workdir if arm in CONTRASTIVE else ""
    if arm != "imagenet":
      c.init.imagenet_dir = ""
    c.label_fraction = float(fraction)
    if protocol == PROBE:  # frozen backbone, a linear head on its pooled features
      c.freeze_backbone = True
      c.head.hidden = 0
      c.head.dropout = 0.0
  return c


def contrastive_config(config, arm: str, seed: int) -> ConfigDict:
  """The SimCLR pretraining config of a contrastive arm and seed: the study's data, size
  and backbone, its own augmentation; where its backbone starts and what a positive pair
  is come from the arm (CONTRASTIVE)."""
  start, positives = CONTRASTIVE[arm]
  c = _with_shared_settings(config, config.simclr, aug=False)
  with c.unlocked():
    c.seed = int(seed)
    c.init.source = start
    if start != "imagenet":
      c.init.imagenet_dir = ""
    c.positives = positives
  return c


def pretrain_dir(workdir: str, arm: str, seed: int) -> str:
  """Where a contrastive arm's pretraining for one seed lives inside a study's workdir."""
  return fileio.join(workdir, "pretrain", arm, f"seed_{seed}")


def contrastive_stage(config, workdir: str) -> list[tuple[str, str, ConfigDict]]:
  """(name, workdir, config) of each contrastive pretraining run (arm x seed): SimCLR's
  (two views) first, then MICLe's (lesion pairs), so that groups of one kind of positive
  pair follow each other and share a task and its compiled programs."""
  runs = [(arm, s) for s in config.seeds for arm in config.arms if arm in CONTRASTIVE]
  runs.sort(key=lambda r: CONTRASTIVE[r[0]][1] == "lesion")  # stable: seed order kept
  return [(f"{arm} seed {s}", pretrain_dir(workdir, arm, s), contrastive_config(config, arm, s))
          for arm, s in runs]


def run_dir(workdir: str, arm: str, seed: int, protocol: str = CLASSIFIER,
            fraction: float = 1.0) -> str:
  """Where one classifier run lives: arms/ (the identical classifier) or probes/ (the
  linear probe), under fractions/<f>/ for a fraction of the training labels."""
  base = workdir if fraction >= 1.0 else fileio.join(workdir, "fractions", format(fraction, "g"))
  return fileio.join(base, "arms" if protocol == CLASSIFIER else "probes", arm, f"seed_{seed}")


def protocols(config) -> tuple[str, ...]:
  return (CLASSIFIER, PROBE) if config.get("linear_probe", False) else (CLASSIFIER,)


def classifier_stage(config, workdir: str,
                     protocol: str = CLASSIFIER) -> list[tuple[str, str, ConfigDict]]:
  """(name, workdir, config) of each classifier run of one protocol: every fraction x seed x
  arm (fraction-major, then seed). They differ only in MEMBER_FIELDS, so one program."""
  dirs = vae_dirs(config, workdir)
  out = []
  for f in sorted({float(x) for x in config.get("label_fractions", (1.0,))}, reverse=True):
    for s in config.seeds:
      for arm in config.arms:
        name = f"{arm} seed {s}" + ("" if protocol == CLASSIFIER else " probe") + (
            "" if f >= 1.0 else f" {format(f, 'g')} of labels")
        out.append((name, run_dir(workdir, arm, s, protocol, f),
                    arm_config(config, arm, s, dirs[int(s)], pretrain_dir(workdir, arm, s),
                               protocol, f)))
  return out


def external_sets(config) -> list[tuple[str, str, str]]:
  """(name, images folder, ground-truth CSV) of each `config.external` entry, checked."""
  sets = []
  for entry in config.get("external", ()) or ():
    name, sep, rest = str(entry).partition("=")
    images, comma, csv_path = rest.partition(",")
    if not sep or not comma or not name.strip() or not images.strip() or not csv_path.strip():
      raise ConfigError(f"config.external entry {entry!r}: expected "
                       "'name=IMAGES_DIR,GROUND_TRUTH.csv'.")
    name = name.strip()
    if not name.replace("_", "").replace("-", "").isalnum() or name == "test":
      raise ConfigError(f"config.external name {name!r}: use letters, digits, '_' or '-' "
                       "(and not 'test', the in-distribution split).")
    if name in [s[0] for s in sets]:
      raise ConfigError(f"config.external: the name {name!r} is used twice.")
    sets.append((name, images.strip(), csv_path.strip()))
  return sets


def arm_dir(workdir: str, arm: str, seed: int) -> str:
  """Where one arm's identical classifier for one seed lives inside a study's workdir."""
  return run_dir(workdir, arm, seed)
