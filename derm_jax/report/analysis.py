"""Numbers behind the report: per-seed summaries over seeds and, per evaluation set, bootstrap
intervals, paired differences between every pair of arms, calibration and majority-class
checks; the change of a paired difference between the test split and a shifted set; the
label-efficiency points (a metric against the fraction of training labels).

Resampling: within one set every arm, seed and metric is scored on the same resamples
(paired); different sets are resampled independently (`bootstrap_seed` gives each set its
own resampling seed). Does not import jax.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from derm_jax import metrics, stats
from derm_jax.evaluation.predictions import Predictions
from derm_jax.report.runs import (
  TEST_SET,
  ArmRuns,
  Condition,
  EvalSet,
  SeedRun,
  arm_pairs,
  arm_sort_key,
  num,
)

# Metrics with bootstrap intervals, in table order, and their plain names.
CI_METRICS = metrics.HEADLINE
# The metrics of the label-efficiency table and figure (and of the fraction runs' intervals).
EFFICIENCY_METRICS = metrics.EFFICIENCY
METRIC_NAMES = {
  "accuracy": "accuracy",
  "balanced_accuracy": "balanced accuracy",
  "macro_f1": "macro-F1",
  "macro_auc": "macro AUC",
}


# ----------------------------------------------------------------------------- per seed


def _pct_change(first: float | None, final: float | None) -> float | None:
  if first is None or final is None or first == 0:
    return None
  return 100.0 * (final - first) / abs(first)


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
  """(mean, sample std or None when fewer than 2 values, n) over the non-None values."""
  v = [x for x in values if x is not None]
  if not v:
    return None, None, 0
  mean = float(np.mean(v))
  std = float(np.std(v, ddof=1)) if len(v) > 1 else None
  return mean, std, len(v)


def seed_summary(run: SeedRun) -> dict[str, Any]:
  h = run.history
  first, final = h[0], h[-1]
  val_accs = [(num(r.get("val/accuracy")), int(r["epoch"])) for r in h]
  val_accs = [(a, e) for a, e in val_accs if a is not None]
  best_acc, best_epoch = max(val_accs, key=lambda t: (t[0], -t[1])) if val_accs else (None, None)
  s: dict[str, Any] = {
    "epochs": int(final["epoch"]),
    "val_loss_first": num(first.get("val/loss")),
    "val_loss_final": num(final.get("val/loss")),
    "val_acc_first": num(first.get("val/accuracy")),
    "val_acc_final": num(final.get("val/accuracy")),
    "val_acc_best": best_acc,
    "best_epoch": best_epoch,
    "gap_acc_final": num(final.get("gap/accuracy")),
    "gap_loss_final": num(final.get("gap/loss")),
    "gap_acc_max": max(
      (g for g in (num(r.get("gap/accuracy")) for r in h) if g is not None), default=None
    ),
  }
  s["val_loss_change"] = _pct_change(s["val_loss_first"], s["val_loss_final"])
  s["val_acc_change"] = _pct_change(s["val_acc_first"], s["val_acc_final"])
  for k in ("loss", "accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
    s[f"test_{k}"] = num(run.test.get(k))
  mb = run.test.get("majority_baseline") or {}
  for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
    s[f"majority_{k}"] = num(mb.get(k))
  return s


def summarize(
  arms: dict[str, ArmRuns],
) -> dict[str, dict[str, tuple[float | None, float | None, int]]]:
  """arm -> quantity -> (mean, std, n) over seeds, for every quantity of `seed_summary`."""
  out = {}
  for name, arm in arms.items():
    per_seed = [seed_summary(r) for r in arm.runs]
    out[name] = {k: mean_std([s[k] for s in per_seed]) for k in per_seed[0]}
  return out


# ----------------------------------------------------------------------------- intervals


@dataclasses.dataclass
class PairDiff:
  """Paired bootstrap differences metric(a) - metric(b) on one evaluation set."""

  pooled: stats.Interval  # mean over the paired seeds
  per_seed: list[tuple[int, stats.Interval]]  # (seed, interval) for each seed both arms ran


@dataclasses.dataclass
class SetAnalysis:
  """Everything the report says about one evaluation set (the test split or an outside set)."""

  name: str
  shifted: bool
  runs: dict[str, list[tuple[int, EvalSet]]]  # arm -> [(seed, evaluation)]
  metrics: tuple[str, ...] = CI_METRICS  # the metrics with intervals
  boot_seed: int = 0  # this set's resampling seed (`bootstrap_seed`)
  class_names: list[str] | None = None
  support: list[int] | None = None  # images per class
  n_images: int | None = None
  ci: dict[str, dict[str, stats.Interval]] = dataclasses.field(
    default_factory=dict
  )  # arm -> metric
  ci_seeds: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # seeds with predictions
  diffs: dict[tuple[str, str], dict[str, PairDiff]] = dataclasses.field(
    default_factory=dict
  )  # (a, b) -> metric -> a − b, every pair in `arm_pairs` order
  # arm -> metric -> (n_boot, seeds) resampled values, in the order of ci_seeds[arm]
  values: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
  # arm -> metric -> per-seed metric on all the set's images, in the order of ci_seeds[arm]
  estimates: dict[str, dict[str, list[float | None]]] = dataclasses.field(default_factory=dict)
  notes: list[str] = dataclasses.field(
    default_factory=list
  )  # why intervals are (partly) unavailable
  majority_class: int | None = None
  majority_note: str | None = None
  majority_checks: dict[str, list[tuple[int, stats.MajorityCheck]]] = dataclasses.field(
    default_factory=dict
  )
  ece: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # arm -> per seed
  reliability: dict[str, stats.ReliabilityBins] = dataclasses.field(default_factory=dict)
  mismatches: list[str] = dataclasses.field(default_factory=list)  # predictions vs metrics file

  @property
  def labelled(self) -> bool:
    """Whether any run scored this set (ground truth known)."""
    return any(
      num(ev.metrics.get("accuracy")) is not None for rs in self.runs.values() for _, ev in rs
    )

  @property
  def label(self) -> str:
    return f"`{self.name}` (shifted)" if self.shifted else "test split (in distribution)"

  @property
  def short_label(self) -> str:
    return f"{self.name}\n(shifted)" if self.shifted else "test split\n(in distribution)"

  def present_classes(self) -> list[int]:
    return [i for i, n in enumerate(self.support or []) if n > 0]


def _first(values: Any) -> Any:
  return next((v for v in values if v), None)


def _majority_class_of(metrics: dict[str, Any]) -> int | None:
  v = (metrics.get("majority_baseline") or {}).get("majority_class")
  return None if v is None or isinstance(v, bool) else int(v)


def _aligned(preds: Predictions, ref: Predictions) -> tuple[np.ndarray, np.ndarray] | None:
  """(labels, probs) of `preds` in the row order of `ref`, or None if the image sets differ."""
  if preds.image_ids == ref.image_ids:
    return preds.labels, preds.probs
  if set(preds.image_ids) != set(ref.image_ids):
    return None
  pos = {i: r for r, i in enumerate(preds.image_ids)}
  order = np.array([pos[i] for i in ref.image_ids])
  return preds.labels[order], preds.probs[order]


def _cm_labels_probs(cm: Any) -> tuple[np.ndarray, np.ndarray] | None:
  """(labels, one-hot probs) reproducing a confusion matrix: enough for accuracy-type metrics."""
  cm = np.asarray(cm, dtype=np.int64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.sum() == 0 or (cm < 0).any():
    return None
  k = cm.shape[0]
  true, pred = np.nonzero(cm)
  counts = cm[true, pred]
  labels = np.repeat(true, counts)
  probs = np.zeros((labels.shape[0], k))
  probs[np.arange(labels.shape[0]), np.repeat(pred, counts)] = 1.0
  return labels, probs


def bootstrap_seed(seed: int, set_name: str) -> int:
  """The resampling seed of one evaluation set: `seed` for the test split, and for an outside
  set a seed derived from (seed, its name), so that different sets are resampled
  independently even when they hold the same number of images."""
  if set_name == TEST_SET:
    return int(seed)
  ss = np.random.SeedSequence([int(seed), zlib.crc32(set_name.encode("utf-8"))])
  return int(ss.generate_state(1)[0])


def _analyse_set(
  name: str,
  runs: dict[str, list[tuple[int, EvalSet]]],
  majority: tuple[int | None, str | None],
  n_boot: int,
  seed: int,
  metrics: Sequence[str] = CI_METRICS,
  calibration: bool = True,
) -> SetAnalysis:
  seed = bootstrap_seed(seed, name)
  sa = SetAnalysis(
    name=name, shifted=name != TEST_SET, runs=runs, metrics=tuple(metrics), boot_seed=seed
  )
  all_evals = [ev for rs in runs.values() for _, ev in rs]
  sa.class_names = _first(ev.metrics.get("class_names") for ev in all_evals)
  support = _first(ev.metrics.get("support") for ev in all_evals)
  sa.support = [int(x) for x in support] if support else None
  n = _first(ev.metrics.get("num_examples") for ev in all_evals)
  sa.n_images = int(n) if n else (int(sum(sa.support)) if sa.support else None)
  own_majority = next(
    (m for m in map(_majority_class_of, (ev.metrics for ev in all_evals)) if m is not None), None
  )
  if own_majority is not None:
    sa.majority_class = own_majority
  else:
    sa.majority_class, sa.majority_note = majority

  # Predictions aligned on one image order, shared by every arm and seed.
  ref = next((ev.predictions for ev in all_evals if ev.predictions is not None), None)
  labels = None
  aligned: dict[str, list[tuple[int, np.ndarray]]] = {}
  for arm, rs in runs.items():
    missing = []
    for s, ev in rs:
      if ev.predictions is None:
        missing.append(f"seed {s}: {ev.note}")
        continue
      if ev.predictions.class_names != ref.class_names:
        missing.append(f"seed {s}: its classes differ from the other runs' predictions")
        continue
      got = _aligned(ev.predictions, ref)
      if got is None:
        missing.append(f"seed {s}: its images differ from those of the other runs' predictions")
        continue
      if labels is None:
        labels = got[0]
      elif not np.array_equal(labels, got[0]):
        missing.append(f"seed {s}: its labels differ from the other runs' for the same images")
        continue
      aligned.setdefault(arm, []).append((s, got[1]))
    if missing:
      sa.notes.append(f"`{arm}` has no interval from " + "; ".join(missing) + ".")
  if labels is not None:
    if sa.support is None:
      k = ref.probs.shape[1]
      sa.support = np.bincount(labels, minlength=k).tolist()
      sa.class_names = sa.class_names or list(ref.class_names)
    sa.n_images = sa.n_images or int(labels.shape[0])

  # Bootstrap values: the same resamples (seed, N) for every arm, seed and metric.
  values, estimates = sa.values, sa.estimates
  for arm, items in aligned.items():
    probs = np.stack([p for _, p in items])
    sa.ci_seeds[arm] = [s for s, _ in items]
    values[arm], estimates[arm], sa.ci[arm] = {}, {}, {}
    for metric in sa.metrics:
      vals = stats.bootstrap_values(labels, probs, metric, n_boot=n_boot, seed=seed)
      est = [stats.metric_value(labels, p, metric) for p in probs]
      values[arm][metric], estimates[arm][metric] = vals, est
      with np.errstate(invalid="ignore"):
        pooled = np.nanmean(vals, axis=1) if vals.shape[1] > 1 else vals[:, 0]
      known = [e for e in est if e is not None]
      sa.ci[arm][metric] = stats.interval_from_values(
        pooled, float(np.mean(known)) if known else None
      )
    # The metrics files must hold the same numbers as the predictions.
    evs = dict(runs[arm])
    for s, p in items:
      ev = evs[s]
      for metric in ("accuracy", "balanced_accuracy"):
        got, want = stats.metric_value(labels, p, metric), num(ev.metrics.get(metric))
        if got is not None and want is not None and abs(got - want) > 1e-6:
          sa.mismatches.append(
            f"`{arm}` seed {s}: {METRIC_NAMES[metric]} {want:.4f} in the metrics file but "
            f"{got:.4f} from the predictions file"
          )
    if calibration and not sa.shifted:
      sa.ece[arm] = [stats.expected_calibration_error(labels, p) for p in probs]
      sa.reliability[arm] = stats.reliability_bins(labels, probs)

  for a, b in arm_pairs(list(runs)):
    if a not in values or b not in values:
      continue
    common = [s for s in sa.ci_seeds[a] if s in sa.ci_seeds[b]]
    if not common:
      continue
    ia = [sa.ci_seeds[a].index(s) for s in common]
    ib = [sa.ci_seeds[b].index(s) for s in common]
    sa.diffs[(a, b)] = {}
    for metric in sa.metrics:
      va, vb = values[a][metric], values[b][metric]
      ea, eb = estimates[a][metric], estimates[b][metric]
      per_seed = []
      for s, ja, jb in zip(common, ia, ib, strict=True):
        est = None if ea[ja] is None or eb[jb] is None else ea[ja] - eb[jb]
        per_seed.append((s, stats.interval_from_values(va[:, ja] - vb[:, jb], est)))
      with np.errstate(invalid="ignore"):
        pooled_vals = np.mean(va[:, ia] - vb[:, ib], axis=1)
      ests = [iv.estimate for _, iv in per_seed if iv.estimate is not None]
      sa.diffs[(a, b)][metric] = PairDiff(
        pooled=stats.interval_from_values(pooled_vals, float(np.mean(ests)) if ests else None),
        per_seed=per_seed,
      )

  # Is any run no better than always predicting the majority class?
  if sa.majority_class is not None:
    for arm, rs in runs.items():
      checks = []
      by_seed = dict(aligned.get(arm, []))
      for s, ev in rs:
        if s in by_seed:
          y, p = labels, by_seed[s]
        else:
          got = (
            _cm_labels_probs(ev.metrics.get("confusion_matrix"))
            if ev.metrics.get("confusion_matrix")
            else None
          )
          if got is None:
            continue
          y, p = got
        if not 0 <= sa.majority_class < p.shape[1]:
          continue
        checks.append(
          (
            s,
            stats.indistinguishable_from_majority(
              y, p, sa.majority_class, n_boot=n_boot, seed=seed
            ),
          )
        )
      sa.majority_checks[arm] = checks
  return sa


def analyse_sets(
  arms: dict[str, ArmRuns],
  n_boot: int = 2000,
  seed: int = 0,
  metrics: Sequence[str] = CI_METRICS,
  test_only: bool = False,
  calibration: bool = True,
) -> dict[str, SetAnalysis]:
  """Intervals, paired differences, calibration and majority checks per evaluation set.

  Keys: TEST_SET ('test') first, then each outside set found under any run's external/
  (none with `test_only`). `metrics`: the metrics given intervals and paired differences;
  `calibration`: whether to compute ECE and reliability bins (test split only).
  """
  names = [TEST_SET]
  if not test_only:
    for arm in arms.values():
      for r in arm.runs:
        names += [n for n in r.evals if n not in names]
  # The train-majority class: recorded in the test metrics; else the most frequent test class.
  tests = [r.test for arm in arms.values() for r in arm.runs]
  recorded = next((m for m in map(_majority_class_of, tests) if m is not None), None)
  if recorded is not None:
    majority: tuple[int | None, str | None] = (recorded, None)
  else:
    support = _first(t.get("support") for t in tests)
    cm = _first(t.get("confusion_matrix") for t in tests)
    counts = support if support else (np.asarray(cm).sum(axis=1).tolist() if cm else None)
    majority = (
      (
        int(np.argmax(counts)),
        (
          "the majority class is not recorded in test_metrics.json; the most "
          "frequent test class is used instead"
        ),
      )
      if counts
      else (None, None)
    )
  out = {}
  for name in names:
    runs = {
      a: [(r.seed, r.evals[name]) for r in arm.runs if name in r.evals] for a, arm in arms.items()
    }
    runs = {a: rs for a, rs in runs.items() if rs}
    out[name] = _analyse_set(name, runs, majority, n_boot, seed, metrics, calibration)
  return out


# ----------------------------------------------------------------------------- under shift


@dataclasses.dataclass
class ShiftChange:
  """How a paired difference `first` − `second` changes from the test split to a shifted set.

  in_distribution / shifted: the paired difference (mean over `seeds`) on each set;
  change: shifted − in_distribution, with the interval of its bootstrap distribution when
  both sets' images are resampled, each set independently of the other.
  """

  first: str
  second: str
  metric: str
  seeds: list[int]
  in_distribution: stats.Interval
  shifted: stats.Interval
  change: stats.Interval


def _pooled_pair(
  sa: SetAnalysis, a: str, b: str, metric: str, seeds: Sequence[int]
) -> tuple[np.ndarray, float | None]:
  """(n_boot,) resampled mean over `seeds` of metric(a) − metric(b) on one set, and its estimate."""
  ia = [sa.ci_seeds[a].index(s) for s in seeds]
  ib = [sa.ci_seeds[b].index(s) for s in seeds]
  va, vb = sa.values[a][metric], sa.values[b][metric]
  ea, eb = sa.estimates[a][metric], sa.estimates[b][metric]
  with np.errstate(invalid="ignore"):
    vals = np.mean(va[:, ia] - vb[:, ib], axis=1)
  ests = [
    ea[i] - eb[j] for i, j in zip(ia, ib, strict=True) if ea[i] is not None and eb[j] is not None
  ]
  return vals, (float(np.mean(ests)) if len(ests) == len(seeds) else None)


def shift_change(
  base: SetAnalysis, shifted: SetAnalysis, a: str, b: str, metric: str = "balanced_accuracy"
) -> ShiftChange | None:
  """The change of a − b from `base` (the test split) to `shifted`, over the seeds both arms
  have predictions for on both sets; None when there are none (or `metric` has no values).

  The two sets' resamples are independent (each set has its own `boot_seed`), so the
  interval of the change reflects the sampling of both sets' images. An answer "changes
  under shift" only when this interval excludes 0: one set's interval excluding 0 beside
  another's containing it is not evidence of a change.
  """
  if base.boot_seed == shifted.boot_seed:
    raise ValueError("the two sets share a resampling seed: their resamples are not independent")
  sas = (base, shifted)
  if any(x not in sa.values or metric not in sa.values[x] for sa in sas for x in (a, b)):
    return None
  seeds = [s for s in base.ci_seeds[a] if all(s in sa.ci_seeds[x] for sa in sas for x in (a, b))]
  if not seeds:
    return None
  v_in, e_in = _pooled_pair(base, a, b, metric, seeds)
  v_out, e_out = _pooled_pair(shifted, a, b, metric, seeds)
  est = None if e_in is None or e_out is None else e_out - e_in
  return ShiftChange(
    first=a,
    second=b,
    metric=metric,
    seeds=seeds,
    in_distribution=stats.interval_from_values(v_in, e_in),
    shifted=stats.interval_from_values(v_out, e_out),
    change=stats.interval_from_values(v_out - v_in, est),
  )


# ----------------------------------------------------------------------------- label efficiency


@dataclasses.dataclass
class EfficiencyPoint:
  """One arm's test metric at one label fraction under one protocol.

  estimate: the metric averaged over the seeds with predictions (over all seeds from the
  metrics files when none has predictions); interval: its 95% bootstrap interval over the
  test images (None without predictions); seeds: the seeds behind the estimate.
  """

  fraction: float
  estimate: float | None
  interval: stats.Interval | None
  seeds: list[int]


def label_efficiency(
  tests: dict[Condition, SetAnalysis], metrics: Sequence[str] = EFFICIENCY_METRICS
) -> dict[str, dict[str, dict[str, list[EfficiencyPoint]]]]:
  """protocol -> arm -> metric -> points in ascending fraction, from each condition's test-split
  analysis (fraction 1.0 is arms/ resp. probes/)."""
  out: dict[str, dict[str, dict[str, list[EfficiencyPoint]]]] = {}
  for cond in sorted(tests, key=lambda c: c.fraction):
    sa = tests[cond]
    for arm, rs in sa.runs.items():
      for metric in metrics:
        iv = sa.ci.get(arm, {}).get(metric)
        if iv is not None:
          point = EfficiencyPoint(cond.fraction, iv.estimate, iv, list(sa.ci_seeds[arm]))
        else:
          vals = [(s, num(ev.metrics.get(metric))) for s, ev in rs]
          vals = [(s, v) for s, v in vals if v is not None]
          point = EfficiencyPoint(
            cond.fraction,
            float(np.mean([v for _, v in vals])) if vals else None,
            None,
            [s for s, _ in vals],
          )
        out.setdefault(cond.protocol, {}).setdefault(arm, {}).setdefault(metric, []).append(point)
  return {p: {a: by[a] for a in sorted(by, key=arm_sort_key)} for p, by in out.items()}
