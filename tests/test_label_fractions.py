"""Tests for the label-efficiency subsets (derm_jax/data/label_fractions.py): stratified,
seeded and nested across fractions."""

import re

import numpy as np
import pytest

from derm_jax.data import label_fractions as lf

# An imbalanced split like HAM10000's: class sizes 2000, 500, 120, 30, 7, 1 (class 6 absent).
SIZES = [2000, 500, 120, 30, 7, 1]
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(6), SIZES))


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.25, 0.5])
def test_stratified_with_at_least_one_per_class(fraction):
  idx = lf.fraction_indices(LABELS, fraction, seed=0)
  assert idx.dtype == np.int64 and (np.diff(idx) > 0).all()  # sorted, no duplicates
  counts = np.bincount(LABELS[idx], minlength=7)
  for c, size in enumerate(SIZES):
    assert counts[c] >= 1
    assert abs(counts[c] - fraction * size) <= 0.5 or (counts[c] == 1 and fraction * size < 1)
  assert counts[6] == 0


def test_seeded():
  a = lf.fraction_indices(LABELS, 0.1, seed=3)
  np.testing.assert_array_equal(a, lf.fraction_indices(LABELS, 0.1, seed=3))
  b = lf.fraction_indices(LABELS, 0.1, seed=4)
  assert len(a) == len(b) and not np.array_equal(a, b)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_nested_across_fractions(seed):
  fractions = [0.01, 0.02, 0.05, 0.1, 0.3, 0.5, 1.0]
  subsets = [set(lf.fraction_indices(LABELS, f, seed).tolist()) for f in fractions]
  for small, big in zip(subsets, subsets[1:], strict=False):
    assert small <= big and len(small) < len(big)


def test_fraction_one_is_everything():
  np.testing.assert_array_equal(lf.fraction_indices(LABELS, 1.0, seed=5), np.arange(len(LABELS)))
  np.testing.assert_array_equal(lf.fraction_indices(LABELS, 1, seed=5), np.arange(len(LABELS)))


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), "0.1", None, True])
def test_bad_fractions_are_refused(bad):
  with pytest.raises(ValueError, match=re.escape(f"fraction={bad!r}")):
    lf.fraction_indices(LABELS, bad, seed=0)


def test_bad_labels_are_refused():
  with pytest.raises(ValueError, match="non-negative"):
    lf.fraction_indices(np.array([0, -1, 2]), 0.5, seed=0)
  with pytest.raises(ValueError, match="1-D"):
    lf.fraction_indices(np.zeros((2, 2), int), 0.5, seed=0)
