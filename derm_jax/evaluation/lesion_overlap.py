"""Test metrics on the images whose lesion was, and was not, seen in training.

Where a dataset knows each image's lesion (`dataset.metadata(split)['lesion_id']`:
DermaMNIST through its lesion table, HAM10000, ISIC 2019, a folder with a `group` column),
a split whose lesions also have images in train (DermaMNIST's official split: 693 of the
2,005 test images) is scored three ways, side by side:

  result["lesion_overlap"] = lesion_overlap.metrics(labels, probs, k, seen, dx_type, ids)
  # {'seen_in': ['train'], 'seen_ids': [...],
  #  'all' / 'seen_lesion' / 'unseen_lesion': {'count', 'class_counts', 'metrics',
  #                                            'intervals': {metric: [lo, hi]}},
  #  'by_dx_type': {dx_type: {'seen_lesion': {...}, 'unseen_lesion': {...}}}}

'unseen_lesion' is what a model does on lesions it never saw; comparing it with
'seen_lesion' is not a pure memory effect, because the two groups differ in kind
(seen-lesion images are mostly histopathology-confirmed lesions photographed several
times, unseen ones mostly single follow-up naevi), hence the per-`dx_type` breakdown.
Intervals: 95% percentile bootstrap over the group's images (`stats.bootstrap_ci`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from derm_jax import metrics, stats
from derm_jax.metrics import classification_metrics

SEEN_IN = ("train",)
INTERVAL_METRICS = metrics.INTERVAL
N_BOOT = 1000
GROUPS = ("all", "seen_lesion", "unseen_lesion")


def seen_mask(dataset: Any, split: str, seen_in: Sequence[str] = SEEN_IN) -> np.ndarray | None:
  """(N,) bool over `split`: whether each image's lesion has an image in `seen_in`; None
  when the dataset has no lesion ids (or `split` is itself one of `seen_in`)."""
  get = getattr(dataset, "metadata", None)
  if get is None or split in seen_in:
    return None
  lesions = get(split).get("lesion_id")
  if lesions is None or not any(str(g) for g in lesions):
    return None
  seen: set[str] = set()
  for s in seen_in:
    seen |= {str(g) for g in get(s).get("lesion_id", ()) if str(g)}
  return np.array([bool(str(g)) and str(g) in seen for g in lesions], dtype=bool)


def group(labels: np.ndarray, probs: np.ndarray, num_classes: int, mask: np.ndarray,
          n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
  """Counts, metrics and bootstrap intervals of the images in `mask`."""
  y, p = labels[mask], probs[mask]
  out: dict[str, Any] = {"count": int(mask.sum()),
                         "class_counts": np.bincount(y, minlength=num_classes).tolist()}
  if not mask.any():
    out["metrics"], out["intervals"] = None, {}
    return out
  out["metrics"] = classification_metrics(y, p, num_classes)
  out["intervals"] = {}
  for m in INTERVAL_METRICS:
    ci = stats.bootstrap_ci(y, p, m, n_boot=n_boot, seed=seed)
    out["intervals"][m] = None if ci.lo is None else [ci.lo, ci.hi]
  return out


def metrics(labels: Sequence[int] | np.ndarray, probs: np.ndarray, num_classes: int,
            seen: np.ndarray, ids: Sequence[int] | np.ndarray,
            dx_type: Sequence[str] | np.ndarray | None = None, n_boot: int = N_BOOT,
            seen_in: Sequence[str] = SEEN_IN) -> dict[str, Any]:
  """All, seen-lesion and unseen-lesion metrics side by side (and per `dx_type`)."""
  labels = np.asarray(labels, dtype=np.int64).reshape(-1)
  probs = np.asarray(probs, dtype=np.float64)
  seen = np.asarray(seen, dtype=bool).reshape(-1)
  if seen.shape != labels.shape:
    raise ValueError(f"seen mask of {seen.shape[0]} images for {labels.shape[0]} labels.")
  masks = {"all": np.ones_like(seen), "seen_lesion": seen, "unseen_lesion": ~seen}
  out: dict[str, Any] = {"seen_in": list(seen_in),
                         "seen_ids": np.asarray(ids, dtype=np.int64)[seen].tolist()}
  for name, mask in masks.items():
    out[name] = group(labels, probs, num_classes, mask, n_boot)
  if dx_type is not None:
    dx = np.asarray(dx_type, dtype=str).reshape(-1)
    by: dict[str, Any] = {}
    for t in sorted(set(dx.tolist()), key=lambda t: (-(dx == t).sum(), t)):
      by[t or "unknown"] = {name: group(labels, probs, num_classes, (dx == t) & masks[name],
                                        n_boot)
                            for name in ("seen_lesion", "unseen_lesion")}
    out["by_dx_type"] = by
  return out
