"""The report's figures (DIR/figures/*.png): training curves, confusion matrices, reliability
diagrams, balanced accuracy in distribution vs shifted, and label efficiency. Each function
draws its figures only when `draw` is true and returns the file names the report links to.
Does not import jax.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from derm_jax import fileio, plots
from derm_jax.report.analysis import METRIC_NAMES, EfficiencyPoint, SetAnalysis, mean_std
from derm_jax.report.runs import PROTOCOL_LABELS, ArmRuns, num


def safe_name(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def curves(arms: dict[str, ArmRuns], fig_dir: str, draw: bool) -> None:
  """loss.png, accuracy.png and gap.png: per-epoch curves of every arm (mean ± std over seeds)."""
  if not draw:
    return
  runs = {a: [r.history for r in arm.runs] for a, arm in arms.items()}
  plots.save_curves(
    runs,
    ["train/loss", "val/loss"],
    fileio.join(fig_dir, "loss.png"),
    "Loss per epoch (solid: training, dashed: validation)",
    ylabel="cross-entropy loss",
  )
  plots.save_curves(
    runs,
    ["train/accuracy", "val/accuracy"],
    fileio.join(fig_dir, "accuracy.png"),
    "Accuracy per epoch (solid: training, dashed: validation)",
    ylabel="accuracy",
  )
  plots.save_curves(
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


def confusion_matrices(
  arms: dict[str, ArmRuns], fig_dir: str, draw: bool
) -> tuple[dict[str, tuple[str, int]], list[str] | None]:
  """confusion_<arm>.png (test counts summed over seeds); returns ({arm: (file, seeds)}, the
  class names)."""
  files = {}
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
    fname = f"confusion_{safe_name(a)}.png"
    if draw:
      plots.save_confusion_matrix(
        total,
        names,
        fileio.join(fig_dir, fname),
        f"{a}: test confusion matrix (counts summed over {len(cms)} seed(s))",
      )
    files[a] = (fname, len(cms))
  return files, class_names


def reliability(test_sa: SetAnalysis, fig_dir: str, draw: bool) -> dict[str, str]:
  """reliability_<arm>.png of each arm with test predictions (seeds pooled)."""
  files = {}
  for a, bins in test_sa.reliability.items():
    fname = f"reliability_{safe_name(a)}.png"
    k = len(test_sa.ci_seeds.get(a, []))
    if draw:
      plots.save_reliability_diagram(
        bins.confidence,
        bins.accuracy,
        bins.count,
        fileio.join(fig_dir, fname),
        f"{a}: calibration on the test split ({k} seed(s) pooled)",
        edges=bins.edges,
        ece=bins.ece,
      )
    files[a] = fname
  return files


def shift(
  analysis: dict[str, SetAnalysis], arm_names: Sequence[str], path: str, title: str, draw: bool
) -> None:
  """Balanced accuracy per evaluation set (mean over seeds, 95% interval), majority baseline."""
  if not draw:
    return
  sets = [sa for sa in analysis.values() if sa.labelled or not sa.shifted]
  series = {}
  for a in arm_names:
    vals = []
    for sa in sets:
      ms = mean_std([num(ev.metrics.get("balanced_accuracy")) for _, ev in sa.runs.get(a, [])])
      ci = sa.ci.get(a, {}).get("balanced_accuracy")
      vals.append((ms[0], ci.lo if ci else None, ci.hi if ci else None))
    series[a] = vals
  baseline = [
    mean_std(
      [
        num((ev.metrics.get("majority_baseline") or {}).get("balanced_accuracy"))
        for rs in sa.runs.values()
        for _, ev in rs
      ]
    )[0]
    for sa in sets
  ]
  plots.save_interval_groups(
    [sa.short_label for sa in sets],
    series,
    path,
    title,
    "balanced accuracy (mean recall over classes)",
    baseline=baseline,
    baseline_label="always predicting the majority class",
  )


def label_efficiency(
  eff: dict[str, dict[str, dict[str, list[EfficiencyPoint]]]],
  metrics: Sequence[str],
  path: str,
  draw: bool,
) -> None:
  """label_efficiency.png: a panel per metric, a line per arm and protocol, log x axis."""
  if not draw:
    return
  panels: dict[str, dict[tuple[str, str], list[tuple[float, Any, Any, Any]]]] = {}
  for metric in metrics:
    lines = panels.setdefault(f"test {METRIC_NAMES[metric]}", {})
    for protocol, by_arm in eff.items():
      for arm, by_metric in by_arm.items():
        lines[(arm, PROTOCOL_LABELS[protocol])] = [
          (
            p.fraction,
            p.estimate,
            p.interval.lo if p.interval else None,
            p.interval.hi if p.interval else None,
          )
          for p in by_metric.get(metric, [])
        ]
  plots.save_label_efficiency(
    panels,
    path,
    "Test metrics against the fraction of training labels\n"
    "(points: metric averaged over seeds; bars: 95% bootstrap interval over test images)",
  )
