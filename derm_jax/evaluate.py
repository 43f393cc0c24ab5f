"""Evaluates a classifier checkpoint on a project split or on outside data (ISIC layout).

  python -m derm_jax.evaluate --workdir=DIR [--step=N] --split=test
  python -m derm_jax.evaluate --workdir=DIR --isic_images=FOLDER --isic_csv=GROUND_TRUTH.csv
The run's own config.json (in DIR) rebuilds the model; the checkpoint is the latest one
unless --step is given. Writes <out>/metrics.json (all metrics, the majority baseline,
for ISIC data the rows skipped and why) and <out>/confusion.png; --out defaults to
DIR/eval/<split or isic-csv-name>_step<N>.
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
_ISIC_CSV = flags.DEFINE_string("isic_csv", None, "ISIC 2018/2019 one-hot ground-truth CSV.")
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
  from derm_jax import train_classifier
  from derm_jax.data import dermamnist, isic
  config = load_run_config(workdir)
  if bool(isic_images) != bool(isic_csv):
    raise ValueError("Outside data needs both --isic_images and --isic_csv.")
  train_source = dermamnist.get_data_source(config.data, "train")
  if isic_csv:
    # Outside images are first brought to the resolution the model was trained on.
    native = train_source[0]["image"].shape[0]
    source = isic.IsicSource(isic_images, isic_csv, image_size=native)
    eval_labels, name = source.labels, os.path.splitext(os.path.basename(isic_csv))[0]
  else:
    source = dermamnist.get_data_source(config.data, split)
    eval_labels, name = dermamnist.labels(config.data, split), split
  b, state, train_labels = train_classifier.restore_for_eval(config, workdir, step)
  result = train_classifier.test_report(b, state, source, config, train_labels, eval_labels)
  result["data"] = ({"isic_images": os.path.abspath(isic_images),
                     "isic_csv": os.path.abspath(isic_csv), **source.summary()}
                    if isic_csv else {"split": split, "source": config.data.source})
  out = out or os.path.join(workdir, "eval", f"{name}_step{result['step']}")
  train_classifier.write_eval_outputs(result, out, "metrics.json", "confusion.png",
                                      f"{name}, step {result['step']}")
  logging.info("%s: accuracy %.4f, balanced accuracy %.4f, macro AUC %s (majority baseline "
               "accuracy %.4f) -> %s", name, result["accuracy"], result["balanced_accuracy"],
               result["macro_auc"], result["majority_baseline"]["accuracy"], out)
  print(json.dumps({k: result[k] for k in ("accuracy", "balanced_accuracy", "macro_f1",
                                            "macro_auc", "loss")} | {"out": out}))
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
