"""Label efficiency: class-stratified, seeded, nested subsets of a training split.

`fraction_indices(labels, 0.1, seed)` keeps about 10% of the examples of EVERY class (at
least one of each class present), so the class mix of the subset is that of the split and
rare classes do not vanish at 1%. Each class's examples are put in a seeded random order
that does not depend on the fraction, and the subset takes a prefix of each order: for one
seed, the 1% subset lies inside the 10% subset, which lies inside the 100% split, so
results at different fractions differ only by the labels added.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def class_take_count(class_size: int, fraction: float) -> int:
  """Examples kept of a class of `class_size`: round(fraction * size) (halves up), >= 1.

  Non-decreasing in `fraction`, and equal to class_size at fraction 1.
  """
  if class_size <= 0:
    return 0
  return min(class_size, max(1, math.floor(fraction * class_size + 0.5)))


def fraction_indices(labels: Sequence[int] | np.ndarray, fraction: float,
                     seed: int) -> np.ndarray:
  """Sorted int64 indices of a stratified subset with about `fraction` of each class.

  Args:
    labels: (N,) non-negative integer class of each example of the training split.
    fraction: in (0, 1]; 1.0 returns every index.
    seed: the subset is a deterministic function of (labels, fraction, seed). Class c's
      order is a permutation drawn from numpy's default_rng([seed, c]), so subsets of one
      seed are nested across fractions.

  Raises:
    ValueError: naming the value, if `fraction` is not a number in (0, 1] or labels are not
      non-negative integers.
  """
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.integer,
                                                             np.floating)):
    raise ValueError(f"fraction={fraction!r} must be a number in (0, 1].")
  fraction = float(fraction)
  if not 0.0 < fraction <= 1.0:  # also refuses NaN
    raise ValueError(f"fraction={fraction!r} must be in (0, 1] (e.g. 0.01 for 1% of the "
                     "labels).")
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D (N,), got shape {labels.shape}.")
  if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0):
    raise ValueError("labels must be non-negative integers.")
  labels = labels.astype(np.int64)
  kept = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    order = np.random.default_rng([int(seed), int(c)]).permutation(members.size)
    kept.append(members[order[:class_take_count(members.size, fraction)]])
  if not kept:
    return np.zeros((0,), np.int64)
  return np.sort(np.concatenate(kept)).astype(np.int64)
