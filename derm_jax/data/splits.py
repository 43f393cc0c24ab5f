"""Lesion-grouped, class-stratified train/val/test splits (pure numpy, seeded).

Several images of one lesion must never sit in two splits: a model that saw one of them
in training recognises the others, and the test score measures memory instead of
diagnosis. `grouped_stratified_split` assigns whole groups (lesions) to splits, stratified
by each group's label, so each split keeps the class mix of the whole dataset:

  assignment = grouped_stratified_split(labels, groups, val_fraction=0.1,
                                        test_fraction=0.2, seed=0)
  # assignment[i] in {0: train, 1: val, 2: test}

Per class, the groups of that class are visited largest first (equal sizes in a seeded
random order) and each goes to the split whose image count is furthest below its target
(fraction x images of the class). When a class has enough groups, val and test first get
one group each, so every split holds every class where that is possible at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLIT_NAMES = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2


def group_labels(labels: np.ndarray, group_index: np.ndarray, num_groups: int) -> np.ndarray:
  """The label of each group: its most frequent label; ties go to the rarer class overall."""
  labels = np.asarray(labels, dtype=np.int64)
  num_classes = int(labels.max()) + 1 if labels.size else 0
  counts = np.zeros((num_groups, max(num_classes, 1)), dtype=np.int64)
  np.add.at(counts, (group_index, labels), 1)
  overall = np.bincount(labels, minlength=num_classes)
  # Break ties towards the class with fewer images overall (then the lower index).
  tie_break = np.argsort(np.argsort(overall, kind="stable"), kind="stable")
  score = counts * (num_classes + 1) + (num_classes - tie_break)[None, :] * (counts > 0)
  return np.argmax(score, axis=1).astype(np.int64)


def groups_per_class(labels: Sequence[int] | np.ndarray, groups: Sequence[object] | np.ndarray,
                     num_classes: int) -> np.ndarray:
  """(num_classes,) int64: how many groups have each class as their label (`group_labels`).

  A class can be in all three splits only if it labels at least three groups: this is what
  a stratified split has to spread (a dataset checks it before splitting)."""
  labels = np.asarray(labels, dtype=np.int64).reshape(-1)
  keys = np.asarray(groups, dtype=object).reshape(-1)
  if labels.shape != keys.shape:
    raise ValueError(f"labels ({labels.shape[0]}) and groups ({keys.shape[0]}) differ in "
                     "length.")
  if labels.size == 0:
    return np.zeros((num_classes,), dtype=np.int64)
  index_of: dict[object, int] = {}
  group_index = np.fromiter((index_of.setdefault(g, len(index_of)) for g in keys.tolist()),
                            dtype=np.int64, count=labels.size)
  glabel = group_labels(labels, group_index, len(index_of))
  return np.bincount(glabel, minlength=num_classes).astype(np.int64)


def grouped_stratified_split(labels: Sequence[int] | np.ndarray,
                             groups: Sequence[object] | np.ndarray,
                             val_fraction: float = 0.1, test_fraction: float = 0.2,
                             seed: int = 0) -> np.ndarray:
  """Split index (0 train, 1 val, 2 test) of each example; groups are kept whole.

  Args:
    labels: (N,) integer class of each example.
    groups: (N,) group key of each example (e.g. lesion id); equal keys stay together.
      Give every example its own key for a plain stratified split.
    val_fraction, test_fraction: target shares of each class's images; their sum < 1.
    seed: the split is a deterministic function of (labels, groups, fractions, seed).

  Returns:
    (N,) int64 array of 0/1/2.
  """
  labels = np.asarray(labels, dtype=np.int64).reshape(-1)
  groups = np.asarray(groups, dtype=object).reshape(-1)
  if labels.shape != groups.shape:
    raise ValueError(f"labels ({labels.shape[0]}) and groups ({groups.shape[0]}) differ in "
                     "length.")
  val_fraction, test_fraction = float(val_fraction), float(test_fraction)
  if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1
          and val_fraction + test_fraction < 1):
    raise ValueError(f"val_fraction={val_fraction}, test_fraction={test_fraction}: each must "
                     "be in [0, 1) and their sum below 1.")
  if labels.size and labels.min() < 0:
    raise ValueError("labels must be non-negative integers.")
  n = labels.shape[0]
  out = np.zeros(n, dtype=np.int64)
  if n == 0:
    return out
  # Group keys -> 0..G-1 in order of first appearance (independent of the key type).
  index_of: dict[object, int] = {}
  group_index = np.fromiter((index_of.setdefault(g, len(index_of)) for g in groups.tolist()),
                            dtype=np.int64, count=n)
  num_groups = len(index_of)
  sizes = np.bincount(group_index, minlength=num_groups)
  glabel = group_labels(labels, group_index, num_groups)
  fractions = np.array([1.0 - val_fraction - test_fraction, val_fraction, test_fraction])
  rng = np.random.default_rng(int(seed))
  assignment = np.zeros(num_groups, dtype=np.int64)
  for c in range(int(glabel.max()) + 1):
    members = np.flatnonzero(glabel == c)
    if members.size == 0:
      continue
    # Seeded random order, then largest groups first (stable, so ties keep the random order).
    members = members[rng.permutation(members.size)]
    members = members[np.argsort(-sizes[members], kind="stable")]
    target = fractions * sizes[members].sum()
    filled = np.zeros(3)
    order = list(members)
    # Seed val and test with one group each (the smallest ones, so the big ones balance),
    # when the class has a group for every split that asks for any share.
    wanted = [s for s in (TEST, VAL) if fractions[s] > 0]
    if len(order) >= len(wanted) + 1:
      for s in wanted:
        g = order.pop()  # smallest remaining
        assignment[g] = s
        filled[s] += sizes[g]
    for g in order:
      deficit = np.where(fractions > 0, target - filled, -np.inf)
      s = int(np.argmax(deficit))
      assignment[g] = s
      filled[s] += sizes[g]
  out[:] = assignment[group_index]
  return out


def split_indices(assignment: np.ndarray) -> dict[str, np.ndarray]:
  """{'train': indices, 'val': ..., 'test': ...} (ascending) from a split assignment."""
  assignment = np.asarray(assignment)
  return {name: np.flatnonzero(assignment == k) for k, name in enumerate(SPLIT_NAMES)}


def fit_sizes(assignment: np.ndarray, labels: Sequence[int] | np.ndarray,
              groups: Sequence[object] | np.ndarray, sizes: Sequence[int],
              seed: int = 0) -> np.ndarray:
  """`assignment` with exactly `sizes` (train, val, test) images, groups kept whole.

  A grouped split lands a few images off its targets. This moves single-image groups of
  the most common label (the moves that change class proportions least) from splits over
  their size to splits under it, in a seeded order. Raises ValueError when `sizes` do not
  add up to the number of examples or there are too few such groups to move."""
  out = np.asarray(assignment, dtype=np.int64).copy()
  labels = np.asarray(labels, dtype=np.int64).reshape(-1)
  keys = np.asarray(groups, dtype=object).reshape(-1)
  sizes = np.asarray(sizes, dtype=np.int64)
  if sizes.sum() != out.size:
    raise ValueError(f"sizes {sizes.tolist()} add up to {sizes.sum()}, not {out.size}.")
  _, group_index, group_size = np.unique(keys.astype(str), return_inverse=True,
                                         return_counts=True)
  single = group_size[group_index.reshape(-1)] == 1
  common = np.bincount(labels).argmax()
  movable = np.flatnonzero(single & (labels == common))
  movable = movable[np.random.default_rng(int(seed)).permutation(movable.size)]
  have = np.bincount(out, minlength=len(sizes))
  for i in movable:
    over = have - sizes
    if not over.any():
      break
    src = int(out[i])
    if over[src] > 0:
      dst = int(np.argmin(over))
      out[i] = dst
      have[src] -= 1
      have[dst] += 1
  if (have != sizes).any():
    raise ValueError(f"cannot reach split sizes {sizes.tolist()} (have {have.tolist()}) by "
                     "moving single-image groups of the most common label.")
  return out
