"""Evaluate one classifier checkpoint: on a project split, on outside data in the ISIC
layout, or (without ground truth) predict on a folder of images; writes metrics.json,
confusion.png, predictions.csv (and submission.csv for ISIC input). Outside images that
are the run's own training or validation images are left out of the outside metrics (and
a set made mostly of them is refused): derm_jax/data/outside.py.

`score` is behind `python -m derm_jax.evaluate` (derm_jax/evaluate.py restores the run) and
the study's outside sets (`config.external`); it takes a restored run, so evaluation never
needs the tasks or the training loop.
"""

from __future__ import annotations

import json
import os

from absl import logging

from derm_jax import fileio, metrics


def outside_source(task, isic_images: str, isic_csv: str | None):
  """(source, name, image ids) of outside images: an ISIC-layout set with its ground truth,
  or (no CSV) a folder of images to predict on; read at the run's training resolution."""
  from derm_jax.data import images, isic
  native = task.dataset.describe()["image_size"]  # outside images: the training resolution
  if isic_csv:
    source = isic.IsicSource(isic_images, isic_csv, image_size=native,
                             class_names=task.meta.class_names)
    return source, os.path.splitext(os.path.basename(isic_csv))[0], source.image_ids
  source = images.ImageSource(images.list_image_files(isic_images), native)
  return source, os.path.basename(os.path.normpath(isic_images)), source.image_ids


def run_fingerprint(task, run_dir: str):
  """The fingerprint of the run's training and validation images: the one kept in its
  folder, else (a run of an older version) computed from the dataset."""
  from derm_jax.data import outside
  return task.once(("fingerprint", run_dir),
                   lambda: outside.load(run_dir) or outside.fingerprint_of(task.dataset))


def checked_outside(task, run_dir: str, isic_images: str, isic_csv: str | None):
  """(source, name, image ids, check summary) of an outside set with the run's own training
  and validation images left out (derm_jax/data/outside.py); a set that is mostly such
  images is refused (DataError). Without ground truth (predictions only) nothing is left
  out, but the overlap is counted and logged."""
  from derm_jax.data import outside
  source, name, image_ids = outside_source(task, isic_images, isic_csv)
  found = outside.check(run_fingerprint(task, run_dir), source, image_ids)
  summary = found.summary(image_ids)
  if summary["overlapping"]:
    logging.warning("Outside set %s: %d of %d images are this run's training or validation "
                    "images (by image id %d, lesion id %d, pixels %d)%s.", name,
                    summary["overlapping"], summary["images"], summary["found_by"]["image_id"],
                    summary["found_by"]["lesion_id"], summary["found_by"]["pixels"],
                    ": left out of its metrics" if isic_csv else "")
  if not isic_csv:
    return source, name, image_ids, summary
  outside.refuse_if_mostly(found, name)
  kept = found.kept
  return (outside.Subset(source, kept), name, [image_ids[i] for i in kept], summary)


def score(run, source, outs: list[str], *, name: str, split: str | None = None,
          image_ids=None, isic_images: str | None = None, isic_csv: str | None = None,
          leak_free_ids: str | None = None, quiet: bool = False,
          outside_check: dict | None = None) -> list[dict]:
  """Scores every member of `run` on `source` in one pass and writes member m's
  metrics.json, confusion.png, predictions.csv (and submission.csv for ISIC input) into
  outs[m]. `split`: a project split (subgroups, `leak_free_ids`); else outside images."""
  import jax

  from derm_jax.evaluation import classification
  from derm_jax.evaluation import predictions as predictions_lib
  task = run.task
  has_labels = not (isic_images and not isic_csv)
  evaluator = task.make_evaluator(source, has_labels=has_labels)
  results = evaluator.run(run.predict)
  for result, preds, out, member in zip(results, evaluator.predictions, outs, run.members,
                                        strict=True):
    result["step"] = run.step
    if split is not None:
      classification.add_subgroups(result, preds, task.dataset, split, task.meta.num_classes)
      if "lesion_overlap" in result:
        logging.info("%s%s: %s", name, f" [{member.name}]" if len(run.members) > 1 else "",
                     classification.lesion_overlap_line(result["lesion_overlap"]))
      if leak_free_ids:
        classification.add_subset(result, preds, classification.read_id_list(leak_free_ids),
                                  "leak_free", task.meta.num_classes)
        logging.info("%s without the %d leaking images: %s", name,
                     result["leak_free"]["excluded"],
                     classification.summary_line(result["leak_free"]))
      result["data"] = {"split": split, **task.dataset.describe()}
    else:
      native = task.dataset.describe()["image_size"]
      if isic_csv:  # an IsicSource, or the part of one the outside check kept
        summary = getattr(source, "source", source).summary()
      result["data"] = {"isic_images": os.path.abspath(isic_images), "image_size": native,
                        **({"isic_csv": os.path.abspath(isic_csv), **summary}
                           if isic_csv else {"num_images": len(source)})}
      if outside_check is not None:
        result["outside_check"] = outside_check
    if jax.process_index() != 0:
      continue
    classification.write_outputs(result, preds, task.meta, out, title=f"{name}, step "
                                 f"{result['step']}", image_ids=image_ids)
    if isic_images:  # the challenge's own file, where the run's classes fill its columns
      fmt = getattr(source, "source", source).ground_truth.format if isic_csv else "2018"
      problem = predictions_lib.isic_submission_problem(task.meta.class_names, fmt)
      if problem is None:
        predictions_lib.write_isic_submission_csv(
            fileio.join(out, "submission.csv"), [image_ids[i] for i in preds.index],
            preds.probs, task.meta.class_names, fmt=fmt)
      elif member is run.members[0]:
        logging.info("No submission.csv: %s.", problem)
    who = f" [{member.name}]" if len(run.members) > 1 else ""
    if "accuracy" in result:
      logging.info("%s%s: %s -> %s", name, who, classification.summary_line(result), out)
      if not quiet:
        print(json.dumps({k: result[k] for k in (*metrics.HEADLINE, "loss")} | {"out": out}))
    else:
      logging.info("%s%s: predictions for %d images -> %s", name, who,
                   result["num_examples"], out)
      if not quiet:
        print(json.dumps({"num_examples": result["num_examples"], "out": out}))
  return results
