"""Evaluates a classifier checkpoint on a project split or on outside data (ISIC layout),
or predicts on images without ground truth.

  python -m derm_jax.evaluate --workdir=DIR [--step=N] --split=test
  python -m derm_jax.evaluate --workdir=DIR --isic_images=FOLDER --isic_csv=GROUND_TRUTH.csv
  python -m derm_jax.evaluate --workdir=DIR --isic_images=FOLDER      # predictions only
The run's own config.json (in DIR) rebuilds the model; the checkpoint is the latest one
unless --step is given. Writes into <out> (default DIR/eval/<split or set name>_step<N>):
  metrics.json      all metrics, the majority baseline, for ISIC data the rows skipped
  confusion.png     the confusion matrix
  predictions.csv   one row per image: image_id, label (blank if unknown), p_<class>..., pred
  submission.csv    for ISIC-layout input: the challenge's own columns and order
Outside images are brought to the resolution of the run's training data first.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import ConfigDict

_WORKDIR = flags.DEFINE_string("workdir", None, "Classifier workdir (has config.json).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Project split.")
_ISIC_IMAGES = flags.DEFINE_string("isic_images", None, "Folder of ISIC images.")
_ISIC_CSV = flags.DEFINE_string("isic_csv", None, "ISIC 2018/2019 one-hot ground-truth CSV "
                                "(without it: predictions only).")
_OUT = flags.DEFINE_string("out", None, "Output folder (default DIR/eval/<name>_step<N>).")


def load_run_config(workdir: str) -> ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {workdir!r} is not a derm_jax run directory.")
  with open(path) as f:
    cfg = ConfigDict(json.load(f))
  if cfg.get("task") != "classify":
    raise ValueError(f"{workdir!r} holds a {cfg.get('task')!r} run, not a classifier.")
  return cfg


def evaluate(workdir: str, step: int | None = None, split: str = "test",
             isic_images: str | None = None, isic_csv: str | None = None,
             out: str | None = None) -> dict:
  import jax

  from derm_jax import predictions as predictions_lib
  from derm_jax import train_classifier
  from derm_jax.data import images, isic
  from derm_jax.evaluators import classification
  from derm_jax.train import loop
  config = load_run_config(workdir)
  if isic_csv and not isic_images:
    raise ValueError("--isic_csv needs --isic_images (the folder of the images it lists).")
  exp = train_classifier.build(config, workdir, load_backbone=False)
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
  if isic_images:
    result["data"] = {"isic_images": os.path.abspath(isic_images), "image_size": native,
                      **({"isic_csv": os.path.abspath(isic_csv), **source.summary()}
                         if isic_csv else {"num_images": len(source)})}
  else:
    result["data"] = {"split": split, **exp.dataset.describe()}
  out = out or os.path.join(workdir, "eval", f"{name}_step{result['step']}")
  preds = evaluator.predictions
  if jax.process_index() != 0:
    return result
  classification.write_outputs(result, preds, exp.meta, out, title=f"{name}, step "
                               f"{result['step']}", image_ids=image_ids)
  if isic_images:
    fmt = source.ground_truth.format if isic_csv else "2018"
    predictions_lib.write_isic_submission_csv(
        os.path.join(out, "submission.csv"), [image_ids[i] for i in preds.index], preds.probs,
        exp.meta.class_names, fmt=fmt)
  if "accuracy" in result:
    logging.info("%s: %s -> %s", name, classification.summary_line(result), out)
    print(json.dumps({k: result[k] for k in ("accuracy", "balanced_accuracy", "macro_f1",
                                              "macro_auc", "loss")} | {"out": out}))
  else:
    logging.info("%s: predictions for %d images -> %s", name, result["num_examples"], out)
    print(json.dumps({"num_examples": result["num_examples"], "out": out}))
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required.")
  try:
    evaluate(_WORKDIR.value, _STEP.value, _SPLIT.value, _ISIC_IMAGES.value, _ISIC_CSV.value,
             _OUT.value)
  except (ValueError, FileNotFoundError, KeyError) as e:
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
