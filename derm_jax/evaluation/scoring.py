"""Evaluate one classifier checkpoint: on a project split, on outside data in the ISIC
layout, or (without ground truth) predict on a folder of images; writes metrics.json,
confusion.png, predictions.csv (and submission.csv for ISIC input).

The function behind `python -m derm_jax.evaluate`, also used by the study for its outside
sets (`config.external`); it defines no command-line flags, so any entry point can call it.
"""

from __future__ import annotations

import json
import os

from absl import logging
from ml_collections import ConfigDict

from derm_jax import fileio


def load_run_config(workdir: str) -> ConfigDict:
  path = fileio.join(workdir, "config.json")
  if not fileio.exists(path):
    raise FileNotFoundError(f"{path} not found: {workdir!r} is not a derm_jax run directory.")
  with fileio.open(path) as f:
    cfg = ConfigDict(json.load(f))
  if cfg.get("task") != "classify":
    raise ValueError(f"{workdir!r} holds a {cfg.get('task')!r} run, not a classifier.")
  return cfg


def evaluate_checkpoint(workdir: str, step: int | None = None, split: str = "test",
             isic_images: str | None = None, isic_csv: str | None = None,
             out: str | None = None, leak_free_ids: str | None = None) -> dict:
  import jax

  from derm_jax.data import images, isic
  from derm_jax.evaluation import classification
  from derm_jax.evaluation import predictions as predictions_lib
  from derm_jax.tasks import classifier as classifier_task
  from derm_jax.train import loop
  config = load_run_config(workdir)
  if isic_csv and not isic_images:
    raise ValueError("--isic_csv needs --isic_images (the folder of the images it lists).")
  exp = classifier_task.build(config, workdir, load_backbone=False)
  native = exp.dataset.describe()["image_size"]  # outside images: the training resolution
  image_ids = None
  if isic_csv:
    source = isic.IsicSource(isic_images, isic_csv, image_size=native)
    name, image_ids = os.path.splitext(os.path.basename(isic_csv))[0], source.image_ids
  elif isic_images:
    source = images.ImageSource(images.list_image_files(isic_images), native)
    name, image_ids = os.path.basename(os.path.normpath(isic_images)), source.image_ids
  else:
    source, name = exp.dataset.source(split), split
  state = loop.restore(exp, workdir, step)
  evaluator = exp.make_evaluator(source, has_labels=not (isic_images and not isic_csv))
  result = evaluator.run(state)
  result["step"] = int(state.step)
  if not isic_images:
    classification.add_subgroups(result, evaluator.predictions, exp.dataset, split,
                                 exp.meta.num_classes)
    if leak_free_ids:
      classification.add_subset(result, evaluator.predictions,
                                classification.read_id_list(leak_free_ids), "leak_free",
                                exp.meta.num_classes)
      logging.info("%s without the %d leaking images: %s", name,
                   result["leak_free"]["excluded"],
                   classification.summary_line(result["leak_free"]))
  elif leak_free_ids:
    raise ValueError("--leak_free_ids goes with --split (the project's own splits).")
  if isic_images:
    result["data"] = {"isic_images": os.path.abspath(isic_images), "image_size": native,
                      **({"isic_csv": os.path.abspath(isic_csv), **source.summary()}
                         if isic_csv else {"num_images": len(source)})}
  else:
    result["data"] = {"split": split, **exp.dataset.describe()}
  out = out or fileio.join(workdir, "eval", f"{name}_step{result['step']}")
  preds = evaluator.predictions
  if jax.process_index() != 0:
    return result
  classification.write_outputs(result, preds, exp.meta, out, title=f"{name}, step "
                               f"{result['step']}", image_ids=image_ids)
  if isic_images:
    fmt = source.ground_truth.format if isic_csv else "2018"
    predictions_lib.write_isic_submission_csv(
        fileio.join(out, "submission.csv"), [image_ids[i] for i in preds.index], preds.probs,
        exp.meta.class_names, fmt=fmt)
  if "accuracy" in result:
    logging.info("%s: %s -> %s", name, classification.summary_line(result), out)
    print(json.dumps({k: result[k] for k in ("accuracy", "balanced_accuracy", "macro_f1",
                                              "macro_auc", "loss")} | {"out": out}))
  else:
    logging.info("%s: predictions for %d images -> %s", name, result["num_examples"], out)
    print(json.dumps({"num_examples": result["num_examples"], "out": out}))
  return result
