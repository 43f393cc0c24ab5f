"""Preflight: before anything trains, check everything a run or a study will need later.

A study that would fail after an hour (ImageNet weights missing, a VAE workdir of another
backbone, a data file that is absent) fails here in seconds, naming the fix. The data are
prepared here too (validated before anything is written to the workdir).
"""

from __future__ import annotations

from absl import logging

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
    _check_study(config, workdir, dataset)


def _check_study(config, workdir: str, dataset) -> None:
  """Every run of the study's plan: where each pretraining starts and what its method needs
  of the data; where each classifier starts when the study does not pretrain it itself;
  every outside set."""
  from derm_jax.data import isic, outside
  from derm_jax.study import plan as plan_lib
  from derm_jax.tasks import registry
  plan = plan_lib.build(config, workdir)
  pretrained = set()
  for task_name, runs in plan.pretraining.items():
    module = registry.get(task_name)
    for r in runs:
      pretrained.add(r.workdir)
      if "init" in r.config:
        backbone_init.check_source(r.config, r.workdir)
      if hasattr(module, "preflight"):
        module.preflight(r.config, dataset, what=f"arm {r.arm!r}")
  for r in plan.classifiers[plan_lib.CLASSIFIER]:
    if backbone_init.pretrained_workdir(r.config) not in pretrained:  # not trained here
      backbone_init.check_source(r.config, r.workdir)
  for name, images, csv_path in plan.external:
    # The CSV parses, every image it lists exists, it has classes of the run, and it is
    # not mostly the study's own training or validation images.
    source = isic.IsicSource(images, csv_path, image_size=dataset.describe()["image_size"],
                             class_names=dataset.meta.class_names)
    found = outside.check(outside.fingerprint_of(dataset), source, source.image_ids)
    outside.refuse_if_mostly(found, name)
    logging.info("Outside set %s: %s with %s (%d images; %d of them training or "
                 "validation images, to be left out)", name, images, csv_path, len(source),
                 found.summary()["overlapping"])
