"""Classification metrics in pure numpy (no jax): accuracy, balanced accuracy, macro-F1, macro AUC.

Used by the training/evaluation loops (per-epoch train/val metrics, test metrics), by
the majority-class baseline and by the overfitting-gap bookkeeping of the comparison.
Everything returned is JSON-safe: Python floats/ints/lists, and `None` where a number
is undefined (never numpy scalars, never NaN).

Conventions (each one matches scikit-learn, which the tests check against):
  * prediction = argmax of `probs` (ties -> the lowest class index, like `np.argmax`);
  * balanced_accuracy = mean recall over the classes present in `labels`
    (`sklearn.metrics.balanced_accuracy_score`);
  * macro_f1 = unweighted mean over ALL `num_classes` classes of
    F1_k = 2 TP / (2 TP + FP + FN), with F1_k = 0 when the denominator is 0, i.e. a
    class that is neither present nor predicted counts as 0
    (`f1_score(labels=range(K), average='macro', zero_division=0)`);
  * macro_auc = one-vs-rest AUC per class, computed exactly as the Mann-Whitney U
    statistic with tied scores counting 1/2, averaged over the classes that have both
    positives and negatives in `labels` (`roc_auc_score(multi_class='ovr',
    average='macro')` when every class is present; sklearn returns NaN otherwise,
    we skip the undefined classes). `None` if no class qualifies.
  * per_class_recall[k] = None for a class absent from `labels`;
  * confusion_matrix[i][j] = number of examples of true class i predicted as j.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# The headline metrics: every table, interval and comparison of arms reports these (the
# report's tables and bootstrap intervals, the probes, the k-NN monitor); the subset with
# intervals per subgroup and per lesion group; the label-efficiency curves'.
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
INTERVAL = ("accuracy", "balanced_accuracy", "macro_auc")
EFFICIENCY = ("balanced_accuracy", "macro_auc")

__all__ = [
  "EFFICIENCY",
  "HEADLINE",
  "INTERVAL",
  "weighted_metric",
  "classification_metrics",
  "confusion_matrix",
  "majority_baseline",
  "overfitting_gap",
  "to_jsonable",
]


def to_jsonable(obj: Any) -> Any:
  """Recursively converts numpy scalars/arrays to Python types and NaN/inf to None."""
  if isinstance(obj, dict):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return to_jsonable(obj.tolist())
  if isinstance(obj, (bool, np.bool_)):
    return bool(obj)
  if isinstance(obj, (int, np.integer)):
    return int(obj)
  if isinstance(obj, (float, np.floating)):
    x = float(obj)
    return x if math.isfinite(x) else None
  return obj


def _check_inputs(labels: Any, probs: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  labels = np.asarray(labels)
  probs = np.asarray(probs, dtype=np.float64)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D (N,), got shape {labels.shape}")
  if probs.ndim != 2 or probs.shape != (labels.shape[0], num_classes):
    raise ValueError(f"probs must have shape (N, K) = ({labels.shape[0]}, {num_classes}), got {probs.shape}")
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    if not np.all(labels == np.round(labels)):
      raise ValueError("labels must be integers")
  labels = labels.astype(np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
  return labels, probs


def confusion_matrix(labels: Any, preds: Any, num_classes: int) -> np.ndarray:
  """(K, K) int64 counts; rows = true class, columns = predicted class."""
  labels = np.asarray(labels, dtype=np.int64)
  preds = np.asarray(preds, dtype=np.int64)
  cm = np.zeros((num_classes, num_classes), dtype=np.int64)
  np.add.at(cm, (labels, preds), 1)
  return cm


# Macro AUC uses a (positives x negatives) pair matrix up to this size (one matrix product per
# class and chunk), else a sort of the scores with cumulative negative weights (less memory).
AUC_PAIR_MATRIX_MAX = 4_000_000


def weighted_metric(name: str, labels: np.ndarray, probs: np.ndarray, w: np.ndarray) -> np.ndarray:
  """Headline metric `name` under each row of weights w (B, N) (image multiplicities: a
  bootstrap resample is one row; all ones is the sample itself); (B,) with NaN where it is
  undefined. The one implementation of the headline metrics: `classification_metrics`
  and every bootstrap interval (derm_jax/stats.py) use it."""
  n, k = probs.shape
  preds = np.argmax(probs, axis=1)
  correct = (preds == labels).astype(np.float64)
  total = w.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    if name == "accuracy":
      return (w @ correct) / total
    onehot = np.zeros((n, k))
    onehot[np.arange(n), labels] = 1.0
    support = w @ onehot  # (B, K) true counts
    tp = w @ (onehot * correct[:, None])  # (B, K)
    if name == "balanced_accuracy":
      present = support > 0
      recall = np.where(present, tp / np.where(present, support, 1.0), 0.0)
      n_present = present.sum(axis=1)
      return np.where(n_present > 0, recall.sum(axis=1) / np.maximum(n_present, 1), np.nan)
    if name == "macro_f1":
      pred_onehot = np.zeros((n, k))
      pred_onehot[np.arange(n), preds] = 1.0
      predicted = w @ pred_onehot
      denom = support + predicted  # = 2 TP + FP + FN
      f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1.0), 0.0)
      return np.where(total > 0, f1.mean(axis=1), np.nan)
    if name == "macro_auc":
      auc_sum = np.zeros(w.shape[0])
      auc_n = np.zeros(w.shape[0])
      for c in range(k):
        pos = labels == c
        if not pos.any() or pos.all():
          continue
        sp, sn = probs[pos, c], probs[~pos, c]
        if sp.size * sn.size <= AUC_PAIR_MATRIX_MAX:
          # (positive, negative) pair matrix: 1 if the positive scores higher, 1/2 on ties.
          pair = (sp[:, None] > sn[None, :]) + 0.5 * (sp[:, None] == sn[None, :])
          wp, wn = w[:, pos], w[:, ~pos]
          num = np.einsum("bj,bj->b", wp @ pair, wn)
          den = wp.sum(axis=1) * wn.sum(axis=1)
          ok = den > 0
          auc_sum += np.where(ok, num / np.where(ok, den, 1.0), 0.0)
          auc_n += ok
          continue
        order = np.argsort(probs[:, c], kind="stable")
        s = probs[order, c]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # tie groups of equal scores
        ws = w[:, order]
        wp = np.add.reduceat(ws * pos[order], starts, axis=1)  # (B, G) positive weight per group
        wn = np.add.reduceat(ws * ~pos[order], starts, axis=1)
        neg_below = np.cumsum(wn, axis=1) - wn
        num = (wp * (neg_below + 0.5 * wn)).sum(axis=1)
        den = wp.sum(axis=1) * wn.sum(axis=1)
        ok = den > 0
        auc_sum += np.where(ok, num / np.where(ok, den, 1.0), 0.0)
        auc_n += ok
      return np.where(auc_n > 0, auc_sum / np.maximum(auc_n, 1), np.nan)
  raise ValueError(f"unknown metric {name!r}; built-ins: {HEADLINE}")


def classification_metrics(labels: Any, probs: Any, num_classes: int,
                           loss: float | None = None) -> dict[str, Any]:
  """All classification metrics of (N,) integer labels vs (N, K) class probabilities.

  Returns a JSON-safe dict with keys accuracy, balanced_accuracy, macro_f1, macro_auc,
  per_class_recall (K entries, None for absent classes), per_class_f1, support (K true
  counts), confusion_matrix (K x K), num_examples, and loss (float) when `loss` is given.
  Undefined numbers (e.g. everything on an empty input) are None.
  """
  labels, probs = _check_inputs(labels, probs, num_classes)
  n = int(labels.shape[0])
  preds = np.argmax(probs, axis=1) if n else np.zeros((0,), np.int64)
  cm = confusion_matrix(labels, preds, num_classes)
  tp = np.diag(cm).astype(np.float64)
  support = cm.sum(axis=1).astype(np.float64)   # true counts
  predicted = cm.sum(axis=0).astype(np.float64)  # predicted counts
  fp = predicted - tp
  fn = support - tp

  present = support > 0
  recall = np.full(num_classes, np.nan)
  recall[present] = tp[present] / support[present]
  denom = 2 * tp + fp + fn
  f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1.0), 0.0)

  ones = np.ones((1, n))
  out: dict[str, Any] = {k: float(weighted_metric(k, labels, probs, ones)[0]) if n else None
                         for k in HEADLINE}
  out.update({
    "per_class_recall": recall,
    "per_class_f1": f1,
    "support": support.astype(np.int64),
    "confusion_matrix": cm,
    "num_examples": n,
  })
  if loss is not None:
    out["loss"] = float(loss)
  return to_jsonable(out)


def majority_baseline(train_labels: Any, eval_labels: Any, num_classes: int) -> dict[str, Any]:
  """Scores of always predicting the most frequent TRAIN class on `eval_labels`.

  Ties between equally frequent classes go to the lowest index. A constant score gives
  every one-vs-rest AUC exactly 0.5, so macro_auc = 0.5.
  Returns {accuracy, balanced_accuracy, macro_f1, macro_auc, majority_class}.
  """
  train_labels = np.asarray(train_labels, dtype=np.int64)
  eval_labels = np.asarray(eval_labels, dtype=np.int64)
  if train_labels.size == 0:
    raise ValueError("majority_baseline needs at least one training label")
  majority = int(np.argmax(np.bincount(train_labels, minlength=num_classes)))
  probs = np.zeros((eval_labels.shape[0], num_classes))
  probs[:, majority] = 1.0
  m = classification_metrics(eval_labels, probs, num_classes)
  return {
    "accuracy": m["accuracy"],
    "balanced_accuracy": m["balanced_accuracy"],
    "macro_f1": m["macro_f1"],
    "macro_auc": 0.5,
    "majority_class": majority,
  }


def overfitting_gap(train: dict[str, Any], val: dict[str, Any]) -> dict[str, float | None]:
  """Train-validation gaps; both are positive when the model overfits.

  'gap/accuracy' = train accuracy - val accuracy; 'gap/loss' = val loss - train loss.
  A gap is None when either side lacks (or has None for) the needed key.
  """
  def diff(a: Any, b: Any) -> float | None:
    if a is None or b is None:
      return None
    d = float(a) - float(b)
    return d if math.isfinite(d) else None

  return {
    "gap/accuracy": diff(train.get("accuracy"), val.get("accuracy")),
    "gap/loss": diff(val.get("loss"), train.get("loss")),
  }
