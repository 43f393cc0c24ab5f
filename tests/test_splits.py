"""Tests for the lesion-grouped, class-stratified split (derm_jax/data/splits.py)."""

from __future__ import annotations

import numpy as np
import pytest

from derm_jax.data import splits


def synthetic(seed: int, num_lesions: int = 600, num_classes: int = 7):
  """Lesions with 1-6 images each, imbalanced classes (like HAM10000: many nv)."""
  rng = np.random.default_rng(seed)
  p = np.array([0.04, 0.05, 0.11, 0.02, 0.11, 0.65, 0.02])[:num_classes]
  lesion_class = rng.choice(num_classes, size=num_lesions, p=p / p.sum())
  sizes = rng.choice([1, 1, 1, 2, 2, 3, 4, 6], size=num_lesions)
  groups = np.repeat([f"L{i}" for i in range(num_lesions)], sizes)
  labels = np.repeat(lesion_class, sizes)
  order = rng.permutation(len(labels))  # rows of a lesion are not contiguous in a CSV
  return labels[order], groups[order]


@pytest.mark.parametrize("seed", range(8))
def test_no_group_in_two_splits_and_fractions(seed):
  labels, groups = synthetic(seed)
  a = splits.grouped_stratified_split(labels, groups, 0.1, 0.2, seed=seed)
  assert a.shape == labels.shape and set(np.unique(a)) <= {0, 1, 2}
  for g in np.unique(groups):
    assert len(set(a[groups == g].tolist())) == 1, g
  for c in range(7):
    n = (labels == c).sum()
    for k, frac in ((0, 0.7), (1, 0.1), (2, 0.2)):
      got = ((labels == c) & (a == k)).sum()
      assert got >= 1  # every split has every class
      # Whole groups of <= 6 images: within a group's size (+1 for the seeding) of target.
      assert abs(got - frac * n) <= 7, (c, k, got, frac * n)


def test_deterministic_given_seed_and_seed_changes_split():
  labels, groups = synthetic(0)
  a = splits.grouped_stratified_split(labels, groups, 0.1, 0.2, seed=3)
  b = splits.grouped_stratified_split(labels.copy(), list(groups), 0.1, 0.2, seed=3)
  c = splits.grouped_stratified_split(labels, groups, 0.1, 0.2, seed=4)
  np.testing.assert_array_equal(a, b)
  assert (a != c).mean() > 0.1


def test_ungrouped_and_mixed_label_groups():
  labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 0, 1, 2] * 5)
  ids = np.arange(len(labels))  # each image its own group: plain stratified split
  a = splits.grouped_stratified_split(labels, ids, 0.2, 0.2, seed=0)
  for c in range(3):
    assert set(a[labels == c].tolist()) == {0, 1, 2}
  # A group whose images disagree stays whole; its label is the majority one.
  gi = np.array([0, 0, 0])
  np.testing.assert_array_equal(splits.group_labels(np.array([2, 1, 2]), gi, 1), [2])
  # Tie: the rarer class overall wins.
  np.testing.assert_array_equal(
      splits.group_labels(np.array([0, 1, 1, 1, 0]), np.array([0, 0, 1, 1, 2]), 3)[0], 0)


def test_class_with_too_few_groups_goes_where_it_can():
  labels = np.array([0] * 30 + [1])
  a = splits.grouped_stratified_split(labels, np.arange(31), 0.1, 0.2, seed=0)
  assert a[-1] == 0  # the single group of class 1 trains
  idx = splits.split_indices(a)
  assert sum(len(v) for v in idx.values()) == 31 and list(idx) == ["train", "val", "test"]


def test_bad_arguments():
  with pytest.raises(ValueError, match="length"):
    splits.grouped_stratified_split([0, 1], [0], 0.1, 0.2)
  with pytest.raises(ValueError, match="sum"):
    splits.grouped_stratified_split([0, 1], [0, 1], 0.5, 0.5)
