"""The task registry: config.task name -> the module that defines that kind of training.

A task module (derm_jax/tasks/<name>.py) has, as plain module-level functions:
  build(config) -> Task                       the model, steps and evaluators the one loop
                                              trains (derm_jax/train/task.py)
  train_members(members, task=None)           trains members (a plain run: one) as one
                                              population; a study's pretraining stage calls
                                              it per group, passing the first group's task
  train_and_evaluate(config, workdir) -> dict one run (python -m derm_jax.main)
  evaluate(config, workdir, step) -> dict     --mode=eval of a checkpoint
  check_config(k)                             its own fields, on validate's checker `k`
                                              (k.integer / k.number / k.choice / k.add ...)
and, for a pretraining task (a classifier's backbone can start from its runs):
  backbone_variables(tree) -> {'params', 'batch_stats'?}   the backbone out of a restored
                                              checkpoint tree (init.source='pretrained')
  preflight(config, dataset) (optional)       what its data must have, checked in seconds

Task modules import JAX; this registry does not (it imports a module when asked).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from derm_jax.errors import ConfigError

_MODULES = {
    "vae": "derm_jax.tasks.vae",
    "classify": "derm_jax.tasks.classifier",
    "simclr": "derm_jax.tasks.simclr",
    "dino": "derm_jax.tasks.dino",
}
TASKS = tuple(_MODULES)
# Tasks whose checkpoints hold a backbone a classifier can start from.
PRETRAINING = ("vae", "simclr", "dino")
# The config file that trains a run of each task (for messages).
CONFIG_FILES = {name: f"configs/{'classify' if name == 'classify' else name}.py"
                for name in TASKS}


def get(name: str) -> ModuleType:
  """The module of task `name`, imported on first use."""
  if name not in _MODULES:
    raise ConfigError(f"Unknown config.task={name!r}; expected one of "
                      f"{[*TASKS, 'compare']}.")
  return importlib.import_module(_MODULES[name])
