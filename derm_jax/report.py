"""Markdown report of a VAE-vs-ImageNet comparison workdir, side by side with the paper.

  python -m derm_jax.report --workdir=DIR     (or: write_report(DIR) -> DIR/report.md)

Reads the layout written by the comparison training code:

  DIR/arms/<arm>/seed_<s>/config.json         the run's full config
  DIR/arms/<arm>/seed_<s>/metrics.jsonl       one JSON object per epoch ("epoch", "train/loss",
                                              "val/accuracy", "gap/accuracy", ...)
  DIR/arms/<arm>/seed_<s>/test_metrics.json   test metrics, class names, majority baseline

and writes DIR/report.md and DIR/figures/{loss,accuracy,gap,confusion_<arm>}.png:
the paper's own table (val loss and accuracy first -> final with % change, final
overfitting gap) next to the numbers reported by Matas et al. 2025 (arXiv:2505.16773),
the metrics the paper lacks (test accuracy / balanced accuracy / macro-F1 / macro AUC,
mean +- std over seeds, majority-class and MedMNIST v2 reference rows), per-class test
recall, and a conclusion computed from the numbers. Does not import jax.

Conventions: "first"/"final" are each run's first and last recorded epoch; every
per-run quantity (including % changes) is computed per seed, then summarised as
mean +- sample std (ddof=1) over seeds; with one seed no std is shown.
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

from derm_jax import plots
from derm_jax.metrics import overfitting_gap

__all__ = ["ArmRuns", "ReportError", "SeedRun", "load_compare_dir", "main", "summarize", "write_report"]

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

# DermaMNIST test-split references (MedMNIST v2; 7 classes).
REFERENCES = [
  ("MedMNIST v2 ResNet-18 (28) [reference]", 0.735, 0.917),
  ("MedMNIST v2 ResNet-50 (224) [reference]", 0.731, 0.912),
]

_CONFIG_FIELDS = {
  "dataset": ["data.source", "dataset", "dataset_name", "data_name", "tfds_name"],
  "init": ["init.source"],
  "frozen backbone": ["freeze_backbone"],
  "backbone": ["backbone", "backbone_name", "encoder", "arch", "architecture"],
  "image size": ["image_size", "img_size", "resolution", "input_size"],
  "epochs (configured)": ["epochs", "num_epochs", "train_epochs", "classifier_epochs"],
  "batch size": ["batch_size", "global_batch_size"],
  "learning rate": ["learning_rate", "lr"],
}


class ReportError(RuntimeError):
  """A problem with the compare workdir (missing or unreadable file, no runs)."""


@dataclasses.dataclass
class SeedRun:
  seed: int
  path: str
  config: dict[str, Any]
  history: list[dict[str, Any]]
  test: dict[str, Any]


@dataclasses.dataclass
class ArmRuns:
  name: str
  runs: list[SeedRun]


# ----------------------------------------------------------------------------- loading


def _read_json(path: str) -> Any:
  if not os.path.isfile(path):
    raise ReportError(f"missing file: {path}")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ReportError(f"cannot read JSON file {path}: {e}") from e


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  if not os.path.isfile(path):
    raise ReportError(f"missing file: {path}")
  rows = []
  with open(path) as f:
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
    gaps = overfitting_gap({"accuracy": _num(row.get("train/accuracy")), "loss": _num(row.get("train/loss"))},
                           {"accuracy": _num(row.get("val/accuracy")), "loss": _num(row.get("val/loss"))})
    for k, v in gaps.items():
      if _num(row.get(k)) is None:
        row[k] = v
    out.append(row)
  out.sort(key=lambda r: int(r["epoch"]))
  return out


def load_compare_dir(workdir: str) -> dict[str, ArmRuns]:
  """Reads every DIR/arms/<arm>/seed_<s>/ run; raises ReportError naming any missing path."""
  arms_dir = os.path.join(workdir, "arms")
  if not os.path.isdir(arms_dir):
    raise ReportError(f"missing directory: {arms_dir} (expected DIR/arms/<arm>/seed_<s>/)")
  arm_names = sorted(d for d in os.listdir(arms_dir) if os.path.isdir(os.path.join(arms_dir, d)))
  if not arm_names:
    raise ReportError(f"no arm directories in {arms_dir}")
  # Conventional order: self-supervised arm first, then ImageNet, then the rest.
  arm_names.sort(key=lambda a: ({"self_supervised": 0, "imagenet": 1}.get(_paper_arm(a), 2), a))
  arms: dict[str, ArmRuns] = {}
  for arm in arm_names:
    arm_dir = os.path.join(arms_dir, arm)
    seeds = []
    for d in os.listdir(arm_dir):
      m = re.fullmatch(r"seed_(\d+)", d)
      if m and os.path.isdir(os.path.join(arm_dir, d)):
        seeds.append((int(m.group(1)), os.path.join(arm_dir, d)))
    if not seeds:
      raise ReportError(f"no seed_<s> directories in {arm_dir}")
    runs = []
    for seed, seed_dir in sorted(seeds):
      config = _read_json(os.path.join(seed_dir, "config.json"))
      history = _normalize_history(_read_jsonl(os.path.join(seed_dir, "metrics.jsonl")))
      test = _read_json(os.path.join(seed_dir, "test_metrics.json"))
      if not isinstance(config, dict) or not isinstance(test, dict):
        raise ReportError(f"expected JSON objects in {seed_dir}/config.json and test_metrics.json")
      runs.append(SeedRun(seed=seed, path=seed_dir, config=config, history=history, test=test))
    arms[arm] = ArmRuns(name=arm, runs=runs)
  return arms


# ----------------------------------------------------------------------------- numbers


def _paper_arm(name: str) -> str | None:
  n = name.lower()
  if "imagenet" in n or "in1k" in n:
    return "imagenet"
  if any(t in n for t in ("vae", "ssl", "self", "scratch")):
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
    "gap_acc_max": max((g for g in (_num(r.get("gap/accuracy")) for r in h) if g is not None), default=None),
  }
  s["val_loss_change"] = _pct_change(s["val_loss_first"], s["val_loss_final"])
  s["val_acc_change"] = _pct_change(s["val_acc_first"], s["val_acc_final"])
  for k in ("loss", "accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
    s[f"test_{k}"] = _num(run.test.get(k))
  mb = run.test.get("majority_baseline") or {}
  for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
    s[f"majority_{k}"] = _num(mb.get(k))
  return s


def summarize(arms: dict[str, ArmRuns]) -> dict[str, dict[str, tuple[float | None, float | None, int]]]:
  """arm -> quantity -> (mean, std, n) over seeds, for every quantity of `_seed_summary`."""
  out = {}
  for name, arm in arms.items():
    per_seed = [_seed_summary(r) for r in arm.runs]
    out[name] = {k: _mean_std([s[k] for s in per_seed]) for k in per_seed[0]}
  return out


# ----------------------------------------------------------------------------- formatting


def _fmt(mean: float | None, std: float | None = None, digits: int = 3, scale: float = 1.0,
         suffix: str = "", sign: bool = False) -> str:
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
    return "×".join(str(x) for x in v) if all(isinstance(x, (int, float)) for x in v) else json.dumps(v)
  return str(v)


def _safe_name(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


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
  return {"winner": win, "runner_up": run, "win": wms, "run": rms, "diff": diff, "max_std": max_std,
          "exceeds": (diff > max_std) if max_std is not None else None}


def _criterion_sentence(label: str, c: dict[str, Any], digits: int, sign: bool, what: str) -> str:
  if c.get("winner") is None:
    if c.get("tie"):
      return f"- {label}: tie between `{c['arms'][0]}` and `{c['arms'][1]}`."
    return f"- {label}: not available for two arms."
  text = (f"- {label}: **`{c['winner']}`** {what} ({_fms(c['win'], digits=digits, sign=sign)} vs "
          f"`{c['runner_up']}` {_fms(c['run'], digits=digits, sign=sign)}); difference {c['diff']:.{digits}f}")
  if c["exceeds"] is None:
    text += ", no seed spread available to judge it."
  elif c["exceeds"]:
    text += f", larger than the seed std (largest {c['max_std']:.{digits}f})."
  else:
    text += f", within the seed std (largest {c['max_std']:.{digits}f}): not distinguishable from seed noise."
  return text


def _conclusion(summary: dict[str, Any], n_seeds: dict[str, int]) -> list[str]:
  crit = {
    "gap_acc": _compare(summary, "gap_acc_final", "abs_lower"),
    "gap_loss": _compare(summary, "gap_loss_final", "abs_lower"),
    "ba": _compare(summary, "test_balanced_accuracy", "higher"),
    "auc": _compare(summary, "test_macro_auc", "higher"),
  }
  lines = ["## Conclusion (computed from the numbers above)", ""]
  lines.append(_criterion_sentence("Final overfitting gap, train − val accuracy (smaller |gap| = less overfitting)",
                                   crit["gap_acc"], 3, True, "overfits less"))
  lines.append(_criterion_sentence("Final overfitting gap, val − train loss (smaller |gap| = less overfitting)",
                                   crit["gap_loss"], 3, True, "overfits less"))
  lines.append(_criterion_sentence("Test balanced accuracy (higher is better)", crit["ba"], 3, False, "is higher"))
  lines.append(_criterion_sentence("Test macro AUC (higher is better)", crit["auc"], 3, False, "is higher"))
  lines.append("")

  def common(a: str, b: str) -> str | None:
    wa, wb = crit[a].get("winner"), crit[b].get("winner")
    return wa if wa is not None and wa == wb else None

  gap_w, test_w = common("gap_acc", "gap_loss"), common("ba", "auc")
  if gap_w is not None and gap_w == test_w:
    verdict = (f"**Overall: `{gap_w}` generalised better on these data**: it has the smaller final "
               f"train-validation gap by both definitions and the higher test balanced accuracy and macro AUC.")
  elif gap_w is not None and test_w is not None:
    verdict = (f"**Overall: mixed.** `{gap_w}` overfits less (smaller final gap by both definitions), "
               f"but `{test_w}` scores higher test balanced accuracy and macro AUC.")
  else:
    parts = []
    parts.append(f"`{gap_w}` overfits less by both gap definitions" if gap_w
                 else "the two gap definitions do not agree on which arm overfits less")
    parts.append(f"`{test_w}` is better on the test set by both balanced accuracy and AUC" if test_w
                 else "test balanced accuracy and AUC do not agree on a better arm")
    verdict = "**Overall: inconclusive.** " + "; ".join(parts) + "."
  lines.append(verdict)
  lines.append("")

  if min(n_seeds.values()) < 2:
    lines.append("With one seed per arm (for at least one arm) no seed-to-seed spread can be estimated, so it "
                 "cannot be said whether these differences exceed run-to-run noise; run more seeds.")
  else:
    decided = [c for c in crit.values() if c.get("winner") is not None]
    n_exc = sum(bool(c["exceeds"]) for c in decided)
    n = ", ".join(f"{a}: {k}" for a, k in n_seeds.items())
    lines.append(f"{n_exc} of {len(decided)} of these differences exceed the larger of the two arms' seed "
                 f"standard deviations (seeds per arm: {n}). This is a rough spread check, not a significance test.")
  lines.append("")

  # The paper's direction, where the arm names map onto the paper's arms.
  paper_arms = {_paper_arm(a): a for a in summary}
  ssl, inet = paper_arms.get("self_supervised"), paper_arms.get("imagenet")
  if ssl and inet:
    ga, gi = summary[ssl]["gap_acc_final"][0], summary[inet]["gap_acc_final"][0]
    if ga is not None and gi is not None:
      agree = abs(ga) < abs(gi)
      lines.append(f"The paper reports that the self-supervised arm overfits less (gap ≈ 0 vs +0.060 for "
                   f"ImageNet). Here, by the accuracy gap, `{ssl}` {_fmt(ga, sign=True)} vs `{inet}` "
                   f"{_fmt(gi, sign=True)}: the paper's direction is "
                   f"{'reproduced' if agree else 'not reproduced'}.")
      lines.append("")
    aa, ai = summary[ssl]["val_acc_final"][0], summary[inet]["val_acc_final"][0]
    if aa is not None and ai is not None:
      agree = ai > aa
      lines.append(f"The paper's ImageNet arm ends with the higher validation accuracy (75% vs 65%). Here "
                   f"`{inet}` {_fmt(ai, scale=100, digits=1, suffix='%')} vs `{ssl}` "
                   f"{_fmt(aa, scale=100, digits=1, suffix='%')}: "
                   f"{'same direction' if agree else 'opposite direction'}.")
    lines.append("")
  return lines


# ----------------------------------------------------------------------------- report


def write_report(workdir: str) -> str:
  """Writes DIR/report.md and DIR/figures/*.png; returns the path of report.md."""
  workdir = os.fspath(workdir)
  arms = load_compare_dir(workdir)
  summary = summarize(arms)
  n_seeds = {a: len(arm.runs) for a, arm in arms.items()}
  fig_dir = os.path.join(workdir, "figures")
  os.makedirs(fig_dir, exist_ok=True)

  # --- figures
  runs = {a: [r.history for r in arm.runs] for a, arm in arms.items()}
  plots.save_curves(runs, ["train/loss", "val/loss"], os.path.join(fig_dir, "loss.png"),
                    "Loss (solid: train, dashed: validation)", ylabel="loss")
  plots.save_curves(runs, ["train/accuracy", "val/accuracy"], os.path.join(fig_dir, "accuracy.png"),
                    "Accuracy (solid: train, dashed: validation)", ylabel="accuracy")
  plots.save_curves(runs, ["gap/accuracy", "gap/loss"], os.path.join(fig_dir, "gap.png"),
                    "Overfitting gap per epoch (> 0 = overfitting)", separate_panels=True, hline=0.0)
  confusion_files = {}
  class_names: list[str] | None = None
  for a, arm in arms.items():
    cms = [np.asarray(r.test["confusion_matrix"], dtype=np.int64) for r in arm.runs
           if r.test.get("confusion_matrix") is not None]
    names = next((r.test.get("class_names") for r in arm.runs if r.test.get("class_names")), None)
    if class_names is None and names:
      class_names = list(names)
    if not cms or len({c.shape for c in cms}) != 1:
      continue
    total = np.sum(cms, axis=0)
    names = list(names) if names else [f"class {i}" for i in range(total.shape[0])]
    fname = f"confusion_{_safe_name(a)}.png"
    plots.save_confusion_matrix(total, names, os.path.join(fig_dir, fname),
                                f"{a}: test confusion matrix (summed over {len(cms)} seed(s))")
    confusion_files[a] = (fname, len(cms))

  # --- header
  L: list[str] = ["# Self-supervised VAE vs ImageNet transfer: comparison report", ""]
  L.append(f"Workdir: `{os.path.abspath(workdir)}`. Paper: Matas et al. 2025, arXiv:2505.16773 "
           "(only its abstract's numbers are known).")
  L.append("")
  rows = []
  datasets = set()
  for a, arm in arms.items():
    flat = _flatten(arm.runs[0].config)
    vals = {f: _config_field(flat, names) for f, names in _CONFIG_FIELDS.items()}
    if vals["dataset"] is not None:
      datasets.add(str(vals["dataset"]))
    epochs = sorted({int(r.history[-1]["epoch"]) for r in arm.runs})
    rows.append([f"`{a}`", *[_fmt_value(vals[f]) for f in _CONFIG_FIELDS],
                 "/".join(str(e) for e in epochs), ", ".join(str(r.seed) for r in arm.runs)])
  L += ["## Setup (from each arm's seed config.json)", ""]
  L += _table(["arm", *_CONFIG_FIELDS, "epochs (recorded)", "seeds"], rows)
  L.append("")
  rec = {a: s["epochs"][0] for a, s in summary.items()}
  if len({round(v, 6) for v in rec.values() if v is not None}) > 1:
    L.append("Note: the arms recorded different numbers of epochs (" +
             ", ".join(f"`{a}`: {v:g}" for a, v in rec.items()) +
             "); \"final\" always means each run's own last recorded epoch.")
    L.append("")
  diffs = _config_differences(arms)
  if diffs:
    L += ["Config entries that differ between arms (seed config; seed fields left out):", ""]
    L += _table(["key", *[f"`{a}`" for a in arms]], diffs)
    L.append("")

  # --- (b) the paper's table
  L += ["## The paper's measures (validation curves, final overfitting gap)", ""]
  L.append("Mean ± sample std over seeds of per-run quantities. % changes are relative to each run's first "
           "epoch. Gaps: train − val accuracy and val − train loss (both > 0 when overfitting). The paper's "
           "values are from a different (proprietary) dataset and setup: compare directions, not levels.")
  L.append("")
  for a in arms:
    s = summary[a]
    pa = _paper_arm(a)
    p = PAPER.get(pa) if pa else None
    pv = (lambda k: p[k]) if p else (lambda k: "—")
    L.append(f"### `{a}` ({n_seeds[a]} seed{'s' if n_seeds[a] != 1 else ''})"
             + (f" — paper arm: {p['label']}" if p else " — no matching paper arm"))
    L.append("")
    acc = (f"{_fms(s['val_acc_first'], digits=1, scale=100, suffix='%')} → "
           f"{_fms(s['val_acc_final'], digits=1, scale=100, suffix='%')}")
    L += _table(["quantity", "this run", "paper (reported)"], [
      ["final val loss", _fms(s["val_loss_final"]), pv("final_val_loss")],
      ["val loss change, first → final epoch", _fms(s["val_loss_change"], digits=2, suffix="%", sign=True),
       pv("val_loss_change")],
      ["val accuracy, first → final epoch", acc, pv("val_acc")],
      ["val accuracy change", _fms(s["val_acc_change"], digits=2, suffix="%", sign=True), pv("val_acc_change")],
      ["final gap: train − val accuracy", _fms(s["gap_acc_final"], sign=True), pv("gap") + (" †" if p else "")],
      ["final gap: val − train loss", _fms(s["gap_loss_final"], sign=True), pv("gap") + (" †" if p else "")],
      ["largest train − val accuracy gap over epochs", _fms(s["gap_acc_max"], sign=True), "—"],
    ])
    L.append("")
  L.append("† The paper does not say which definition its overfitting gap uses.")
  L.append("")

  # --- (c) what the paper lacks
  n_text = ", ".join(f"`{a}` n={k}" for a, k in n_seeds.items())
  L += ["## Test-set metrics (not reported by the paper)", ""]
  L.append(f"Mean ± sample std over seeds ({n_text}). Best val accuracy = the highest per-epoch validation "
           "accuracy of each run (its epoch in brackets, mean over seeds).")
  L.append("")
  rows = []
  for a in arms:
    s = summary[a]
    best = _fms(s["val_acc_best"])
    if s["best_epoch"][0] is not None:
      best += f" (ep {s['best_epoch'][0]:.1f})"
    rows.append([f"`{a}`", str(n_seeds[a]), _fms(s["test_accuracy"]), _fms(s["test_balanced_accuracy"]),
                 _fms(s["test_macro_f1"]), _fms(s["test_macro_auc"]), _fms(s["test_loss"]), best])
  # Majority baseline: the same for every run when the splits are fixed; averaged over all runs.
  maj = {k: _mean_std([v for a in arms for v in [_seed_summary(r)[f"majority_{k}"] for r in arms[a].runs]])
         for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")}
  rows.append(["majority class (train majority, always predicted)", "—", _fmt(maj["accuracy"][0]),
               _fmt(maj["balanced_accuracy"][0]), _fmt(maj["macro_f1"][0]), _fmt(maj["macro_auc"][0]), "—", "—"])
  for label, acc_ref, auc_ref in REFERENCES:
    rows.append([label, "—", f"{acc_ref:.3f}", "—", "—", f"{auc_ref:.3f}", "—", "—"])
  L += _table(["arm", "seeds", "test accuracy", "test balanced acc.", "test macro-F1", "test macro AUC",
               "test loss", "best val accuracy"], rows)
  L.append("")
  derma = any("derma" in d.lower() for d in datasets)
  L.append("The MedMNIST v2 rows are published DermaMNIST test-split numbers (7 classes) from end-to-end "
           "trained networks; " + ("this run's dataset is DermaMNIST-based, so they are a level reference "
                                   "(note: our backbones are frozen)." if derma else
                                   "this run's dataset is not recognisably DermaMNIST, so they are not directly "
                                   "comparable."))
  L.append("")

  # per-class recall
  k = max((len(r.test.get("per_class_recall") or []) for arm in arms.values() for r in arm.runs), default=0)
  if k:
    names = class_names if class_names and len(class_names) == k else [f"class {i}" for i in range(k)]
    support = arms[next(iter(arms))].runs[0].test.get("support")
    header = ["class", *(["test support"] if support and len(support) == k else []), *[f"`{a}`" for a in arms]]
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
    L += ["### Per-class test recall (mean ± std over seeds; n/a = class absent from the test split)", ""]
    L += _table(header, rows)
    L.append("")

  # --- figures
  L += ["## Figures", ""]
  band = " Lines are means over seeds, bands ±1 sample std." if max(n_seeds.values()) > 1 else ""
  L.append(f"Loss, train and validation, both arms.{band}")
  L += ["", "![loss](figures/loss.png)", "", "Accuracy, train and validation:", "",
        "![accuracy](figures/accuracy.png)", "",
        "Overfitting gap per epoch (left: train − val accuracy; right: val − train loss):", "",
        "![gap](figures/gap.png)", ""]
  for a, (fname, n) in confusion_files.items():
    L.append(f"Test confusion matrix of `{a}`, counts **summed over {n} seed(s)**, colours row-normalised "
             f"(recall on the diagonal):")
    L += ["", f"![confusion {a}](figures/{fname})", ""]

  # --- (e) conclusion
  L += _conclusion(summary, n_seeds)

  path = os.path.join(workdir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(L).rstrip() + "\n")
  return path


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
    if any(json.dumps(v, sort_keys=True, default=str) != json.dumps(vals[0], sort_keys=True, default=str)
           for v in vals[1:]):
      rows.append([f"`{key}`", *[f"`{_fmt_value(v)}`" for v in vals]])
  if len(rows) > limit:
    rows = rows[:limit] + [["…", *[f"({len(rows) - limit} more)"] + [""] * (len(arms) - 1)]]
  return rows


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m derm_jax.report", description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="compare workdir holding arms/<arm>/seed_<s>/")
  args = parser.parse_args(argv)
  try:
    path = write_report(args.workdir)
  except ReportError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
