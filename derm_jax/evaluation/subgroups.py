"""Metrics per patient subgroup (sex, age band, body site, diagnosis type) from per-example
metadata, each with 95% bootstrap intervals of accuracy, balanced accuracy and macro AUC.

  from derm_jax.evaluation import subgroups
  meta = dataset.metadata("test")   # dermamnist / ham10000 / isic2019: sex, age, localization
  report = subgroups.subgroup_metrics(labels, probs, num_classes, meta)
  report["by"]["age_band"]["50-69"]          # {'count': n, 'class_counts': [...],
                                             #  'metrics': classification_metrics(...) | None,
                                             #  'intervals': {metric: [lo, hi]} | None}

Groups: `sex` as given ('male', 'female', ...), `age_band` (<30, 30-49, 50-69, >=70, from
`age` in years) and `localization` (body site as given). Missing values ('' , 'unknown',
NaN age) form the group 'unknown'.

A group smaller than `min_count` (default `MIN_GROUP_SIZE` = 30) gets its count but
`metrics: None`. Why 30: the standard error of an accuracy p on n images is
sqrt(p(1-p)/n); at p = 0.8 and n = 30 it is 0.073, a 95% interval of about +-0.14, already
wider than the differences between subgroups one would care about, and below 30 the
interval passes +-0.15 quickly. With seven classes and nv at two thirds of HAM10000, a
smaller group also rarely holds positives of the rare classes, so its balanced accuracy
and macro AUC are averages over a few classes. Pass another `min_count` if needed; the
counts are always reported so readers can judge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from derm_jax import metrics, stats
from derm_jax.metrics import classification_metrics

MIN_GROUP_SIZE = 30
UNKNOWN = "unknown"
# (label, lower bound inclusive, upper bound exclusive) in years.
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<30", -np.inf, 30.0), ("30-49", 30.0, 50.0), ("50-69", 50.0, 70.0),
    (">=70", 70.0, np.inf))
ATTRIBUTES = ("sex", "age_band", "localization")  # and 'dx_type' where the metadata has it
INTERVAL_METRICS = metrics.INTERVAL
N_BOOT = 1000
_MISSING = {"", "unknown", "nan", "none", "na"}


def age_bands(age: Sequence[float] | np.ndarray) -> np.ndarray:
  """Age band label of each age in years ('unknown' for NaN or negative ages)."""
  age = np.asarray(age, dtype=np.float64).reshape(-1)
  out = np.full(age.shape, UNKNOWN, dtype=object)
  for label, lo, hi in AGE_BANDS:
    out[(age >= lo) & (age < hi) & (age >= 0)] = label
  return out.astype(str)


def _categories(values: Sequence[Any] | np.ndarray) -> np.ndarray:
  vals = [str(v).strip() for v in np.asarray(values, dtype=object).reshape(-1)]
  return np.array([UNKNOWN if v.lower() in _MISSING else v for v in vals], dtype=str)


def group_values(metadata: Mapping[str, Any], attribute: str) -> np.ndarray:
  """The group of each example for `attribute` ('sex', 'age_band', 'localization' or any
  metadata key)."""
  if attribute == "age_band":
    if "age" not in metadata:
      raise KeyError("metadata has no 'age' (needed for 'age_band').")
    return age_bands(metadata["age"])
  if attribute not in metadata:
    raise KeyError(f"metadata has no {attribute!r}; keys: {sorted(metadata)}.")
  return _categories(metadata[attribute])


def _intervals(labels: np.ndarray, probs: np.ndarray) -> dict[str, list[float] | None]:
  """95% bootstrap intervals of a group's headline metrics (N_BOOT resamples)."""
  out = {}
  for metric in INTERVAL_METRICS:
    ci = stats.bootstrap_ci(labels, probs, metric, n_boot=N_BOOT, seed=0)
    out[metric] = None if ci.lo is None else [ci.lo, ci.hi]
  return out


def _band_order(name: str) -> tuple[int, str]:
  order = [b[0] for b in AGE_BANDS]
  return (order.index(name) if name in order else len(order), name)


def subgroup_metrics(labels: Sequence[int] | np.ndarray, probs: np.ndarray, num_classes: int,
                     metadata: Mapping[str, Any], min_count: int = MIN_GROUP_SIZE,
                     attributes: Sequence[str] = ATTRIBUTES) -> dict[str, Any]:
  """Classification metrics overall and per subgroup of each attribute (JSON-safe).

  Args:
    labels: (N,) int labels; probs: (N, K) class probabilities; num_classes: K.
    metadata: per-example arrays of length N, e.g. `Dataset.metadata(split)`; needs the
      keys of `attributes` ('age' for 'age_band').
    min_count: groups with fewer examples get `metrics: None`.

  Returns:
    {'min_count', 'overall': metrics, 'by': {attribute: {group: {'count', 'class_counts',
    'metrics'}}}}; groups ordered by age band, else by size (largest first), 'unknown' last.
  """
  labels = np.asarray(labels, dtype=np.int64).reshape(-1)
  probs = np.asarray(probs, dtype=np.float64)
  n = labels.shape[0]
  by: dict[str, Any] = {}
  for attribute in attributes:
    groups = group_values(metadata, attribute)
    if groups.shape[0] != n:
      raise ValueError(f"metadata {attribute!r} has {groups.shape[0]} values for {n} labels.")
    names, counts = np.unique(groups, return_counts=True)
    if attribute == "age_band":
      order = sorted(names.tolist(), key=_band_order)
    else:
      size = dict(zip(names.tolist(), counts.tolist(), strict=True))
      order = sorted(size, key=lambda g: (g == UNKNOWN, -size[g], g))
    result: dict[str, Any] = {}
    for g in order:
      mask = groups == g
      count = int(mask.sum())
      result[g] = {
          "count": count,
          "class_counts": np.bincount(labels[mask], minlength=num_classes).tolist(),
          "metrics": (classification_metrics(labels[mask], probs[mask], num_classes)
                      if count >= min_count else None),
          "intervals": (_intervals(labels[mask], probs[mask]) if count >= min_count
                        else None)}
    by[attribute] = result
  return {"min_count": int(min_count), "num_examples": int(n),
          "overall": classification_metrics(labels, probs, num_classes), "by": by}
