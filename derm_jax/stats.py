"""Uncertainty and calibration for test predictions, in numpy: bootstrap intervals, ECE, PCA.

  * `bootstrap_ci`: percentile bootstrap interval of a metric over resampled images;
  * `paired_bootstrap_diff`: interval of metric(arm A) - metric(arm B), both arms scored
    on the SAME resampled images in every resample (a paired comparison);
  * `expected_calibration_error` / `reliability_bins`: top-label ECE (Guo et al. 2017);
  * `indistinguishable_from_majority`: is an arm no better than always predicting the
    majority class?
  * `pca_2d`: a 2-D PCA projection (for the VAE latent map).

Metrics. `metric_fn` is either the name of a built-in vectorised metric, 'accuracy',
'balanced_accuracy', 'macro_f1' or 'macro_auc' (same definitions as
`derm_jax.metrics.classification_metrics`: balanced accuracy = mean recall over
the classes present in the (resampled) labels; macro-F1 over all K classes; macro AUC = mean exact
Mann-Whitney one-vs-rest AUC over the classes with positives and negatives), or any
callable f(labels, probs) -> float | None, evaluated resample by resample (slower).
The built-ins score all resamples at once from the multiplicity of each image in each
resample. Measured on the shared 2-core development CPU (load ~9), 2000 resamples of 2000
images, 7 classes: 0.2-0.5 s each for accuracy, balanced accuracy and macro-F1, 1.7-3 s
for macro AUC (computed on all 2000 resamples too, not fewer).

Seeds. `probs` may be (N, K) or (S, N, K): S runs (seeds) scored on the same N images.
With S runs the statistic is the mean over runs of the metric, and each resample draws
one set of images used for every run, so the interval reflects the sampling of test
images for the seed-averaged metric (not the seed-to-seed spread, reported separately).

Intervals are percentile intervals of the resampled statistic; the estimate is the
statistic on the full sample. Resamples where the metric is undefined (e.g. macro AUC
with a single class drawn) are left out. Resample indices depend only on (seed, N,
n_boot), so two calls with the same seed on the same N images resample identically (what
makes differences between arms paired); two different image sets that are to be resampled
independently of each other (e.g. a difference on a shifted set minus the same difference
in distribution) must get different seeds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from derm_jax import metrics

__all__ = [
  "BUILTIN_METRICS",
  "Interval",
  "MajorityCheck",
  "ReliabilityBins",
  "bootstrap_ci",
  "bootstrap_values",
  "expected_calibration_error",
  "indistinguishable_from_majority",
  "interval_from_values",
  "metric_value",
  "paired_bootstrap_diff",
  "pca_2d",
  "reliability_bins",
]

BUILTIN_METRICS = metrics.HEADLINE
# Resamples are scored in chunks holding at most this many (resample, image) weights.
_CHUNK_ELEMENTS = 2_000_000


class Interval(NamedTuple):
  """A point estimate with a (1 - alpha) bootstrap interval; unpacks as (estimate, lo, hi)."""

  estimate: float | None
  lo: float | None
  hi: float | None

  def excludes_zero(self) -> bool:
    return self.lo is not None and self.hi is not None and (self.lo > 0 or self.hi < 0)


# ----------------------------------------------------------------------------- metrics


def _check(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
  labels = np.asarray(labels)
  probs = np.asarray(probs, dtype=np.float64)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D (N,), got shape {labels.shape}")
  if probs.ndim == 2:
    probs = probs[None]
  if probs.ndim != 3 or probs.shape[1] != labels.shape[0]:
    raise ValueError(
      f"probs must be (N, K) or (S, N, K) with N = {labels.shape[0]}, got {probs.shape}"
    )
  k = probs.shape[2]
  labels = labels.astype(np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= k):
    raise ValueError(f"labels must lie in [0, {k})")
  return labels, probs


def metric_value(labels: Any, probs: Any, metric_fn: str | Callable[..., Any]) -> float | None:
  """The metric on the full sample ((N, K) probs), or the mean over runs for (S, N, K)."""
  labels, probs = _check(labels, probs)
  vals = []
  for p in probs:
    if isinstance(metric_fn, str):
      v = float(metrics.weighted_metric(metric_fn, labels, p, np.ones((1, labels.shape[0])))[0])
    else:
      v = metric_fn(labels, p)
      v = float("nan") if v is None else float(v)
    vals.append(v)
  m = float(np.mean(vals))
  return m if np.isfinite(m) else None


def _resample_indices(n: int, n_boot: int, seed: int):
  """Yields index arrays (b, n) covering n_boot resamples; depends only on (n, n_boot, seed)."""
  rng = np.random.default_rng(seed)
  chunk = max(1, min(n_boot, _CHUNK_ELEMENTS // max(n, 1)))
  done = 0
  while done < n_boot:
    b = min(chunk, n_boot - done)
    yield rng.integers(0, n, size=(b, n))
    done += b


def bootstrap_values(
  labels: Any, probs: Any, metric_fn: str | Callable[..., Any], n_boot: int = 2000, seed: int = 0
) -> np.ndarray:
  """(n_boot, S) metric of each run on each resample of the images (NaN where undefined).

  probs (N, K) gives S = 1. The same `seed` and N give the same resamples in every call,
  so two arms' values can be subtracted row by row (a paired bootstrap).
  """
  labels, probs = _check(labels, probs)
  n = labels.shape[0]
  if n == 0:
    raise ValueError("cannot bootstrap zero images")
  out = np.empty((n_boot, probs.shape[0]))
  row = 0
  for idx in _resample_indices(n, n_boot, seed):
    b = idx.shape[0]
    if isinstance(metric_fn, str):
      flat = (np.arange(b)[:, None] * n + idx).reshape(-1)
      w = np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)
      for s, p in enumerate(probs):
        out[row : row + b, s] = metrics.weighted_metric(metric_fn, labels, p, w)
    else:
      for i in range(b):
        for s, p in enumerate(probs):
          v = metric_fn(labels[idx[i]], p[idx[i]])
          out[row + i, s] = np.nan if v is None else float(v)
    row += b
  return out


def _percentiles(values: np.ndarray, alpha: float) -> tuple[float | None, float | None]:
  v = values[np.isfinite(values)]
  if v.size == 0:
    return None, None
  lo, hi = np.percentile(v, [100 * alpha / 2, 100 * (1 - alpha / 2)])
  return float(lo), float(hi)


def interval_from_values(values: Any, estimate: float | None, alpha: float = 0.05) -> Interval:
  """Interval(estimate, lo, hi): the percentile interval of 1-D resampled `values` (NaN ignored).

  For combining `bootstrap_values` outputs yourself, e.g. per-seed paired differences
  `values_a[:, s] - values_b[:, s]` of two calls with the same seed.
  """
  lo, hi = _percentiles(np.asarray(values, dtype=np.float64).reshape(-1), alpha)
  return Interval(estimate, lo, hi)


def bootstrap_ci(
  labels: Any,
  probs: Any,
  metric_fn: str | Callable[..., Any],
  n_boot: int = 2000,
  seed: int = 0,
  alpha: float = 0.05,
) -> Interval:
  """(estimate, lo, hi): the metric and its (1 - alpha) percentile bootstrap interval over images.

  probs (S, N, K): the statistic is the mean over the S runs (see the module docstring).
  """
  est = metric_value(labels, probs, metric_fn)
  vals = bootstrap_values(labels, probs, metric_fn, n_boot, seed)
  with np.errstate(invalid="ignore"):
    stat = np.nanmean(vals, axis=1) if vals.shape[1] > 1 else vals[:, 0]
  lo, hi = _percentiles(stat, alpha)
  return Interval(est, lo, hi)


def paired_bootstrap_diff(
  labels: Any,
  probs_a: Any,
  probs_b: Any,
  metric_fn: str | Callable[..., Any],
  n_boot: int = 2000,
  seed: int = 0,
  alpha: float = 0.05,
) -> Interval:
  """(diff, lo, hi) of metric(a) - metric(b), resampling the same images for both arms.

  probs_a, probs_b: (N, K) of one run each, or (S, N, K) with S runs each (run s of A is
  paired with run s of B, e.g. the same seed); the statistic is then the mean over s of
  metric(A_s) - metric(B_s). The interval containing 0 means no difference is detectable.
  """
  labels, pa = _check(labels, probs_a)
  _, pb = _check(labels, probs_b)
  if pa.shape != pb.shape:
    raise ValueError(f"probs_a and probs_b must have the same shape, got {pa.shape} and {pb.shape}")
  ea, eb = metric_value(labels, pa, metric_fn), metric_value(labels, pb, metric_fn)
  est = None if ea is None or eb is None else ea - eb
  va = bootstrap_values(labels, pa, metric_fn, n_boot, seed)
  vb = bootstrap_values(labels, pb, metric_fn, n_boot, seed)
  with np.errstate(invalid="ignore"):
    diff = np.mean(va - vb, axis=1)
  lo, hi = _percentiles(diff, alpha)
  return Interval(est, lo, hi)


# ----------------------------------------------------------------------------- calibration


@dataclasses.dataclass(frozen=True)
class ReliabilityBins:
  """Reliability-diagram data: equal-width confidence bins (lo, hi] on [0, 1] (the first
  bin also takes confidence 0). confidence / accuracy: mean top-label confidence and
  accuracy of the images in each bin (NaN for an empty bin); count: images per bin."""

  edges: np.ndarray  # (n_bins + 1,)
  confidence: np.ndarray  # (n_bins,)
  accuracy: np.ndarray  # (n_bins,)
  count: np.ndarray  # (n_bins,) int64

  @property
  def ece(self) -> float | None:
    n = int(self.count.sum())
    if n == 0:
      return None
    used = self.count > 0
    gaps = np.abs(self.accuracy[used] - self.confidence[used])
    return float(np.sum(self.count[used] / n * gaps))


def reliability_bins(labels: Any, probs: Any, n_bins: int = 15) -> ReliabilityBins:
  """Top-label reliability data of (N,) labels vs (N, K) probs (or (S, N, K): all runs pooled)."""
  labels, probs = _check(labels, probs)
  if n_bins < 1:
    raise ValueError("n_bins must be >= 1")
  conf = probs.max(axis=2).reshape(-1)
  correct = (np.argmax(probs, axis=2) == labels[None]).reshape(-1).astype(np.float64)
  edges = np.linspace(0.0, 1.0, n_bins + 1)
  # bin m holds confidences in (edges[m], edges[m+1]]: the number of inner edges below conf.
  idx = np.searchsorted(edges[1:-1], conf, side="left")
  count = np.bincount(idx, minlength=n_bins).astype(np.int64)
  with np.errstate(invalid="ignore", divide="ignore"):
    confidence = np.bincount(idx, weights=conf, minlength=n_bins) / count
    accuracy = np.bincount(idx, weights=correct, minlength=n_bins) / count
  return ReliabilityBins(edges=edges, confidence=confidence, accuracy=accuracy, count=count)


def expected_calibration_error(labels: Any, probs: Any, n_bins: int = 15) -> float | None:
  """Top-label ECE = sum_m |B_m|/N |acc(B_m) - conf(B_m)| over equal-width confidence bins
  B_m = ((m-1)/M, m/M] (Guo et al. 2017). None for zero images."""
  return reliability_bins(labels, probs, n_bins).ece


# ----------------------------------------------------------------------------- majority baseline


@dataclasses.dataclass(frozen=True)
class MajorityCheck:
  """Outcome of `indistinguishable_from_majority`.

  indistinguishable: the arm is flagged; reason: a sentence saying why (or why not);
  majority_fraction: share of images predicted as the majority class; balanced_accuracy_diff:
  paired bootstrap interval of balanced accuracy(arm) - balanced accuracy(constant majority).
  """

  indistinguishable: bool
  reason: str
  majority_fraction: float
  balanced_accuracy_diff: Interval


def indistinguishable_from_majority(
  labels: Any,
  probs: Any,
  majority_class: int,
  n_boot: int = 2000,
  seed: int = 0,
  alpha: float = 0.05,
  max_majority_fraction: float = 0.98,
) -> MajorityCheck:
  """Whether predictions are statistically indistinguishable from always predicting the majority.

  Rule (either condition flags the arm):
    1. it predicts the majority class for at least `max_majority_fraction` (98%) of the
       images: a (nearly) constant classifier, whatever its scores; or
    2. the paired bootstrap interval of balanced accuracy(arm) - balanced accuracy(constant
       predictor) has its lower end <= 0: the arm's balanced accuracy cannot be shown to
       exceed the constant predictor's (1 / number of classes present) on these images
       (this includes an arm detectably WORSE than the constant predictor).
  Balanced accuracy is used because plain accuracy rewards the constant predictor on
  imbalanced data (DermaMNIST: about 67% nv).
  """
  labels, p = _check(labels, probs)
  if p.shape[0] != 1:
    raise ValueError("indistinguishable_from_majority takes the (N, K) probs of one run")
  p = p[0]
  n, k = p.shape
  if not 0 <= majority_class < k:
    raise ValueError(f"majority_class must lie in [0, {k})")
  frac = float(np.mean(np.argmax(p, axis=1) == majority_class)) if n else 1.0
  const = np.zeros_like(p)
  const[:, majority_class] = 1.0
  diff = paired_bootstrap_diff(
    labels, p, const, "balanced_accuracy", n_boot=n_boot, seed=seed, alpha=alpha
  )
  pct = f"{100 * frac:.1f}%"
  ci = (
    f"balanced accuracy − constant predictor = {_f(diff.estimate)} [{_f(diff.lo)}, {_f(diff.hi)}]"
  )
  if frac >= max_majority_fraction:
    return MajorityCheck(
      True, f"predicts the majority class for {pct} of images ({ci})", frac, diff
    )
  if diff.lo is None or diff.lo <= 0:
    return MajorityCheck(
      True,
      f"its balanced accuracy is not above the constant predictor's: {ci} "
      + (
        "(the interval is below 0: worse than the constant predictor)"
        if diff.hi is not None and diff.hi < 0
        else "(the interval includes 0)"
      )
      + f"; predicts the majority class for {pct} of images",
      frac,
      diff,
    )
  return MajorityCheck(
    False,
    f"better than the constant predictor: {ci}; predicts the majority class for {pct} of images",
    frac,
    diff,
  )


def _f(x: float | None) -> str:
  return "n/a" if x is None else f"{x:+.3f}"


# ----------------------------------------------------------------------------- PCA


def pca_2d(x: Any, return_variance: bool = False) -> Any:
  """Projects (N, D) data onto its first two principal components -> (N, 2) float64.

  Each component's sign is fixed so that its largest-magnitude loading is positive
  (deterministic output). With D < 2 or N < 2 the missing components are zeros. With
  `return_variance`, returns (projection, explained_variance_ratio (2,)).
  """
  x = np.asarray(x, dtype=np.float64)
  if x.ndim != 2:
    x = x.reshape(x.shape[0], -1)
  n, d = x.shape
  out = np.zeros((n, 2))
  ratio = np.zeros(2)
  if n >= 2 and d >= 1:
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    m = min(2, vt.shape[0])
    comps = vt[:m]
    signs = np.sign(comps[np.arange(m), np.argmax(np.abs(comps), axis=1)])
    signs[signs == 0] = 1.0
    comps = comps * signs[:, None]
    out[:, :m] = xc @ comps.T
    var = s**2
    if var.sum() > 0:
      ratio[:m] = var[:m] / var.sum()
  return (out, ratio) if return_variance else out
