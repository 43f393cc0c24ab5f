"""Classification evaluator: loss, accuracy, balanced accuracy, macro-F1, macro AUC,
confusion matrix, per-class recall, the majority baseline, and per-image probabilities.

  ev = ClassificationEvaluator(source, meta, batch_size=..., mesh=..., train_labels=...)
  results = ev.run(run.predict)   # one metrics dict (JSON-safe) per member of the run
  ev.predictions[m]               # member m's per-image probabilities
`run.predict(batch) -> {'probs': (B, M, K), 'loss': (B, M)}` is the classifier task's eval
step for every member of a run (derm_jax/train/loop.py). Metrics come from `derm_jax.metrics` (checked against sklearn).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from derm_jax import metrics as metrics_lib
from derm_jax.data.errors import DataError
from derm_jax.evaluation import common


@dataclasses.dataclass(frozen=True)
class Predictions:
  """Per-image outputs of one evaluation, in source order."""

  index: np.ndarray          # position in the source
  ids: np.ndarray            # the source's own example ids
  labels: np.ndarray | None  # int64, None where the ground truth is unknown
  probs: np.ndarray          # (N, K) float


class ClassificationEvaluator:
  """Scores a classifier state on one split (or outside set) of labelled images."""

  def __init__(self, source: Any, meta, *, batch_size: int, mesh,
               train_labels: np.ndarray | None = None, has_labels: bool = True):
    self.source, self.meta = source, meta
    self.batch_size, self.mesh = batch_size, mesh
    self.train_labels = train_labels
    self.has_labels = has_labels
    self.predictions: list[Predictions] = []

  def run(self, predict: Callable) -> list[dict[str, Any]]:
    out = common.collect(predict, self.source, batch_size=self.batch_size, mesh=self.mesh)
    labels = out["label"].astype(np.int64) if self.has_labels else None
    self.predictions, results = [], []
    for m in range(common.num_members(out)):
      mine = common.per_member(out, m)
      self.predictions.append(Predictions(index=mine["index"], ids=mine["id"], labels=labels,
                                          probs=mine["probs"].astype(np.float64)))
      if labels is None:
        results.append({"num_examples": int(len(mine["index"])),
                        "class_names": list(self.meta.class_names)})
      else:
        results.append(self.score(labels, mine["probs"], mine["loss"]))
    return results

  def score(self, labels: np.ndarray, probs: np.ndarray, losses: np.ndarray) -> dict[str, Any]:
    k = self.meta.num_classes
    result = metrics_lib.classification_metrics(labels, probs, k, loss=float(np.mean(losses))
                                                if len(losses) else None)
    result["class_names"] = list(self.meta.class_names)
    if self.train_labels is not None:
      result["majority_baseline"] = metrics_lib.majority_baseline(self.train_labels, labels, k)
    return result


def train_metrics(outputs: list[dict], num_classes: int) -> dict[str, Any]:
  """Metrics of the training steps since the last evaluation, from their per-example
  outputs {'label', 'probs', 'loss'} (host arrays): exact, not a running estimate."""
  labels = np.concatenate([o["label"] for o in outputs]).astype(np.int64)
  probs = np.concatenate([o["probs"] for o in outputs])
  loss = np.concatenate([o["loss"] for o in outputs])
  return metrics_lib.classification_metrics(labels, probs, num_classes, loss=float(loss.mean()))


def summary_line(result: dict[str, Any]) -> str:
  """One log line: the headline metrics rounded to 4 digits, beside the majority baseline."""
  def f(v):
    return "n/a" if v is None else f"{v:.4f}"
  line = ", ".join(f"{k} {f(result.get(k))}" for k in
                   (*metrics_lib.HEADLINE, "loss")
                   if k in result)
  base = result.get("majority_baseline")
  if base:
    line += f" (majority baseline accuracy {f(base['accuracy'])})"
  return line


def lesion_overlap_line(overlap: dict[str, Any]) -> str:
  """One log line: balanced accuracy on all, seen-lesion and unseen-lesion images."""
  def cell(g):
    m = overlap[g]
    ba = (m["metrics"] or {}).get("balanced_accuracy")
    ci = (m.get("intervals") or {}).get("balanced_accuracy")
    v = "n/a" if ba is None else f"{ba:.4f}"
    return f"{g.replace('_', ' ')} ({m['count']} images) {v}" + (
        f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
  return "balanced accuracy: " + "; ".join(cell(g) for g in ("all", "seen_lesion",
                                                             "unseen_lesion"))


def write_outputs(result: dict[str, Any], preds: Predictions, meta, out_dir: str, *,
                  metrics_name: str = "metrics.json", confusion_name: str = "confusion.png",
                  predictions_name: str = "predictions.csv", title: str = "",
                  image_ids=None) -> None:
  """metrics JSON, confusion-matrix PNG (when labels are known) and per-image predictions
  CSV of one evaluation into `out_dir`. `image_ids` (default: the source's ids) name the
  CSV rows."""
  import json

  from derm_jax import fileio, plots
  from derm_jax.evaluation import predictions
  fileio.makedirs(out_dir)
  ids = preds.ids if image_ids is None else [image_ids[i] for i in preds.index]
  predictions.write_predictions_csv(fileio.join(out_dir, predictions_name), ids,
                                    preds.labels, preds.probs, meta.class_names)
  fileio.atomic_write_text(fileio.join(out_dir, metrics_name),
                           json.dumps(metrics_lib.to_jsonable(result), indent=2))
  if "confusion_matrix" in result:
    plots.save_confusion_matrix(np.asarray(result["confusion_matrix"]), list(meta.class_names),
                                fileio.join(out_dir, confusion_name), title=title)


def add_subgroups(result: dict[str, Any], preds: Predictions, dataset, split: str,
                  num_classes: int) -> None:
  """Metrics with intervals per sex, age band, body site and diagnosis type (`dx_type`),
  where the dataset has per-image metadata (DermaMNIST, HAM10000, ISIC 2019); groups too
  small to mean anything get counts only. Then the seen/unseen-lesion metrics
  (`add_lesion_overlap`)."""
  metadata = getattr(dataset, "metadata", None)
  if metadata is None or preds.labels is None:
    return
  from derm_jax.evaluation import subgroups
  md = {k: np.asarray(v)[preds.index] for k, v in metadata(split).items()}
  attributes = tuple(a for a in (*subgroups.ATTRIBUTES, "dx_type")
                     if (a if a != "age_band" else "age") in md)
  result["subgroups"] = subgroups.subgroup_metrics(preds.labels, preds.probs, num_classes, md,
                                                   attributes=attributes)
  add_lesion_overlap(result, preds, dataset, split, num_classes)


def add_lesion_overlap(result: dict[str, Any], preds: Predictions, dataset, split: str,
                       num_classes: int) -> None:
  """result['lesion_overlap']: all / seen-lesion / unseen-lesion metrics side by side, where
  the dataset knows lesions and some images of `split` have a lesion seen in training."""
  from derm_jax.evaluation import lesion_overlap
  seen = lesion_overlap.seen_mask(dataset, split)
  if seen is None or preds.labels is None:
    return
  seen = seen[preds.index]
  md = dataset.metadata(split)
  dx_type = np.asarray(md["dx_type"])[preds.index] if "dx_type" in md else None
  result["lesion_overlap"] = lesion_overlap.metrics(preds.labels, preds.probs, num_classes,
                                                    seen, preds.ids, dx_type)


def read_id_list(path: str) -> np.ndarray:
  """Integer image ids, one per line (e.g. the audit's leak_free_test_ids.txt)."""
  try:
    with open(path) as f:
      return np.array([int(line) for line in f if line.strip()], dtype=np.int64)
  except OSError as e:
    raise DataError(f"{path}: cannot read the id list ({e}).") from e
  except ValueError as e:
    raise DataError(f"{path}: not a list of integer image ids, one per line ({e}).") from e


def add_subset(result: dict[str, Any], preds: Predictions, keep_ids: np.ndarray, name: str,
               num_classes: int) -> None:
  """The same metrics on the images whose ids are in `keep_ids` (e.g. the test images
  with no near-duplicate in train or val), as result[name]."""
  keep = np.isin(np.asarray(preds.ids, dtype=np.int64), keep_ids)
  sub = metrics_lib.classification_metrics(preds.labels[keep], preds.probs[keep], num_classes)
  sub["excluded"] = int((~keep).sum())
  result[name] = sub
