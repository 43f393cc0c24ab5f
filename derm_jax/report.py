"""Markdown report of a VAE-vs-ImageNet comparison workdir, side by side with the paper.

  python -m derm_jax.report --workdir=DIR [--n_boot=2000]   (or: write_report(DIR) -> DIR/report.md)

Reads the layout written by the comparison training code:

  DIR/config.json                             the study config (data, seeds, arms); optional
  DIR/arms/<arm>/seed_<s>/config.json         the run's full config (data.name, data.source,
                                              freeze_backbone, init.source, ...)
  DIR/arms/<arm>/seed_<s>/metrics.jsonl       one JSON object per epoch ("epoch", "train/loss",
                                              "val/accuracy", "gap/accuracy", ...)
  DIR/arms/<arm>/seed_<s>/test_metrics.json   test metrics, class names, majority baseline
  DIR/arms/<arm>/seed_<s>/test_predictions.csv            per-image test probabilities
                                              (derm_jax.predictions); optional
  DIR/arms/<arm>/seed_<s>/external/<set>/metrics.json     the same metrics on an outside
  DIR/arms/<arm>/seed_<s>/external/<set>/predictions.csv  evaluation set; optional
  DIR/vae/latent_pca.png                      the VAE's latent map; optional

and writes DIR/report.md and DIR/figures/*.png:
the paper's own table (val loss and accuracy first -> final with % change, final
overfitting gap) next to the numbers reported by Matas et al. 2025 (arXiv:2505.16773),
the metrics the paper lacks (test accuracy / balanced accuracy / macro-F1 / macro AUC,
mean +- std over seeds, bootstrap 95% intervals, paired bootstrap differences between the
arms, calibration, majority-class and (DermaMNIST only) MedMNIST v2 reference rows),
per-class test recall, in-distribution vs shifted results when outside sets were
evaluated, warnings for arms no better than the majority class, and a conclusion
computed from the numbers. Does not import jax.

Conventions: "first"/"final" are each run's first and last recorded epoch; every
per-run quantity (including % changes) is computed per seed, then summarised as
mean +- sample std (ddof=1) over seeds; with one seed no std is shown.
Intervals (derm_jax.stats): percentile bootstrap over test images, n_boot resamples; an
arm's interval is that of its metric averaged over its seeds, every resample drawing the
same images for every seed and arm, so differences between arms are paired. Runs without
a predictions file get no interval (the report says so).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from derm_jax import fileio, plots, stats
from derm_jax.metrics import overfitting_gap
from derm_jax.predictions import Predictions, PredictionsError, read_predictions_csv

__all__ = [
  "ArmRuns",
  "EvalSet",
  "ReportError",
  "SeedRun",
  "SetAnalysis",
  "analyse_sets",
  "load_compare_dir",
  "main",
  "summarize",
  "write_report",
]

# Numbers reported in the paper's abstract (see shared NOTES.md). Accuracies in %.
PAPER = {
  "self_supervised": {
    "label": "self-supervised VAE (ConvNeXt-Tiny from scratch)",
    "final_val_loss": "0.110",
    "val_loss_change": "-33.33%",
    "val_acc": "45% → 65%",
    "val_acc_change": "+44.44%",
    "gap": "≈ 0",
  },
  "imagenet": {
    "label": "ImageNet transfer (ConvNeXt-Tiny)",
    "final_val_loss": "0.100",
    "val_loss_change": "-16.67%",
    "val_acc": "≈63% (implied by +19.05%) → 75%, peak 87%",
    "val_acc_change": "+19.05%",
    "gap": "grows to +0.060",
  },
}

# DermaMNIST test-split references (MedMNIST v2; 7 classes, 2,005 test images).
REFERENCES = [
  ("MedMNIST v2 ResNet-18 (28) [reference]", 0.735, 0.917),
  ("MedMNIST v2 ResNet-50 (224) [reference]", 0.731, 0.912),
]
DERMAMNIST_TEST_IMAGES = 2005

_CONFIG_FIELDS = {
  "dataset": ["data.name", "dataset", "dataset_name", "data_name", "tfds_name"],
  "init": ["init.source"],
  "frozen backbone": ["freeze_backbone"],
  "backbone": ["backbone", "backbone_name", "encoder", "arch", "architecture"],
  "image size": ["image_size", "img_size", "resolution", "input_size"],
  "epochs (configured)": ["epochs", "num_epochs", "train_epochs", "classifier_epochs"],
  "batch size": ["batch_size", "global_batch_size"],
  "learning rate": ["learning_rate", "lr"],
}

_SOURCES = {
  "embedded": "the stratified DermaMNIST subset packaged with derm_jax",
  "npz": "a local MedMNIST .npz file",
  "download": "the official MedMNIST download",
}

# Metrics with bootstrap intervals, in table order, and their plain names.
CI_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
METRIC_NAMES = {
  "accuracy": "accuracy",
  "balanced_accuracy": "balanced accuracy",
  "macro_f1": "macro-F1",
  "macro_auc": "macro AUC",
}
TEST_SET = "test"


class ReportError(RuntimeError):
  """A problem with the compare workdir (missing or unreadable file, no runs)."""


@dataclasses.dataclass
class EvalSet:
  """One run's evaluation on one set: its metrics file and (if present and valid) predictions."""

  metrics: dict[str, Any]
  predictions: Predictions | None = None
  note: str | None = None  # why predictions are unavailable


@dataclasses.dataclass
class SeedRun:
  seed: int
  path: str
  config: dict[str, Any]
  history: list[dict[str, Any]]
  test: dict[str, Any]
  evals: dict[str, EvalSet] = dataclasses.field(
    default_factory=dict
  )  # TEST_SET first, then outside sets


@dataclasses.dataclass
class ArmRuns:
  name: str
  runs: list[SeedRun]


# ----------------------------------------------------------------------------- loading


def _read_json(path: str) -> Any:
  if not fileio.isfile(path):
    raise ReportError(f"missing file: {path}")
  try:
    with fileio.open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ReportError(f"cannot read JSON file {path}: {e}") from e


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  if not fileio.isfile(path):
    raise ReportError(f"missing file: {path}")
  rows = []
  with fileio.open(path) as f:
    for i, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      try:
        row = json.loads(line)
      except ValueError as e:
        raise ReportError(f"{path}:{i}: not valid JSON ({e})") from e
      if not isinstance(row, dict):
        raise ReportError(f"{path}:{i}: expected a JSON object per line")
      rows.append(row)
  if not rows:
    raise ReportError(f"no epochs recorded in {path}")
  return rows


def _num(v: Any) -> float | None:
  if v is None or isinstance(v, bool):
    return None
  try:
    x = float(v)
  except (TypeError, ValueError):
    return None
  return x if math.isfinite(x) else None


def _normalize_history(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Sorts by epoch (list position if absent) and fills missing gap keys from train/val."""
  out = []
  for i, row in enumerate(rows):
    row = dict(row)
    row.setdefault("epoch", i + 1)
    gaps = overfitting_gap(
      {"accuracy": _num(row.get("train/accuracy")), "loss": _num(row.get("train/loss"))},
      {"accuracy": _num(row.get("val/accuracy")), "loss": _num(row.get("val/loss"))},
    )
    for k, v in gaps.items():
      if _num(row.get(k)) is None:
        row[k] = v
    out.append(row)
  out.sort(key=lambda r: int(r["epoch"]))
  return out


def _load_eval(metrics: dict[str, Any], pred_path: str) -> EvalSet:
  """An EvalSet with the predictions at `pred_path` when they exist, are valid and match "
  "`metrics`."""
  if not fileio.isfile(pred_path):
    return EvalSet(metrics, None, f"no {fileio.basename(pred_path)}")
  try:
    p = read_predictions_csv(pred_path)
  except PredictionsError as e:
    return EvalSet(metrics, None, f"unreadable predictions file ({e})")
  if p.labels is None:
    return EvalSet(metrics, None, f"{pred_path} has no ground-truth labels")
  names = metrics.get("class_names")
  if names and tuple(names) != p.class_names:
    return EvalSet(
      metrics,
      None,
      f"{pred_path}: classes {list(p.class_names)} differ from the metrics file's {list(names)}",
    )
  if len(p) == 0:
    return EvalSet(metrics, None, f"{pred_path} has no rows")
  return EvalSet(metrics, p, None)


def load_compare_dir(workdir: str) -> dict[str, ArmRuns]:
  """Reads every DIR/arms/<arm>/seed_<s>/ run; raises ReportError naming any missing path.

  Predictions files are optional: a missing or malformed one leaves that run without
  intervals (EvalSet.note says why) rather than failing the report.
  """
  arms_dir = fileio.join(workdir, "arms")
  if not fileio.isdir(arms_dir):
    raise ReportError(f"missing directory: {arms_dir} (expected DIR/arms/<arm>/seed_<s>/)")
  arm_names = sorted(d for d in fileio.listdir(arms_dir)
                     if fileio.isdir(fileio.join(arms_dir, d)))
  if not arm_names:
    raise ReportError(f"no arm directories in {arms_dir}")
  # Conventional order: self-supervised arm first, then ImageNet, then the rest.
  arm_names.sort(key=lambda a: ({"self_supervised": 0, "imagenet": 1}.get(_paper_arm(a), 2), a))
  arms: dict[str, ArmRuns] = {}
  for arm in arm_names:
    arm_dir = fileio.join(arms_dir, arm)
    seeds = []
    for d in fileio.listdir(arm_dir):
      m = re.fullmatch(r"seed_(\d+)", d)
      if m and fileio.isdir(fileio.join(arm_dir, d)):
        seeds.append((int(m.group(1)), fileio.join(arm_dir, d)))
    if not seeds:
      raise ReportError(f"no seed_<s> directories in {arm_dir}")
    runs = []
    for seed, seed_dir in sorted(seeds):
      config = _read_json(fileio.join(seed_dir, "config.json"))
      history = _normalize_history(_read_jsonl(fileio.join(seed_dir, "metrics.jsonl")))
      test = _read_json(fileio.join(seed_dir, "test_metrics.json"))
      if not isinstance(config, dict) or not isinstance(test, dict):
        raise ReportError(f"expected JSON objects in {seed_dir}/config.json and test_metrics.json")
      evals = {TEST_SET: _load_eval(test, fileio.join(seed_dir, "test_predictions.csv"))}
      ext_dir = fileio.join(seed_dir, "external")
      if fileio.isdir(ext_dir):
        for name in sorted(fileio.listdir(ext_dir)):
          set_dir = fileio.join(ext_dir, name)
          if not fileio.isdir(set_dir):
            continue
          m = _read_json(fileio.join(set_dir, "metrics.json"))
          if not isinstance(m, dict):
            raise ReportError(f"expected a JSON object in {set_dir}/metrics.json")
          key = name if name != TEST_SET else f"{name} (external)"
          evals[key] = _load_eval(m, fileio.join(set_dir, "predictions.csv"))
      runs.append(
        SeedRun(seed=seed, path=seed_dir, config=config, history=history, test=test, evals=evals)
      )
    arms[arm] = ArmRuns(name=arm, runs=runs)
  return arms


# ----------------------------------------------------------------------------- numbers


def _paper_arm(name: str) -> str | None:
  n = name.lower()
  if "imagenet" in n or "in1k" in n:
    return "imagenet"
  if any(t in n for t in ("vae", "ssl", "self")):  # not 'scratch': compare.py's random-init arm
    return "self_supervised"
  return None


def _pct_change(first: float | None, final: float | None) -> float | None:
  if first is None or final is None or first == 0:
    return None
  return 100.0 * (final - first) / abs(first)


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
  """(mean, sample std or None when fewer than 2 values, n) over the non-None values."""
  v = [x for x in values if x is not None]
  if not v:
    return None, None, 0
  mean = float(np.mean(v))
  std = float(np.std(v, ddof=1)) if len(v) > 1 else None
  return mean, std, len(v)


def _seed_summary(run: SeedRun) -> dict[str, Any]:
  h = run.history
  first, final = h[0], h[-1]
  val_accs = [(_num(r.get("val/accuracy")), int(r["epoch"])) for r in h]
  val_accs = [(a, e) for a, e in val_accs if a is not None]
  best_acc, best_epoch = max(val_accs, key=lambda t: (t[0], -t[1])) if val_accs else (None, None)
  s: dict[str, Any] = {
    "epochs": int(final["epoch"]),
    "val_loss_first": _num(first.get("val/loss")),
    "val_loss_final": _num(final.get("val/loss")),
    "val_acc_first": _num(first.get("val/accuracy")),
    "val_acc_final": _num(final.get("val/accuracy")),
    "val_acc_best": best_acc,
    "best_epoch": best_epoch,
    "gap_acc_final": _num(final.get("gap/accuracy")),
    "gap_loss_final": _num(final.get("gap/loss")),
    "gap_acc_max": max(
      (g for g in (_num(r.get("gap/accuracy")) for r in h) if g is not None), default=None
    ),
  }
  s["val_loss_change"] = _pct_change(s["val_loss_first"], s["val_loss_final"])
  s["val_acc_change"] = _pct_change(s["val_acc_first"], s["val_acc_final"])
  for k in ("loss", "accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
    s[f"test_{k}"] = _num(run.test.get(k))
  mb = run.test.get("majority_baseline") or {}
  for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
    s[f"majority_{k}"] = _num(mb.get(k))
  return s


def summarize(
  arms: dict[str, ArmRuns],
) -> dict[str, dict[str, tuple[float | None, float | None, int]]]:
  """arm -> quantity -> (mean, std, n) over seeds, for every quantity of `_seed_summary`."""
  out = {}
  for name, arm in arms.items():
    per_seed = [_seed_summary(r) for r in arm.runs]
    out[name] = {k: _mean_std([s[k] for s in per_seed]) for k in per_seed[0]}
  return out


# ----------------------------------------------------------------------------- formatting


def _fmt(
  mean: float | None,
  std: float | None = None,
  digits: int = 3,
  scale: float = 1.0,
  suffix: str = "",
  sign: bool = False,
) -> str:
  if mean is None:
    return "n/a"
  spec = f"{'+' if sign else ''}.{digits}f"
  text = f"{mean * scale:{spec}}"
  if std is not None:
    text += f" ± {std * scale:.{digits}f}"
  return text + suffix


def _fms(ms: tuple[float | None, float | None, int], **kw: Any) -> str:
  return _fmt(ms[0], ms[1], **kw)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
  lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return lines


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  if isinstance(d, dict):
    for k, v in d.items():
      key = f"{prefix}.{k}" if prefix else str(k)
      if isinstance(v, dict):
        out.update(_flatten(v, key))
      else:
        out[key] = v
  return out


def _config_field(flat: dict[str, Any], names: Sequence[str]) -> Any:
  for name in names:
    if "." in name:  # an exact dotted path
      if name in flat:
        return flat[name]
      continue
    hits = [k for k in flat if k.split(".")[-1] == name]
    if hits:
      hits.sort(key=lambda k: (k.count("."), k))  # shallowest first
      return flat[hits[0]]
  return None


def _fmt_value(v: Any) -> str:
  if v is None:
    return "—"
  if isinstance(v, (list, tuple)):
    return (
      "×".join(str(x) for x in v) if all(isinstance(x, (int, float)) for x in v) else json.dumps(v)
    )
  return str(v)


def _safe_name(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _fmt_ci(iv: stats.Interval | None, digits: int = 3, sign: bool = False) -> str:
  """'[lo, hi]' of an interval, 'n/a' without one."""
  if iv is None or iv.lo is None or iv.hi is None:
    return "n/a"
  spec = f"{'+' if sign else ''}.{digits}f"
  return f"[{iv.lo:{spec}}, {iv.hi:{spec}}]"


def _fmt_diff(iv: stats.Interval | None, digits: int = 3) -> str:
  """'+0.050 [+0.010, +0.090]'."""
  if iv is None or iv.estimate is None:
    return "n/a"
  return f"{iv.estimate:+.{digits}f} {_fmt_ci(iv, digits, sign=True)}"


def _int_list(values: Sequence[Any]) -> str:
  """'8' when all equal, else '6/8' (integers, in seed order)."""
  ints = [round(v) for v in values if v is not None]
  if not ints:
    return "n/a"
  return str(ints[0]) if len(set(ints)) == 1 else "/".join(str(v) for v in ints)


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
  class_names: list[str] | None = None
  support: list[int] | None = None  # images per class
  n_images: int | None = None
  ci: dict[str, dict[str, stats.Interval]] = dataclasses.field(
    default_factory=dict
  )  # arm -> metric
  ci_seeds: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # seeds with predictions
  diffs: dict[tuple[str, str], dict[str, PairDiff]] = dataclasses.field(default_factory=dict)
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
      _num(ev.metrics.get("accuracy")) is not None for rs in self.runs.values() for _, ev in rs
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


def _analyse_set(
  name: str,
  runs: dict[str, list[tuple[int, EvalSet]]],
  majority: tuple[int | None, str | None],
  n_boot: int,
  seed: int,
) -> SetAnalysis:
  sa = SetAnalysis(name=name, shifted=name != TEST_SET, runs=runs)
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
  values: dict[str, dict[str, np.ndarray]] = {}
  estimates: dict[str, dict[str, list[float | None]]] = {}
  for arm, items in aligned.items():
    probs = np.stack([p for _, p in items])
    sa.ci_seeds[arm] = [s for s, _ in items]
    values[arm], estimates[arm], sa.ci[arm] = {}, {}, {}
    for metric in CI_METRICS:
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
        got, want = stats.metric_value(labels, p, metric), _num(ev.metrics.get(metric))
        if got is not None and want is not None and abs(got - want) > 1e-6:
          sa.mismatches.append(
            f"`{arm}` seed {s}: {METRIC_NAMES[metric]} {want:.4f} in the metrics file but "
            f"{got:.4f} from the predictions file"
          )
    if not sa.shifted:
      sa.ece[arm] = [stats.expected_calibration_error(labels, p) for p in probs]
      sa.reliability[arm] = stats.reliability_bins(labels, probs)

  arm_names = list(runs)
  for i, a in enumerate(arm_names):
    for b in arm_names[i + 1 :]:
      if a not in values or b not in values:
        continue
      common = [s for s in sa.ci_seeds[a] if s in sa.ci_seeds[b]]
      if not common:
        continue
      ia = [sa.ci_seeds[a].index(s) for s in common]
      ib = [sa.ci_seeds[b].index(s) for s in common]
      sa.diffs[(a, b)] = {}
      for metric in CI_METRICS:
        va, vb = values[a][metric], values[b][metric]
        ea, eb = estimates[a][metric], estimates[b][metric]
        per_seed = []
        for s, ja, jb in zip(common, ia, ib):
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
  arms: dict[str, ArmRuns], n_boot: int = 2000, seed: int = 0
) -> dict[str, SetAnalysis]:
  """Intervals, paired differences, calibration and majority checks per evaluation set.

  Keys: TEST_SET ('test') first, then each outside set found under any run's external/.
  """
  names = [TEST_SET]
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
    out[name] = _analyse_set(name, runs, majority, n_boot, seed)
  return out


# ----------------------------------------------------------------------------- conclusion


def _compare(summary: dict[str, Any], key: str, mode: str) -> dict[str, Any]:
  """Ranks arms on one quantity. mode 'abs_lower' (smaller |mean| wins) or 'higher'."""
  cands = [(a, summary[a][key]) for a in summary if summary[a][key][0] is not None]
  if len(cands) < 2:
    return {"winner": None}
  score = (lambda ms: -abs(ms[0])) if mode == "abs_lower" else (lambda ms: ms[0])
  cands.sort(key=lambda t: score(t[1]), reverse=True)
  (win, wms), (run, rms) = cands[0], cands[1]
  diff = abs(score(wms) - score(rms))
  if diff == 0:
    return {"winner": None, "tie": True, "arms": (win, run)}
  stds = [s for s in (wms[1], rms[1]) if s is not None]
  max_std = max(stds) if len(stds) == 2 else None
  return {
    "winner": win,
    "runner_up": run,
    "win": wms,
    "run": rms,
    "diff": diff,
    "max_std": max_std,
    "exceeds": (diff > max_std) if max_std is not None else None,
  }


def _pair_diff(
  sa: SetAnalysis | None, a: str, b: str, metric: str
) -> tuple[str, str, PairDiff] | None:
  """The paired difference of arms a and b on `metric` as stored (first arm − second), or None."""
  if sa is None:
    return None
  if (a, b) in sa.diffs:
    return a, b, sa.diffs[(a, b)][metric]
  if (b, a) in sa.diffs:
    return b, a, sa.diffs[(b, a)][metric]
  return None


def _interval_verdict(sa: SetAnalysis | None, a: str, b: str, metric: str) -> dict[str, Any] | None:
  """{'winner': arm or None, 'text': '`a` − `b` = +x [lo, hi]', 'detectable': bool} from the pooled
  paired interval, or None when there is no interval."""
  got = _pair_diff(sa, a, b, metric)
  if got is None or got[2].pooled.lo is None or got[2].pooled.estimate is None:
    return None
  first, second, d = got
  iv = d.pooled
  detectable = iv.excludes_zero()
  winner = (first if iv.lo > 0 else second) if detectable else None
  k = len(d.per_seed)
  text = (
    f"`{first}` − `{second}` = {_fmt_diff(iv)} (95% paired bootstrap over {sa.n_images:,} images"
    + (f", mean over {k} paired seeds" if k > 1 else "")
    + ")"
  )
  return {"winner": winner, "detectable": detectable, "text": text}


def _criterion_sentence(label: str, c: dict[str, Any], digits: int, sign: bool, what: str) -> str:
  if c.get("interval") is not None:
    iv = c["interval"]
    if iv["detectable"]:
      return f"- {label}: **`{iv['winner']}`** {what}: {iv['text']}; the interval excludes 0."
    return f"- {label}: no difference detectable: {iv['text']}; the interval contains 0."
  if c.get("winner") is None:
    if c.get("tie"):
      return f"- {label}: tie between `{c['arms'][0]}` and `{c['arms'][1]}`."
    return f"- {label}: not available for two arms."
  text = (
    f"- {label}: **`{c['winner']}`** {what} ({_fms(c['win'], digits=digits, sign=sign)} vs "
    f"`{c['runner_up']}` {_fms(c['run'], digits=digits, sign=sign)}); difference "
    f"{c['diff']:.{digits}f}"
  )
  if c["exceeds"] is None:
    text += ", no seed spread available to judge it."
  elif c["exceeds"]:
    text += f", larger than the seed std (largest {c['max_std']:.{digits}f})."
  else:
    text += (
      f", within the seed std (largest {c['max_std']:.{digits}f}): "
      "not distinguishable from seed noise."
    )
  if c.get("no_interval"):
    text += " (No bootstrap interval: predictions files missing.)"
  return text


def _with_interval(c: dict[str, Any], sa: SetAnalysis | None, metric: str) -> dict[str, Any]:
  """The criterion decided by the paired bootstrap interval of its two best arms, when available."""
  c = dict(c)
  pair = (c["winner"], c["runner_up"]) if c.get("winner") else c.get("arms")
  if pair is None:
    return c
  iv = _interval_verdict(sa, pair[0], pair[1], metric)
  if iv is None:
    c["no_interval"] = True
    return c
  c["interval"] = iv
  c["winner"] = iv["winner"]
  return c


def _conclusion(
  summary: dict[str, Any], n_seeds: dict[str, int], sa: SetAnalysis | None = None
) -> list[str]:
  raw = {
    "gap_acc": _compare(summary, "gap_acc_final", "abs_lower"),
    "gap_loss": _compare(summary, "gap_loss_final", "abs_lower"),
    "ba": _compare(summary, "test_balanced_accuracy", "higher"),
    "auc": _compare(summary, "test_macro_auc", "higher"),
  }
  crit = dict(raw)
  crit["ba"] = _with_interval(raw["ba"], sa, "balanced_accuracy")
  crit["auc"] = _with_interval(raw["auc"], sa, "macro_auc")
  lines = ["## Conclusion (computed from the numbers above)", ""]
  lines.append(
    _criterion_sentence(
      "Final overfitting gap, train − val accuracy (smaller |gap| = less overfitting)",
      crit["gap_acc"],
      3,
      True,
      "overfits less",
    )
  )
  lines.append(
    _criterion_sentence(
      "Final overfitting gap, val − train loss (smaller |gap| = less overfitting)",
      crit["gap_loss"],
      3,
      True,
      "overfits less",
    )
  )
  lines.append(
    _criterion_sentence(
      "Test balanced accuracy (higher is better)", crit["ba"], 3, False, "is higher"
    )
  )
  lines.append(
    _criterion_sentence("Test macro AUC (higher is better)", crit["auc"], 3, False, "is higher")
  )
  lines.append("")

  def common(a: str, b: str) -> str | None:
    wa, wb = crit[a].get("winner"), crit[b].get("winner")
    return wa if wa is not None and wa == wb else None

  gap_w, test_w = common("gap_acc", "gap_loss"), common("ba", "auc")
  undetectable = all(
    crit[c].get("interval") is not None and not crit[c]["interval"]["detectable"]
    for c in ("ba", "auc")
  )
  if gap_w is not None and gap_w == test_w:
    verdict = (
      f"**Overall: `{gap_w}` generalised better on these data**: it has the smaller final "
      "train-validation gap by both definitions and the higher test balanced accuracy and macro "
      "AUC" + (" (both paired intervals exclude 0)." if crit["ba"].get("interval") else ".")
    )
  elif gap_w is not None and test_w is not None:
    verdict = (
      f"**Overall: mixed.** `{gap_w}` overfits less (smaller final gap by both definitions), "
      f"but `{test_w}` scores higher test balanced accuracy and macro AUC."
    )
  elif undetectable:
    verdict = (
      "**Overall: no difference detectable on the test set.** The 95% intervals of the differences "
      "in test balanced accuracy and macro AUC both contain 0; "
      + (
        f"`{gap_w}` overfits less by both gap definitions (a training-curve measure without an "
        "interval)."
        if gap_w
        else "the two gap definitions do not agree on which arm overfits less."
      )
    )
  else:
    parts = []
    parts.append(
      f"`{gap_w}` overfits less by both gap definitions"
      if gap_w
      else "the two gap definitions do not agree on which arm overfits less"
    )
    parts.append(
      f"`{test_w}` is better on the test set by both balanced accuracy and AUC"
      if test_w
      else "test balanced accuracy and AUC do not agree on a better arm (or a difference is not "
      "detectable)"
    )
    text = "; ".join(parts)
    verdict = "**Overall: inconclusive.** " + text[:1].upper() + text[1:] + "."
  lines.append(verdict)
  lines.append("")
  flagged = [
    a
    for a, checks in (sa.majority_checks if sa else {}).items()
    if any(c.indistinguishable for _, c in checks)
  ]
  if flagged:
    lines.append(
      "Caution: "
      + ", ".join(f"`{a}`" for a in flagged)
      + (" is" if len(flagged) == 1 else " are")
      + " statistically indistinguishable from (or worse than) always predicting the majority "
      "class on the test "
      "split for at least one seed (see Warnings): such an arm has learnt little, whatever its "
      "accuracy or overfitting gap."
    )
    lines.append("")

  if min(n_seeds.values()) < 2:
    lines.append(
      "With one seed per arm (for at least one arm) no seed-to-seed spread can be estimated, so it "
      "cannot be said whether these differences exceed run-to-run noise; run more seeds."
    )
  else:
    decided = [c for c in raw.values() if c.get("winner") is not None]
    n_exc = sum(bool(c["exceeds"]) for c in decided)
    n = ", ".join(f"{a}: {k}" for a, k in n_seeds.items())
    lines.append(
      f"{n_exc} of {len(decided)} of these differences exceed the larger of the two arms' seed "
      f"standard deviations (seeds per arm: {n}). This is a rough spread check, not a significance "
      "test."
    )
  lines.append("")

  # The paper's direction, where the arm names map onto the paper's arms.
  paper_arms = {_paper_arm(a): a for a in summary}
  ssl, inet = paper_arms.get("self_supervised"), paper_arms.get("imagenet")
  if ssl and inet:
    ga, gi = summary[ssl]["gap_acc_final"][0], summary[inet]["gap_acc_final"][0]
    if ga is not None and gi is not None:
      agree = abs(ga) < abs(gi)
      lines.append(
        f"The paper reports that the self-supervised arm overfits less (gap ≈ 0 vs +0.060 for "
        f"ImageNet). Here, by the accuracy gap, `{ssl}` {_fmt(ga, sign=True)} vs `{inet}` "
        f"{_fmt(gi, sign=True)}: the paper's direction is "
        f"{'reproduced' if agree else 'not reproduced'}."
      )
      lines.append("")
    aa, ai = summary[ssl]["val_acc_final"][0], summary[inet]["val_acc_final"][0]
    if aa is not None and ai is not None:
      direction = "same direction" if ai > aa else ("equal" if ai == aa else "opposite direction")
      lines.append(
        f"The paper's ImageNet arm ends with the higher validation accuracy (75% vs 65%). Here "
        f"`{inet}` {_fmt(ai, scale=100, digits=1, suffix='%')} vs `{ssl}` "
        f"{_fmt(aa, scale=100, digits=1, suffix='%')}: {direction}."
      )
    lines.append("")
  return lines


# ----------------------------------------------------------------------------- data and setup


def _dataset_display(name: str | None) -> str:
  return (
    {"dermamnist": "DermaMNIST"}.get(str(name).lower(), str(name)) if name else "an unnamed dataset"
  )


def _data_config(arm: ArmRuns, top: dict[str, Any]) -> dict[str, Any]:
  """name, source, size, npz_path and split sizes of an arm's data (its config, else the study "
  "config)."""
  flat = _flatten(arm.runs[0].config)
  top_flat = _flatten(top)

  def get(names: Sequence[str]) -> Any:
    v = _config_field(flat, names)
    return v if v is not None else _config_field(top_flat, names)

  # Split sizes: the config's data.splits, else the dataset description an evaluator stores in
  # test_metrics.json ("data": {"name", "source", "splits": {split: n}, ...}).
  described = (
    _flatten({"data": arm.runs[0].test.get("data")})
    if isinstance(arm.runs[0].test.get("data"), dict)
    else {}
  )
  splits = {}
  for src in (described, flat):
    splits.update(
      {
        k.split(".")[-1]: v
        for k, v in src.items()
        if k.startswith("data.splits.") and isinstance(v, int) and not isinstance(v, bool)
      }
    )

  def get_or_described(names: Sequence[str], key: str) -> Any:
    v = get(names)
    return v if v is not None else described.get(f"data.{key}")

  return {
    "name": get_or_described(_CONFIG_FIELDS["dataset"], "name"),
    "source": get_or_described(["data.source"], "source"),
    "size": get(["data.size"]),
    "npz_path": get(["data.npz_path"]),
    "splits": splits,
  }


def _training_mode(arm: ArmRuns) -> tuple[bool | None, str]:
  """(frozen?, wording) from the arm's freeze_backbone entry."""
  v = _config_field(_flatten(arm.runs[0].config), _CONFIG_FIELDS["frozen backbone"])
  if isinstance(v, str):
    v = {"true": True, "false": False}.get(v.lower())
  if v is True:
    return True, "frozen backbone (only the classifier head is trained)"
  if v is False:
    return False, "fine-tuned backbone (trained end to end together with the head)"
  return None, "backbone training mode not recorded (no `freeze_backbone` in config.json)"


def _data_lines(
  arms: dict[str, ArmRuns], top: dict[str, Any], sa: SetAnalysis
) -> tuple[list[str], bool]:
  """The 'Data' paragraph and whether every arm uses DermaMNIST."""
  infos = {a: _data_config(arm, top) for a, arm in arms.items()}

  def describe(info: dict[str, Any]) -> str:
    name = info["name"]
    text = (
      f"**{_dataset_display(name)}** (`data.name` = `{name}`)"
      if name
      else "a dataset whose name the config does not record (no `data.name`)"
    )
    src = info["source"]
    if src:
      text += f", source `{src}`" + (f" ({_SOURCES[src]}" if src in _SOURCES else "")
      if src == "download" and info["size"]:
        text += f", {info['size']}×{info['size']} pixels"
      if src == "npz" and info["npz_path"]:
        text += f": `{info['npz_path']}`"
      text += ")" if src in _SOURCES else ""
    sizes = dict(info["splits"])
    from_metrics = "test" not in sizes and bool(sa.n_images)
    if from_metrics:
      sizes["test"] = sa.n_images
    if sizes:
      text += "; images per split: " + ", ".join(f"{k} {v:,}" for k, v in sizes.items())
      if from_metrics:
        text += " (test count from test_metrics.json)"
    return text

  keys = {
    json.dumps({k: v for k, v in i.items()}, sort_keys=True, default=str) for i in infos.values()
  }
  lines = []
  if len(keys) == 1:
    lines.append("Data: " + describe(next(iter(infos.values()))) + ". All arms use the same data.")
  else:
    lines.append("Data (the arms' configs differ!):")
    lines.append("")
    lines += [f"- `{a}`: {describe(i)}" for a, i in infos.items()]
  lines.append("")
  if sa.support and sa.class_names and len(sa.support) == len(sa.class_names):
    lines.append(
      "Test images per class: "
      + ", ".join(
        f"{c} ({plots.describe_class(c)}) {n:,}" for c, n in zip(sa.class_names, sa.support)
      )
      + "."
    )
    lines.append("")
  derma = all(str(i["name"] or "").lower() == "dermamnist" for i in infos.values())
  return lines, derma


def _reference_sentence(
  arms: dict[str, ArmRuns], top: dict[str, Any], sa: SetAnalysis, derma: bool
) -> str:
  if not derma:
    names = sorted({str(_data_config(arm, top)["name"]) for arm in arms.values()})
    if names == ["None"]:
      return (
        "No published reference numbers are shown: the runs' configs do not name their dataset "
        "(`data.name`), and the MedMNIST v2 numbers apply to DermaMNIST only."
      )
    return (
      "No published reference numbers are shown: the MedMNIST v2 numbers are for DermaMNIST, and "
      "this "
      f"run's data are {', '.join(f'`{n}`' for n in names)}."
    )
  text = (
    "The MedMNIST v2 rows are published DermaMNIST test-split numbers (7 classes, "
    f"{DERMAMNIST_TEST_IMAGES:,} test images) of networks trained end to end; this run's data are "
    "DermaMNIST, so they are a level reference. Training mode here: "
  )
  modes = {a: _training_mode(arm) for a, arm in arms.items()}
  text += "; ".join(f"`{a}` {m[1]}" for a, m in modes.items()) + "."
  if any(m[0] for m in modes.values()):
    text += " A frozen backbone is expected to score below end-to-end training."
  sources = {str(_data_config(arm, top)["source"]) for arm in arms.values()}
  if sa.n_images and sa.n_images != DERMAMNIST_TEST_IMAGES:
    text += (
      f" This test split has {sa.n_images:,} images, not the full {DERMAMNIST_TEST_IMAGES:,}"
      + (" (the embedded subset)" if sources == {"embedded"} else "")
      + ", so its numbers carry more sampling noise (see the intervals)."
    )
  return text


# ----------------------------------------------------------------------------- sections


def _warning_lines(analysis: dict[str, SetAnalysis]) -> list[str]:
  lines = []
  for sa in analysis.values():
    names = sa.class_names or []
    maj = sa.majority_class
    maj_text = (
      "n/a"
      if maj is None
      else (
        f"`{names[maj]}` ({plots.describe_class(names[maj])})"
        if maj < len(names)
        else f"class {maj}"
      )
    )
    for arm, checks in sa.majority_checks.items():
      flagged = [(s, c) for s, c in checks if c.indistinguishable]
      if flagged:
        seeds = ", ".join(str(s) for s, _ in flagged)
        lines.append(
          f"- ⚠ **`{arm}` on the {sa.label}: predictions statistically indistinguishable from "
          f"(or worse than) always predicting the majority class {maj_text}** "
          f"(seed{'s' if len(flagged) > 1 else ''} {seeds} of {len(checks)}). "
          + " ".join(f"Seed {s}: {c.reason}." for s, c in flagged)
        )
    if sa.majority_note and any(sa.majority_checks.values()):
      lines.append(
        f"- Note: {sa.majority_note} (used for the majority-class check on the {sa.label})."
      )
    for m in sa.mismatches:
      lines.append(f"- ⚠ {sa.label}: the predictions file disagrees with the metrics file: {m}.")
  return lines


def _interval_lines(sa: SetAnalysis, n_boot: int, arms: Sequence[str]) -> list[str]:
  lines = []
  if not sa.ci:
    lines.append(
      f"Bootstrap intervals are unavailable for the {sa.label}: no run has a usable predictions "
      "file (runs written before per-image predictions were saved have none)."
    )
    lines.append("")
    lines += [f"- {n}" for n in sa.notes]
    lines.append("")
    return lines
  rows = []
  for a in arms:
    if a not in sa.ci:
      rows.append([f"`{a}`", "—", *["n/a"] * len(CI_METRICS)])
      continue
    rows.append(
      [
        f"`{a}`",
        ", ".join(str(s) for s in sa.ci_seeds[a]),
        *[f"{_fmt(sa.ci[a][m].estimate)} {_fmt_ci(sa.ci[a][m])}" for m in CI_METRICS],
      ]
    )
  lines += _table(["arm", "seeds", *[METRIC_NAMES[m] for m in CI_METRICS]], rows)
  lines.append("")
  if sa.notes:
    lines += [f"- {n}" for n in sa.notes]
    lines.append("")
  return lines


def _diff_lines(sa: SetAnalysis) -> list[str]:
  lines = []
  for (a, b), diffs in sa.diffs.items():
    rows = []
    for m in CI_METRICS:
      d = diffs[m]
      per = [iv.estimate for _, iv in d.per_seed]
      ms = _mean_std(per)
      n_ex = sum(iv.excludes_zero() for _, iv in d.per_seed)
      rows.append(
        [
          METRIC_NAMES[m],
          f"`{a}` − `{b}` = {_fmt_diff(d.pooled)}",
          _fms(ms, sign=True) + f" (n={ms[2]})",
          f"{n_ex} of {len(d.per_seed)}",
        ]
      )
    lines += _table(
      [
        "metric",
        "difference, mean over paired seeds [95% interval]",
        "per seed: mean ± std",
        "seeds whose own interval excludes 0",
      ],
      rows,
    )
    lines.append("")
  return lines


def _classes_covered(sa: SetAnalysis) -> str:
  names = sa.class_names or [f"class {i}" for i in range(len(sa.support or []))]
  present = sa.present_classes()
  if not sa.support:
    return "Classes covered: unknown (no support counts)."
  text = f"Covers {len(present)} of {len(names)} classes: " + ", ".join(
    f"{names[i]} ({plots.describe_class(names[i])}, n={sa.support[i]:,})" for i in present
  )
  absent = [names[i] for i in range(len(names)) if i not in present]
  if absent:
    text += (
      "; absent: "
      + ", ".join(absent)
      + " (macro AUC and balanced accuracy average over the classes present)"
    )
  return text + "."


def _set_verdict(sa: SetAnalysis, arms: Sequence[str]) -> dict[str, Any]:
  """Which arm is better on balanced accuracy on this set: from the interval, else from the "
  "means."""
  if len(arms) < 2:
    return {"winner": None, "text": "only one arm", "detectable": False}
  a, b = arms[0], arms[1]
  iv = _interval_verdict(sa, a, b, "balanced_accuracy")
  if iv is not None:
    if iv["detectable"]:
      return {
        "winner": iv["winner"],
        "detectable": True,
        "text": f"**`{iv['winner']}` generalised better**: {iv['text']}; the interval excludes 0",
      }
    return {
      "winner": None,
      "detectable": False,
      "text": f"**no difference detectable**: {iv['text']}; the interval contains 0",
    }
  means = {
    x: _mean_std([_num(ev.metrics.get("balanced_accuracy")) for _, ev in sa.runs.get(x, [])])
    for x in (a, b)
  }
  if means[a][0] is None or means[b][0] is None:
    return {"winner": None, "detectable": None, "text": "not available for both arms"}
  w = a if means[a][0] > means[b][0] else b
  return {
    "winner": None,
    "detectable": None,
    "text": f"no interval (predictions missing); mean balanced accuracy is higher for `{w}` "
    f"({_fms(means[a])} vs {_fms(means[b])})",
  }


def _shift_lines(analysis: dict[str, SetAnalysis], arms: Sequence[str]) -> list[str]:
  L = ["## In distribution vs shifted", ""]
  L.append(
    "Each arm evaluated on the in-distribution test split and on outside (shifted) sets. Numbers "
    "are "
    "mean ± std over seeds from each run's metrics file; intervals are 95% bootstrap intervals "
    "over "
    "the set's images (metric averaged over seeds); differences are paired (same images for both "
    "arms). The verdict per set uses balanced accuracy."
  )
  L.append("")
  verdicts = {}
  for name, sa in analysis.items():
    L += [f"### {sa.label[0].upper() + sa.label[1:]}", ""]
    if not sa.labelled:
      L += [
        (
          f"No ground truth for this set ({sa.n_images or 'unknown number of'} images, "
          "predictions only): not scored."
        ),
        "",
      ]
      continue
    L.append(f"{sa.n_images:,} images. " if sa.n_images else "")
    L[-1] += _classes_covered(sa)
    L.append("")
    rows = []
    for a in arms:
      rs = sa.runs.get(a, [])
      if not rs:
        rows.append([f"`{a}`", "0", "not evaluated", "", "", ""])
        continue
      vals = {
        m: _mean_std([_num(ev.metrics.get(m)) for _, ev in rs])
        for m in ("accuracy", "balanced_accuracy", "macro_auc")
      }
      ci = sa.ci.get(a, {}).get("balanced_accuracy")
      rows.append(
        [
          f"`{a}`",
          str(len(rs)),
          _fms(vals["accuracy"]),
          _fms(vals["balanced_accuracy"]),
          _fms(vals["macro_auc"]),
          _fmt_ci(ci),
        ]
      )
    maj = {
      m: _mean_std(
        [
          _num((ev.metrics.get("majority_baseline") or {}).get(m))
          for rs in sa.runs.values()
          for _, ev in rs
        ]
      )
      for m in ("accuracy", "balanced_accuracy", "macro_auc")
    }
    rows.append(
      [
        "majority class (always predicted)",
        "—",
        _fmt(maj["accuracy"][0]),
        _fmt(maj["balanced_accuracy"][0]),
        _fmt(maj["macro_auc"][0]),
        "—",
      ]
    )
    L += _table(
      [
        "arm",
        "seeds",
        "accuracy",
        "balanced accuracy",
        "macro AUC (classes present)",
        "balanced acc. 95% interval",
      ],
      rows,
    )
    L.append("")
    # per-class recall
    names = sa.class_names or []
    if names:
      rows = []
      for i, c in enumerate(names):
        if sa.support and i < len(sa.support) and sa.support[i] == 0:
          continue
        row = [c, f"{sa.support[i]:,}" if sa.support and i < len(sa.support) else "—"]
        for a in arms:
          rec = [
            _num((ev.metrics.get("per_class_recall") or [None] * (i + 1))[i])
            if i < len(ev.metrics.get("per_class_recall") or [])
            else None
            for _, ev in sa.runs.get(a, [])
          ]
          row.append(_fms(_mean_std(rec)))
        rows.append(row)
      L.append("Per-class recall (classes present in this set):")
      L.append("")
      L += _table(["class", "images", *[f"`{a}`" for a in arms]], rows)
      L.append("")
    if sa.diffs:
      L += _diff_lines(sa)
    elif sa.notes or not sa.ci:
      L.append(
        "No paired differences: " + (" ".join(sa.notes) if sa.notes else "no predictions files.")
      )
      L.append("")
    verdicts[name] = _set_verdict(sa, arms)
    L.append(f"Verdict ({sa.label}, balanced accuracy): {verdicts[name]['text']}.")
    L.append("")

  L += ["### Does the answer change under shift?", ""]
  base = verdicts.get(TEST_SET)
  for name, v in verdicts.items():
    L.append(f"- {analysis[name].label}: {v['text']}.")
  L.append("")
  if base is not None:
    for name, v in verdicts.items():
      if name == TEST_SET:
        continue
      if base["detectable"] is None or v["detectable"] is None:
        L.append(
          f"- `{name}`: cannot be compared with the in-distribution result without intervals."
        )
      elif (base["winner"], base["detectable"]) == (v["winner"], v["detectable"]):
        L.append(f"- `{name}`: the answer is the same as in distribution.")
      else:
        L.append(f"- `{name}`: **the answer changes** between in-distribution and shifted data.")
    L.append("")
  return L


# ----------------------------------------------------------------------------- report


def write_report(workdir: str, n_boot: int = 2000, seed: int = 0, figures: bool = True) -> str:
  """Writes DIR/report.md and DIR/figures/*.png; returns the path of report.md.

  n_boot: bootstrap resamples per interval; seed: the resampling seed (the same resamples
  for every arm, seed and metric, which makes the arm differences paired); figures=False
  skips drawing the figures (faster; the report then says they were not drawn).
  """
  workdir = os.fspath(workdir)
  arms = load_compare_dir(workdir)
  top_path = fileio.join(workdir, "config.json")
  top = _read_json(top_path) if fileio.isfile(top_path) else {}
  top = top if isinstance(top, dict) else {}
  summary = summarize(arms)
  n_seeds = {a: len(arm.runs) for a, arm in arms.items()}
  analysis = analyse_sets(arms, n_boot=n_boot, seed=seed)
  test_sa = analysis[TEST_SET]
  arm_names = list(arms)
  fig_dir = fileio.join(workdir, "figures")
  if figures:
    fileio.makedirs(fig_dir)

  # --- figures

  def draw(fn: Any, *args: Any, **kwargs: Any) -> None:
    if figures:
      fn(*args, **kwargs)

  runs = {a: [r.history for r in arm.runs] for a, arm in arms.items()}
  draw(
    plots.save_curves,
    runs,
    ["train/loss", "val/loss"],
    fileio.join(fig_dir, "loss.png"),
    "Loss per epoch (solid: training, dashed: validation)",
    ylabel="cross-entropy loss",
  )
  draw(
    plots.save_curves,
    runs,
    ["train/accuracy", "val/accuracy"],
    fileio.join(fig_dir, "accuracy.png"),
    "Accuracy per epoch (solid: training, dashed: validation)",
    ylabel="accuracy",
  )
  draw(
    plots.save_curves,
    runs,
    ["gap/accuracy", "gap/loss"],
    fileio.join(fig_dir, "gap.png"),
    "Overfitting gap per epoch (above 0 = the model does better on training than on "
    "validation data)",
    separate_panels=True,
    hline=0.0,
    panel_titles={
      "gap/accuracy": "Training accuracy − validation accuracy",
      "gap/loss": "Validation loss − training loss",
    },
  )
  confusion_files = {}
  class_names: list[str] | None = None
  for a, arm in arms.items():
    cms = [
      np.asarray(r.test["confusion_matrix"], dtype=np.int64)
      for r in arm.runs
      if r.test.get("confusion_matrix") is not None
    ]
    names = next((r.test.get("class_names") for r in arm.runs if r.test.get("class_names")), None)
    if class_names is None and names:
      class_names = list(names)
    if not cms or len({c.shape for c in cms}) != 1:
      continue
    total = np.sum(cms, axis=0)
    names = list(names) if names else [f"class {i}" for i in range(total.shape[0])]
    fname = f"confusion_{_safe_name(a)}.png"
    draw(
      plots.save_confusion_matrix,
      total,
      names,
      fileio.join(fig_dir, fname),
      f"{a}: test confusion matrix (counts summed over {len(cms)} seed(s))",
    )
    confusion_files[a] = (fname, len(cms))
  reliability_files = {}
  for a, bins in test_sa.reliability.items():
    fname = f"reliability_{_safe_name(a)}.png"
    k = len(test_sa.ci_seeds.get(a, []))
    draw(
      plots.save_reliability_diagram,
      bins.confidence,
      bins.accuracy,
      bins.count,
      fileio.join(fig_dir, fname),
      f"{a}: calibration on the test split ({k} seed(s) pooled)",
      edges=bins.edges,
      ece=bins.ece,
    )
    reliability_files[a] = fname
  shifted = len(analysis) > 1
  if shifted:
    sets = [sa for sa in analysis.values() if sa.labelled or not sa.shifted]
    series = {}
    for a in arm_names:
      vals = []
      for sa in sets:
        ms = _mean_std([_num(ev.metrics.get("balanced_accuracy")) for _, ev in sa.runs.get(a, [])])
        ci = sa.ci.get(a, {}).get("balanced_accuracy")
        vals.append((ms[0], ci.lo if ci else None, ci.hi if ci else None))
      series[a] = vals
    baseline = [
      _mean_std(
        [
          _num((ev.metrics.get("majority_baseline") or {}).get("balanced_accuracy"))
          for rs in sa.runs.values()
          for _, ev in rs
        ]
      )[0]
      for sa in sets
    ]
    draw(
      plots.save_interval_groups,
      [sa.short_label for sa in sets],
      series,
      fileio.join(fig_dir, "shift_balanced_accuracy.png"),
      "Balanced accuracy in distribution and on shifted data\n"
      "(points: mean over seeds; bars: 95% bootstrap interval)",
      "balanced accuracy (mean recall over classes)",
      baseline=baseline,
      baseline_label="always predicting the majority class",
    )

  # --- header and warnings
  L: list[str] = ["# Self-supervised VAE vs ImageNet transfer: comparison report", ""]
  L.append(
    f"Workdir: `{fileio.abspath(workdir)}`. Paper: Matas et al. 2025, arXiv:2505.16773 "
    "(only its abstract's numbers are known)."
  )
  L.append("")
  warnings = _warning_lines(analysis)
  if warnings:
    L += ["## Warnings", ""] + warnings + [""]

  # --- setup
  rows = []
  for a, arm in arms.items():
    flat = _flatten(arm.runs[0].config)
    vals = {f: _config_field(flat, names) for f, names in _CONFIG_FIELDS.items()}
    frozen = _training_mode(arm)[0]
    vals["frozen backbone"] = (
      None if frozen is None else ("yes (frozen)" if frozen else "no (fine-tuned)")
    )
    epochs = sorted({int(r.history[-1]["epoch"]) for r in arm.runs})
    rows.append(
      [
        f"`{a}`",
        *[_fmt_value(vals[f]) for f in _CONFIG_FIELDS],
        "/".join(str(e) for e in epochs),
        ", ".join(str(r.seed) for r in arm.runs),
      ]
    )
  L += ["## Setup (from each arm's seed config.json)", ""]
  L += _table(["arm", *_CONFIG_FIELDS, "epochs (recorded)", "seeds"], rows)
  L.append("")
  data_lines, derma = _data_lines(arms, top, test_sa)
  L += data_lines
  L.append(
    "Training mode: "
    + "; ".join(f"`{a}` {_training_mode(arm)[1]}" for a, arm in arms.items())
    + "."
  )
  L.append("")
  rec = {a: sorted({int(r.history[-1]["epoch"]) for r in arm.runs}) for a, arm in arms.items()}
  if len({tuple(v) for v in rec.values()}) > 1:
    L.append(
      "Note: the arms recorded different numbers of epochs ("
      + ", ".join(f"`{a}`: {'/'.join(map(str, v))}" for a, v in rec.items())
      + '); "final" always means each run\'s own last recorded epoch.'
    )
    L.append("")
  diffs = _config_differences(arms)
  if diffs:
    L += ["Config entries that differ between arms (seed config; seed fields left out):", ""]
    L += _table(["key", *[f"`{a}`" for a in arms]], diffs)
    L.append("")

  # --- (b) the paper's table
  L += ["## The paper's measures (validation curves, final overfitting gap)", ""]
  L.append(
    "Mean ± sample std over seeds of per-run quantities. % changes are relative to each run's "
    "first "
    "epoch. Gaps: train − val accuracy and val − train loss (both > 0 when overfitting). The "
    "paper's "
    "values are from a different (proprietary) dataset and setup: compare directions, not levels."
  )
  L.append("")
  for a in arms:
    s = summary[a]
    pa = _paper_arm(a)
    p = PAPER.get(pa) if pa else None
    pv = (lambda k, p=p: p[k]) if p else (lambda k: "—")
    L.append(
      f"### `{a}` ({n_seeds[a]} seed{'s' if n_seeds[a] != 1 else ''})"
      + (f" — paper arm: {p['label']}" if p else " — no matching paper arm")
    )
    L.append("")
    acc = (
      f"{_fms(s['val_acc_first'], digits=1, scale=100, suffix='%')} → "
      f"{_fms(s['val_acc_final'], digits=1, scale=100, suffix='%')}"
    )
    L += _table(
      ["quantity", "this run", "paper (reported)"],
      [
        ["final val loss", _fms(s["val_loss_final"]), pv("final_val_loss")],
        [
          "val loss change, first → final epoch",
          _fms(s["val_loss_change"], digits=2, suffix="%", sign=True),
          pv("val_loss_change"),
        ],
        ["val accuracy, first → final epoch", acc, pv("val_acc")],
        [
          "val accuracy change",
          _fms(s["val_acc_change"], digits=2, suffix="%", sign=True),
          pv("val_acc_change"),
        ],
        [
          "final gap: train − val accuracy",
          _fms(s["gap_acc_final"], sign=True),
          pv("gap") + (" †" if p else ""),
        ],
        [
          "final gap: val − train loss",
          _fms(s["gap_loss_final"], sign=True),
          pv("gap") + (" †" if p else ""),
        ],
        ["largest train − val accuracy gap over epochs", _fms(s["gap_acc_max"], sign=True), "—"],
      ],
    )
    L.append("")
  L.append("† The paper does not say which definition its overfitting gap uses.")
  L.append("")

  # --- (c) what the paper lacks
  n_text = ", ".join(f"`{a}` n={k}" for a, k in n_seeds.items())
  L += ["## Test-set metrics (not reported by the paper)", ""]
  L.append(
    f"Mean ± sample std over seeds ({n_text}), from each run's test_metrics.json. Best val "
    "accuracy = "
    "the highest per-epoch validation accuracy of each run (its epoch in brackets, per seed)."
  )
  L.append("")
  rows = []
  for a, arm in arms.items():
    s = summary[a]
    best = _fms(s["val_acc_best"])
    best_epochs = [_seed_summary(r)["best_epoch"] for r in arm.runs]
    if any(e is not None for e in best_epochs):
      best += f" (ep {_int_list(best_epochs)})"
    rows.append(
      [
        f"`{a}`",
        str(n_seeds[a]),
        _fms(s["test_accuracy"]),
        _fms(s["test_balanced_accuracy"]),
        _fms(s["test_macro_f1"]),
        _fms(s["test_macro_auc"]),
        _fms(s["test_loss"]),
        best,
      ]
    )
  # Majority baseline: the same for every run when the splits are fixed; averaged over all runs.
  maj = {
    k: _mean_std(
      [v for a in arms for v in [_seed_summary(r)[f"majority_{k}"] for r in arms[a].runs]]
    )
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
  }
  rows.append(
    [
      "majority class (train majority, always predicted)",
      "—",
      _fmt(maj["accuracy"][0]),
      _fmt(maj["balanced_accuracy"][0]),
      _fmt(maj["macro_f1"][0]),
      _fmt(maj["macro_auc"][0]),
      "—",
      "—",
    ]
  )
  if derma:
    for label, acc_ref, auc_ref in REFERENCES:
      rows.append([label, "—", f"{acc_ref:.3f}", "—", "—", f"{auc_ref:.3f}", "—", "—"])
  L += _table(
    [
      "arm",
      "seeds",
      "test accuracy",
      "test balanced acc.",
      "test macro-F1",
      "test macro AUC",
      "test loss",
      "best val accuracy",
    ],
    rows,
  )
  L.append("")
  L.append(_reference_sentence(arms, top, test_sa, derma))
  L.append("")

  L += ["### Bootstrap 95% intervals (test split)", ""]
  if test_sa.ci:
    L.append(
      f"Percentile bootstrap over the {test_sa.n_images:,} test images ({n_boot:,} resamples). "
      "With "
      "several seeds the statistic is the metric averaged over the seeds, each resample drawing "
      "the "
      "same images for every seed and arm. The interval shows the uncertainty due to the finite "
      "test "
      "set; the ± above shows the seed-to-seed spread."
    )
    L.append("")
  L += _interval_lines(test_sa, n_boot, arm_names)
  if test_sa.diffs:
    L += ["### Differences between the arms (paired bootstrap, test split)", ""]
    L.append(
      "Each difference is arm A − arm B on the same resampled test images; per seed, arm A's run "
      "with seed s is paired with arm B's run with seed s. An interval that contains 0 means no "
      "difference is detectable on this test set."
    )
    L.append("")
    L += _diff_lines(test_sa)

  # per-class recall
  k = max(
    (len(r.test.get("per_class_recall") or []) for arm in arms.values() for r in arm.runs),
    default=0,
  )
  if k:
    names = (
      class_names if class_names and len(class_names) == k else [f"class {i}" for i in range(k)]
    )
    support = arms[next(iter(arms))].runs[0].test.get("support")
    header = [
      "class",
      *(["test support"] if support and len(support) == k else []),
      *[f"`{a}`" for a in arms],
    ]
    rows = []
    for i in range(k):
      row = [names[i], *([str(support[i])] if support and len(support) == k else [])]
      for arm in arms.values():
        vals = []
        for r in arm.runs:
          recall = r.test.get("per_class_recall") or []
          vals.append(_num(recall[i]) if i < len(recall) else None)
        row.append(_fms(_mean_std(vals)))
      rows.append(row)
    L += [
      "### Per-class test recall (mean ± std over seeds; n/a = class absent from the test split)",
      "",
    ]
    L += _table(header, rows)
    L.append("")
    caption = plots.class_caption(names)
    if caption:
      L += [f"Classes: {caption}.", ""]

  # calibration
  if test_sa.ece:
    L += ["### Calibration (test split)", ""]
    L.append(
      "Expected calibration error (ECE, top-label, 15 equal-width confidence bins, Guo et al. "
      "2017): "
      "the average gap between confidence and accuracy, weighted by the images per bin; 0 = "
      "perfectly "
      "calibrated. Mean ± std over seeds."
    )
    L.append("")
    L += _table(
      ["arm", "seeds", "ECE"],
      [[f"`{a}`", str(len(v)), _fms(_mean_std(v))] for a, v in test_sa.ece.items()],
    )
    L.append("")

  if shifted:
    L += _shift_lines(analysis, arm_names)

  # --- figures
  L += ["## Figures", ""]
  if not figures:
    L += ["(Not drawn in this report: written with figures=False.)", ""]
  if figures:
    band = " Lines are means over seeds, bands ±1 sample std." if max(n_seeds.values()) > 1 else ""
    L.append(f"Loss, train and validation, both arms.{band}")
    L += [
      "",
      "![loss](figures/loss.png)",
      "",
      "Accuracy, train and validation:",
      "",
      "![accuracy](figures/accuracy.png)",
      "",
      "Overfitting gap per epoch (left: train − val accuracy; right: val − train loss):",
      "",
      "![gap](figures/gap.png)",
      "",
    ]
    for a, (fname, n) in confusion_files.items():
      L.append(
        f"Test confusion matrix of `{a}`, counts **summed over {n} seed(s)**, colours "
        "row-normalised "
        f"(recall on the diagonal):"
      )
      L += ["", f"![confusion {a}](figures/{fname})", ""]
    for a, fname in reliability_files.items():
      L.append(
        f"Reliability diagram of `{a}` (test split, seeds pooled): bars on the diagonal = "
        "calibrated; "
        "bars below it = overconfident."
      )
      L += ["", f"![reliability {a}](figures/{fname})", ""]
    if shifted:
      L.append(
        "Balanced accuracy per evaluation set, in distribution and shifted side by side (dotted "
        "line: "
        "always predicting the majority class):"
      )
      L += ["", "![shift](figures/shift_balanced_accuracy.png)", ""]
  if fileio.isfile(fileio.join(workdir, "vae", "latent_pca.png")):
    L.append(
      "VAE latent space: a 2-D PCA of the VAE's latent means, coloured by class (written by the "
      "VAE run):"
    )
    L += ["", "![VAE latent PCA](vae/latent_pca.png)", ""]

  # --- (e) conclusion
  L += _conclusion(summary, n_seeds, test_sa)

  return fileio.atomic_write_text(fileio.join(workdir, "report.md"),
                                  "\n".join(L).rstrip() + "\n")


def _config_differences(arms: dict[str, ArmRuns], limit: int = 40) -> list[list[str]]:
  flats = {a: _flatten(arm.runs[0].config) for a, arm in arms.items()}
  if len(flats) < 2:
    return []
  keys = sorted(set().union(*flats.values()))
  rows = []
  for key in keys:
    if "seed" in key.split(".")[-1].lower():
      continue
    vals = [flats[a].get(key, "(absent)") for a in arms]
    if any(
      json.dumps(v, sort_keys=True, default=str) != json.dumps(vals[0], sort_keys=True, default=str)
      for v in vals[1:]
    ):
      rows.append([f"`{key}`", *[f"`{_fmt_value(v)}`" for v in vals]])
  if len(rows) > limit:
    rows = rows[:limit] + [["…", *[f"({len(rows) - limit} more)"] + [""] * (len(arms) - 1)]]
  return rows


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m derm_jax.report", description=__doc__.split("\n")[0]
  )
  parser.add_argument(
    "--workdir", required=True, help="compare workdir holding arms/<arm>/seed_<s>/"
  )
  parser.add_argument("--n_boot", type=int, default=2000, help="bootstrap resamples per interval")
  parser.add_argument("--seed", type=int, default=0, help="bootstrap resampling seed")
  parser.add_argument("--no_figures", action="store_true", help="skip drawing the figures")
  args = parser.parse_args(argv)
  try:
    path = write_report(
      args.workdir, n_boot=args.n_boot, seed=args.seed, figures=not args.no_figures
    )
  except ReportError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
