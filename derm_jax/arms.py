"""The study's arms, in one table: how each arm's identical classifier gets its backbone.

An arm is a pretraining task (run by the study, before the classifiers) or none, the
weights where the backbone (or its pretraining) starts, the method options set on the
pretraining's config, a description and whether it is self-supervised. Everything that
knows arms reads this table: the study's plan and stages (derm_jax/study/), validation,
preflight and the report (its order, descriptions and which arms are self-supervised).
Free of JAX imports.

  ARMS["micle"].pretraining == "simclr"; ARMS["micle"].options == (("positives", "lesion"),)

Adding a self-supervised method: its task module (derm_jax/tasks/<name>.py, the interface
is in derm_jax/tasks/registry.py), one line in that registry, its config section in
configs/compare.py, and its rows here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from derm_jax.errors import ConfigError

SCRATCH, IMAGENET = "scratch", "imagenet"  # where weights start


@dataclasses.dataclass(frozen=True)
class Arm:
  name: str
  # The task that pretrains the backbone inside the study (a name of
  # derm_jax/tasks/registry.py; its config is the study config's section of that name), or
  # None: the classifier starts straight from `start`.
  pretraining: str | None
  start: str  # 'scratch' | 'imagenet': the classifier's start, or the pretraining's
  options: tuple[tuple[str, Any], ...] = ()  # (field, value) set on the pretraining config
  description: str = ""

  @property
  def self_supervised(self) -> bool:
    return self.pretraining is not None


_TABLE = (
    Arm("vae", "vae", SCRATCH,
        description="self-supervised: VAE pretrained on the training images (the paper's arm)"),
    Arm("imagenet", None, IMAGENET,
        description="ImageNet transfer (the paper's comparison arm)"),
    Arm("scratch", None, SCRATCH, description="random initialisation, no pretraining"),
    Arm("simclr", "simclr", SCRATCH, (("positives", "views"),),
        "self-supervised, contrastive: SimCLR from random initialisation"),
    Arm("imagenet_simclr", "simclr", IMAGENET, (("positives", "views"),),
        "self-supervised, contrastive: SimCLR continued from ImageNet weights"),
    Arm("micle", "simclr", IMAGENET, (("positives", "lesion"),),
        "self-supervised, contrastive: MICLe (multi-instance SimCLR)"),
    Arm("dino", "dino", SCRATCH,
        description="self-supervised, self-distillation: DINO from random initialisation"),
    Arm("imagenet_dino", "dino", IMAGENET,
        description="self-supervised, self-distillation: DINO continued from ImageNet weights"),
)
ARMS: dict[str, Arm] = {a.name: a for a in _TABLE}
NAMES = tuple(ARMS)  # also the report's order of arms


def get(name: str) -> Arm:
  if name not in ARMS:
    raise ConfigError(f"Unknown arm {name!r}; choose from {list(NAMES)}.")
  return ARMS[name]


def pretraining_tasks() -> tuple[str, ...]:
  """The tasks that pretrain some arm, in table order (the study's pretraining stages)."""
  return tuple(dict.fromkeys(a.pretraining for a in _TABLE if a.pretraining))


def order_key(name: str) -> tuple[int, str]:
  """Report order: the table's arms first, in table order, then any other name by name."""
  return (NAMES.index(name) if name in ARMS else len(NAMES), name)


def description(name: str) -> str:
  return ARMS[name].description if name in ARMS else "an arm this report does not know"


def is_self_supervised(name: str) -> bool:
  return name in ARMS and ARMS[name].self_supervised
