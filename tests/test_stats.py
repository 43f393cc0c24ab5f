"""Tests of derm_jax.stats: bootstrap intervals, paired differences, ECE, majority check, PCA."""

from __future__ import annotations

import numpy as np
import pytest

from derm_jax import metrics, stats


def _probs(labels, k, signal, rng):
  logits = rng.normal(size=(labels.shape[0], k))
  logits[np.arange(labels.shape[0]), labels] += signal
  p = np.exp(logits)
  return p / p.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  k = 4
  labels = rng.choice(k, size=400, p=[0.1, 0.2, 0.1, 0.6])
  return labels, k, _probs(labels, k, 3.0, rng), _probs(labels, k, 0.3, rng)


@pytest.mark.parametrize("name", stats.BUILTIN_METRICS)
def test_builtin_metrics_equal_classification_metrics(data, name):
  labels, k, good, _ = data
  want = metrics.classification_metrics(labels, good, k)[name]
  assert stats.metric_value(labels, good, name) == pytest.approx(want, abs=1e-12)
  # A resample with repeated images: weighted metric == metric of the materialised resample.
  idx = np.random.default_rng(3).integers(0, labels.shape[0], size=labels.shape[0])
  want = metrics.classification_metrics(labels[idx], good[idx], k)[name]
  assert stats.metric_value(labels[idx], good[idx], name) == pytest.approx(want, abs=1e-12)
  vals_builtin = stats.bootstrap_values(labels, good, name, n_boot=20, seed=5)
  vals_callable = stats.bootstrap_values(
    labels, good, lambda y, p: metrics.classification_metrics(y, p, k)[name], n_boot=20, seed=5
  )
  np.testing.assert_allclose(vals_builtin, vals_callable, atol=1e-12)


def test_macro_auc_pair_matrix_and_sort_paths_agree(data, monkeypatch):
  labels, _, good, _ = data
  tied = np.round(good, 1)  # many tied scores
  for p in (good, tied):
    fast = stats.bootstrap_values(labels, p, "macro_auc", n_boot=50, seed=2)
    monkeypatch.setattr(metrics, "AUC_PAIR_MATRIX_MAX", 0)
    slow = stats.bootstrap_values(labels, p, "macro_auc", n_boot=50, seed=2)
    monkeypatch.undo()
    np.testing.assert_allclose(fast, slow, atol=1e-12)


def _scored(correct, k=2, rng=None):
  """(labels, probs) of a classifier that is right exactly where `correct` is true."""
  rng = rng or np.random.default_rng(0)
  correct = np.asarray(correct, bool)
  labels = rng.integers(0, k, size=correct.shape[0])
  pred = np.where(correct, labels, (labels + 1) % k)
  probs = np.full((correct.shape[0], k), 0.1 / (k - 1))
  probs[np.arange(correct.shape[0]), pred] = 0.9
  return labels, probs


def test_bootstrap_ci_is_reproducible(data):
  labels, _, good, _ = data
  est, lo, hi = stats.bootstrap_ci(labels, good, "balanced_accuracy", n_boot=500, seed=1)
  assert lo < est < hi and 0.0 <= lo and hi <= 1.0
  assert stats.bootstrap_ci(labels, good, "balanced_accuracy", n_boot=500, seed=1) == (est, lo, hi)
  assert stats.bootstrap_ci(labels, good, "balanced_accuracy", n_boot=500, seed=2) != (est, lo, hi)


def test_bootstrap_width_matches_the_normal_approximation():
  """Accuracy of n = 5000 Bernoulli(0.7) outcomes: the 95% interval's half-width is
  1.96 sqrt(p (1 - p) / n) (about 0.0127), and the interval is centred on the estimate."""
  rng = np.random.default_rng(11)
  n = 5000
  labels, probs = _scored(rng.random(n) < 0.7, rng=rng)
  est, lo, hi = stats.bootstrap_ci(labels, probs, "accuracy", n_boot=2000, seed=0)
  p = float(np.mean(np.argmax(probs, axis=1) == labels))
  assert est == pytest.approx(p)
  want = 1.96 * np.sqrt(p * (1 - p) / n)
  assert (hi - lo) / 2 == pytest.approx(want, rel=0.10)
  assert (lo + hi) / 2 == pytest.approx(p, abs=0.15 * want)


def test_bootstrap_coverage_on_simulated_test_sets():
  """200 simulated test sets of 200 images from a classifier whose true accuracy is 0.7 (and a
  second one at 0.6, scored on the same images): the 95% interval of the accuracy, and the
  paired interval of the difference, cover the true value (0.7; 0.1) in 90-99% of the sets."""
  rng = np.random.default_rng(2024)
  n, sets = 200, 200
  cover_acc = cover_diff = 0
  for i in range(sets):
    u = rng.random(n)
    labels, pa = _scored(u < 0.7, rng=rng)
    # the second classifier: right on a random 6/7 of the first one's right images, so
    # P(right) = 0.6 and the two are correlated, as two arms on the same images are.
    right_b = (u < 0.7) & (rng.random(n) < 6 / 7)
    pred_b = np.where(right_b, labels, (labels + 1) % 2)
    pb = np.full((n, 2), 0.1)
    pb[np.arange(n), pred_b] = 0.9
    _, lo, hi = stats.bootstrap_ci(labels, pa, "accuracy", n_boot=400, seed=i)
    cover_acc += lo <= 0.7 <= hi
    _, lo, hi = stats.paired_bootstrap_diff(labels, pa, pb, "accuracy", n_boot=400, seed=i)
    cover_diff += lo <= 0.1 <= hi
  assert 0.90 <= cover_acc / sets <= 0.99, cover_acc
  assert 0.90 <= cover_diff / sets <= 0.99, cover_diff


def test_paired_diff_detects_planted_difference(data):
  labels, _, good, bad = data
  for name in ("accuracy", "balanced_accuracy", "macro_auc"):
    d = stats.paired_bootstrap_diff(labels, good, bad, name, n_boot=500)
    assert d.estimate > 0 and d.lo > 0, (name, d)
    assert d.excludes_zero()


def test_paired_diff_identical_arms_contains_zero(data):
  labels, _, good, _ = data
  d = stats.paired_bootstrap_diff(labels, good, good.copy(), "balanced_accuracy", n_boot=300)
  assert d == (0.0, 0.0, 0.0) and not d.excludes_zero()
  # Two equally good but different arms: no difference detectable.
  rng = np.random.default_rng(9)
  other = _probs(labels, good.shape[1], 3.0, rng)
  d = stats.paired_bootstrap_diff(labels, good, other, "balanced_accuracy", n_boot=500)
  assert d.lo < 0 < d.hi


def test_seed_axis_pools_runs():
  """Two runs (seeds) scored on the same images: the statistic is the mean of their accuracies
  on each resample of the images, drawn once for both runs. Its spread is then that of the
  per-image mean correctness (c1 + c2) / 2; resampling each run's images separately would give
  the narrower sqrt(var c1 + var c2) / 2, which this test tells apart."""
  rng = np.random.default_rng(5)
  n = 4000
  c1 = rng.random(n) < 0.75
  c2 = np.where(rng.random(n) < 0.15, ~c1, c1)  # the second seed agrees on 85% of images
  labels = rng.integers(0, 2, size=n)
  runs = []
  for c in (c1, c2):
    pred = np.where(c, labels, 1 - labels)
    p = np.full((n, 2), 0.2)
    p[np.arange(n), pred] = 0.8
    runs.append(p)
  both = np.stack(runs)
  est, lo, hi = stats.bootstrap_ci(labels, both, "accuracy", n_boot=2000, seed=0)
  assert est == pytest.approx((c1.mean() + c2.mean()) / 2)
  pooled = 1.96 * np.std((c1.astype(float) + c2) / 2) / np.sqrt(n)
  separate = 1.96 * np.sqrt(c1.var() + c2.var()) / 2 / np.sqrt(n)
  assert pooled > 1.2 * separate  # the two expectations are far enough apart to tell
  assert (hi - lo) / 2 == pytest.approx(pooled, rel=0.08)
  # Identical seeds add nothing: the interval is that of one run.
  assert stats.bootstrap_ci(labels, np.stack([runs[0], runs[0]]), "accuracy", n_boot=300) == (
    stats.bootstrap_ci(labels, runs[0], "accuracy", n_boot=300)
  )
  # Paired over seeds: seed s of A with seed s of B, one resample of the images for all four.
  d = stats.paired_bootstrap_diff(labels, both, both[::-1], "accuracy", n_boot=2000, seed=0)
  assert d.estimate == pytest.approx(0.0, abs=1e-12) and d.lo == pytest.approx(-d.hi, abs=1e-12)
  other = np.stack([runs[1], np.roll(runs[0], 1, axis=0)])  # another arm, same images
  d = stats.paired_bootstrap_diff(labels, both, other, "accuracy", n_boot=2000, seed=0)

  def right(p):
    return (np.argmax(p, axis=1) == labels).astype(float)

  per_image = ((right(both[0]) - right(other[0])) + (right(both[1]) - right(other[1]))) / 2
  assert d.estimate == pytest.approx(per_image.mean())
  assert (d.hi - d.lo) / 2 == pytest.approx(1.96 * per_image.std() / np.sqrt(n), rel=0.08)


def test_bootstrap_is_fast_enough():
  import time

  rng = np.random.default_rng(0)
  labels = rng.integers(0, 7, size=2000)
  p = _probs(labels, 7, 1.0, rng)
  t = time.perf_counter()
  for name in ("accuracy", "balanced_accuracy", "macro_f1"):
    stats.bootstrap_ci(labels, p, name, n_boot=2000)
  assert time.perf_counter() - t < 10.0


def test_ece_hand_computed():
  # 3 bins: (0, 1/3], (1/3, 2/3], (2/3, 1]. Top-label confidences 0.9, 0.8, 0.6, 0.5, 0.2 (the
  # last is in bin 1 only via a 3-class flat-ish row: max prob 0.4 -> bin 2).
  probs = np.array(
    [
      [0.9, 0.1, 0.0],  # conf 0.9, pred 0, label 0: correct
      [0.2, 0.8, 0.0],  # conf 0.8, pred 1, label 0: wrong
      [0.6, 0.4, 0.0],  # conf 0.6, pred 0, label 0: correct
      [0.5, 0.3, 0.2],  # conf 0.5, pred 0, label 2: wrong
      [0.3, 0.3, 0.4],
    ]
  )  # conf 0.4, pred 2, label 2: correct
  labels = np.array([0, 0, 0, 2, 2])
  bins = stats.reliability_bins(labels, probs, n_bins=3)
  np.testing.assert_array_equal(bins.count, [0, 3, 2])
  np.testing.assert_allclose(bins.confidence[1:], [(0.6 + 0.5 + 0.4) / 3, 0.85])
  np.testing.assert_allclose(bins.accuracy[1:], [2 / 3, 0.5])
  assert np.isnan(bins.confidence[0]) and np.isnan(bins.accuracy[0])
  # ECE = 3/5 |2/3 - 0.5| + 2/5 |0.5 - 0.85| = 0.1 + 0.14 = 0.24
  assert stats.expected_calibration_error(labels, probs, n_bins=3) == pytest.approx(0.24)
  # Perfectly confident and right: ECE 0.
  assert stats.expected_calibration_error([0, 1], np.eye(2)) == pytest.approx(0.0)


def test_majority_check_flags_constant_arm_not_good_arm(data):
  labels, k, good, _ = data
  majority = int(np.argmax(np.bincount(labels)))
  always = np.full_like(good, 0.02)
  always[:, majority] = 1.0 - 0.02 * (k - 1)
  c = stats.indistinguishable_from_majority(labels, always, majority, n_boot=300)
  assert (
    c.indistinguishable and c.majority_fraction == 1.0 and "majority class for 100.0%" in c.reason
  )
  c = stats.indistinguishable_from_majority(labels, good, majority, n_boot=300)
  assert not c.indistinguishable and c.balanced_accuracy_diff.lo > 0
  # An arm that rarely leaves the majority class, at random: interval includes 0 -> flagged.
  rng = np.random.default_rng(2)
  noisy = always.copy()
  flip = rng.random(labels.shape[0]) < 0.1
  noisy[flip] = rng.random((flip.sum(), k))
  c = stats.indistinguishable_from_majority(labels, noisy, majority, n_boot=300)
  assert c.indistinguishable and c.balanced_accuracy_diff.lo <= 0


def test_pca_2d():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(200, 2)) * [5.0, 1.0]
  rot = np.linalg.qr(rng.normal(size=(6, 6)))[0]
  x = np.c_[z, 0.01 * rng.normal(size=(200, 4))] @ rot.T + 3.0
  y, ratio = stats.pca_2d(x, return_variance=True)
  assert y.shape == (200, 2) and ratio[0] > 0.9 and ratio.sum() > 0.99
  np.testing.assert_allclose(np.abs(np.corrcoef(y[:, 0], z[:, 0])[0, 1]), 1.0, atol=1e-3)
  np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-9)
  np.testing.assert_array_equal(stats.pca_2d(x), y)  # deterministic signs
  assert stats.pca_2d(np.ones((1, 3))).shape == (1, 2)


def test_majority_check_flags_an_arm_worse_than_constant():
  # Balanced accuracy 0 (every image predicted as a wrong class) vs 1/2 for the constant predictor.
  labels = np.array([0] * 30 + [1] * 30)
  probs = np.zeros((60, 2))
  probs[:30, 1] = 1.0
  probs[30:, 0] = 1.0
  c = stats.indistinguishable_from_majority(labels, probs, 0, n_boot=200)
  assert c.indistinguishable and c.balanced_accuracy_diff.hi < 0
  assert "worse than the constant predictor" in c.reason
