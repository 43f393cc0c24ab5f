"""The study's plan: every run a study makes, built once from its config by `build`.

  plan = build(config, workdir)
  plan.pretraining   {task: [Run, ...]}  each arm's pretraining (VAE, SimCLR/MICLe, DINO...),
                                         one stage per task, in arm-table order
  plan.classifiers   {protocol: [Run, ...]}  every (fraction, seed, arm) classifier
  plan.external      [(name, images, csv)]   the outside sets
The stages (derm_jax/study/stages.py) train it, the preflight (derm_jax/preflight.py) checks
it, and validation (derm_jax/validate.py) checks the configs it is made of.

The arms come from the arm table (derm_jax/arms.py). A classifier's config is the study's
`classifier` section with the shared settings (data, image size, augmentation, backbone)
and differs between arms only in `init.*` and the seed: the same data, splits,
augmentation, backbone, head, optimiser, schedule and epochs (the population refuses
members that differ in anything else). A pretraining config is the study's section named
after its task (`config.vae`, `config.simclr`, `config.dino`) with the shared settings (its
own augmentation where it has one), the arm's starting weights and method options.
Config-level only (no JAX).
"""

from __future__ import annotations

import copy
import dataclasses

from ml_collections import ConfigDict

from derm_jax import arms as arm_table
from derm_jax import layout
from derm_jax.errors import ConfigError

CLASSIFIER, PROBE = layout.CLASSIFIER, layout.PROBE


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of the study: its name in logs, its workdir, its full config, and what it is."""

  name: str
  workdir: str
  config: ConfigDict
  arm: str
  seed: int
  task: str                 # the task that trains it (derm_jax/tasks/registry.py)


@dataclasses.dataclass
class Plan:
  pretraining: dict[str, list[Run]]
  classifiers: dict[str, list[Run]]
  external: list[tuple[str, str, str]]


# ----------------------------------------------------------------------------- configs


def _with_shared_settings(config, stage: ConfigDict) -> ConfigDict:
  """A copy of a stage's config with the study's shared data, size, augmentation (unless
  the stage has its own `aug`), backbone; and with `config.smoke_steps` its step cap."""
  c = copy.deepcopy(stage)
  with c.unlocked():
    c.data = copy.deepcopy(config.data)
    c.image_size = config.image_size
    if "aug" not in stage:
      c.aug = copy.deepcopy(config.aug)
    c.model.backbone = config.backbone
    c.model.backbone_kwargs = copy.deepcopy(config.backbone_kwargs)
    smoke = int(config.get("smoke_steps", 0) or 0)
    if smoke > 0:
      c.total_steps = smoke
      c.log_every_steps = min(int(c.log_every_steps), smoke)
  return c


def pretraining_config(config, arm: str, seed: int) -> ConfigDict:
  """The config of an arm's pretraining for one seed: the study's section of its task, the
  shared settings, the arm's starting weights and method options."""
  a = arm_table.get(arm)
  if a.pretraining is None:
    raise ConfigError(f"Arm {arm!r} has no pretraining.")
  if a.pretraining not in config:
    raise ConfigError(f"Arm {arm!r} is pretrained by the {a.pretraining!r} task, and the "
                      f"study config has no config.{a.pretraining} section for it.")
  c = _with_shared_settings(config, config[a.pretraining])
  with c.unlocked():
    c.seed = int(seed)
    if "init" in c:
      c.init.source = a.start
      if a.start != arm_table.IMAGENET:
        c.init.imagenet_dir = ""
    for field, value in a.options:
      c[field] = value
  return c


def classifier_config(config, arm: str, seed: int, pretrained_workdir: str = "",
                      protocol: str = CLASSIFIER, fraction: float = 1.0) -> ConfigDict:
  """Classifier config of one arm: identical for every arm except `init.*` and the seed
  (and, for a linear probe or a label fraction, the same for every arm)."""
  a = arm_table.get(arm)
  c = _with_shared_settings(config, config.classifier)
  with c.unlocked():
    c.seed = int(seed)
    c.init.source = "pretrained" if a.pretraining else a.start
    c.init.pretrained_workdir = pretrained_workdir if a.pretraining else ""
    if c.init.source != arm_table.IMAGENET:
      c.init.imagenet_dir = ""
    c.label_fraction = float(fraction)
    if protocol == PROBE:  # frozen backbone, a linear head on its pooled features
      c.freeze_backbone = True
      c.head.hidden = 0
      c.head.dropout = 0.0
  return c


# ----------------------------------------------------------------------------- workdirs


def pretraining_dir(config, workdir: str, arm: str, seed: int) -> str:
  """The pretraining run an arm's classifier of one seed starts from. The VAE arm: its own
  VAE per seed (vae/seed_<s>, `config.vae_per_seed`, the default: the arm's seed-to-seed
  spread then includes the pretraining's), one VAE for all seeds (vae/), or
  `config.vae_workdir` (one pretrained VAE reused by every seed, not trained by the study).
  Every other pretraining: pretrain/<arm>/seed_<s>."""
  if arm == "vae":
    if config.get("vae_workdir", ""):
      return config.vae_workdir
    return layout.vae_dir(workdir, seed if config.get("vae_per_seed", True) else None)
  return layout.pretrain_dir(workdir, arm, seed)


def protocols(config) -> tuple[str, ...]:
  return (CLASSIFIER, PROBE) if config.get("linear_probe", False) else (CLASSIFIER,)


def fractions(config) -> list[float]:
  """The label fractions, descending (1.0 first)."""
  return sorted({float(x) for x in config.get("label_fractions", (1.0,))}, reverse=True)


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


# ----------------------------------------------------------------------------- the plan


def pretraining_runs(config, workdir: str) -> dict[str, list[Run]]:
  """Each pretraining task's runs (arm x seed), tasks in arm-table order; a run shared by
  several seeds (one VAE for all) once, a reused one (`config.vae_workdir`) not at all.
  Within a task, runs with the same method options follow each other (SimCLR's, then
  MICLe's), so that a group of them shares one task and its compiled programs."""
  out: dict[str, list[Run]] = {}
  for task in arm_table.pretraining_tasks():
    runs, seen = [], set()
    for s in config.seeds:
      for arm in config.arms:
        a = arm_table.get(arm)
        if a.pretraining != task or (arm == "vae" and config.get("vae_workdir", "")):
          continue
        d = pretraining_dir(config, workdir, arm, int(s))
        if d in seen:
          continue
        seen.add(d)
        name = f"{arm} seed {s}" if d != layout.vae_dir(workdir, None) else arm
        runs.append(Run(name, d, pretraining_config(config, arm, int(s)), arm, int(s), task))
    kinds = list(dict.fromkeys(a.options for a in arm_table.ARMS.values()))
    runs.sort(key=lambda r: kinds.index(arm_table.get(r.arm).options))  # stable
    if runs:
      out[task] = runs
  return out


def classifier_runs(config, workdir: str, protocol: str = CLASSIFIER) -> list[Run]:
  """Every classifier run of one protocol: every fraction x seed x arm (fraction-major, then
  seed). They differ only in member fields, so one program."""
  out = []
  for f in fractions(config):
    for s in config.seeds:
      for arm in config.arms:
        name = f"{arm} seed {s}" + ("" if protocol == CLASSIFIER else " probe") + (
            "" if f >= 1.0 else f" {layout.fraction_name(f)} of labels")
        pretrained = (pretraining_dir(config, workdir, arm, int(s))
                      if arm_table.get(arm).pretraining else "")
        out.append(Run(name, layout.run_dir(workdir, arm, s, protocol, f),
                       classifier_config(config, arm, int(s), pretrained, protocol, f),
                       arm, int(s), "classify"))
  return out


def build(config, workdir: str) -> Plan:
  return Plan(pretraining=pretraining_runs(config, workdir),
              classifiers={p: classifier_runs(config, workdir, p) for p in protocols(config)},
              external=external_sets(config))
