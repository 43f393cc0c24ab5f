"""Evaluates a classifier checkpoint on a project split or on outside data (ISIC layout),
or predicts on images without ground truth.

  python -m derm_jax.evaluate --workdir=DIR [--step=N] --split=test
  python -m derm_jax.evaluate --workdir=DIR --isic_images=FOLDER --isic_csv=GROUND_TRUTH.csv
  python -m derm_jax.evaluate --workdir=DIR --isic_images=FOLDER      # predictions only
  python -m derm_jax.evaluate --workdir=DIR --leak_free_ids=AUDIT/leak_free_test_ids.txt
The run's own config.json (in DIR) rebuilds the model; the checkpoint is the latest one
unless --step is given. Writes into <out> (default DIR/eval/<split or set name>_step<N>):
  metrics.json      all metrics, the majority baseline, for ISIC data the rows skipped;
                    per sex / age band / body site where the dataset has metadata; with
                    --leak_free_ids, the same on the images without a near-duplicate
  confusion.png     the confusion matrix
  predictions.csv   one row per image: image_id, label (blank if unknown), p_<class>..., pred
  submission.csv    for ISIC-layout input: the challenge's own columns and order
Outside images are brought to the resolution of the run's training data first.
"""

from __future__ import annotations

import sys

from absl import app, flags

from derm_jax import console
from derm_jax.api import evaluate
from derm_jax.errors import DermJaxError

__all__ = ["evaluate", "main"]


_WORKDIR = flags.DEFINE_string("workdir", None, "Classifier workdir (has config.json).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Project split.")
_ISIC_IMAGES = flags.DEFINE_string("isic_images", None, "Folder of ISIC images.")
_ISIC_CSV = flags.DEFINE_string("isic_csv", None, "ISIC 2018/2019 one-hot ground-truth CSV "
                                "(without it: predictions only).")
_LEAK_FREE = flags.DEFINE_string(
    "leak_free_ids", None, "With --split: also score only the images whose ids are in this "
    "file (one per line; the audit's leak_free_test_ids.txt).")
_OUT = flags.DEFINE_string("out", None, "Output folder (default DIR/eval/<name>_step<N>).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required.")
  console.quiet_libraries()
  from derm_jax.train import compile_cache
  try:
    with compile_cache.default():  # a second evaluation loads its programs
      evaluate(_WORKDIR.value, _STEP.value, _SPLIT.value, _ISIC_IMAGES.value, _ISIC_CSV.value,
               _OUT.value, _LEAK_FREE.value)
  except DermJaxError as e:  # bad input: one line; anything else is a bug (traceback)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=console.parse_flags)
