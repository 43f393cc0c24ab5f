"""write_report: DIR/report.md and DIR/figures/*.png of a compare workdir, assembled from the
analysis, the section lines and the conclusion. Does not import jax.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from derm_jax import fileio, plots
from derm_jax.report.analysis import analyse_sets, mean_std, seed_summary, summarize
from derm_jax.report.formatting import (
  config_field,
  flatten,
  fms,
  fmt,
  fmt_value,
  int_list,
  table,
)
from derm_jax.report.runs import TEST_SET, load_compare_dir, num, paper_arm, read_json
from derm_jax.report.sections import (
  CONFIG_FIELDS,
  REFERENCES,
  config_differences,
  data_lines,
  diff_lines,
  interval_lines,
  reference_sentence,
  shift_lines,
  training_mode,
  warning_lines,
)
from derm_jax.report.verdicts import conclusion

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


def _safe_name(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def write_report(workdir: str, n_boot: int = 2000, seed: int = 0, figures: bool = True) -> str:
  """Writes DIR/report.md and DIR/figures/*.png; returns the path of report.md.

  n_boot: bootstrap resamples per interval; seed: the resampling seed (the same resamples
  for every arm, seed and metric, which makes the arm differences paired); figures=False
  skips drawing the figures (faster; the report then says they were not drawn).
  """
  workdir = os.fspath(workdir)
  arms = load_compare_dir(workdir)
  top_path = fileio.join(workdir, "config.json")
  top = read_json(top_path) if fileio.isfile(top_path) else {}
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
  warnings = warning_lines(analysis)
  if warnings:
    L += ["## Warnings", ""] + warnings + [""]

  # --- setup
  rows = []
  for a, arm in arms.items():
    flat = flatten(arm.runs[0].config)
    vals = {f: config_field(flat, names) for f, names in CONFIG_FIELDS.items()}
    frozen = training_mode(arm)[0]
    vals["frozen backbone"] = (
      None if frozen is None else ("yes (frozen)" if frozen else "no (fine-tuned)")
    )
    epochs = sorted({int(r.history[-1]["epoch"]) for r in arm.runs})
    rows.append(
      [
        f"`{a}`",
        *[fmt_value(vals[f]) for f in CONFIG_FIELDS],
        "/".join(str(e) for e in epochs),
        ", ".join(str(r.seed) for r in arm.runs),
      ]
    )
  L += ["## Setup (from each arm's seed config.json)", ""]
  L += table(["arm", *CONFIG_FIELDS, "epochs (recorded)", "seeds"], rows)
  L.append("")
  data_text, derma = data_lines(arms, top, test_sa)
  L += data_text
  L.append(
    "Training mode: "
    + "; ".join(f"`{a}` {training_mode(arm)[1]}" for a, arm in arms.items())
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
  diffs = config_differences(arms)
  if diffs:
    L += ["Config entries that differ between arms (seed config; seed fields left out):", ""]
    L += table(["key", *[f"`{a}`" for a in arms]], diffs)
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
    pa = paper_arm(a)
    p = PAPER.get(pa) if pa else None
    pv = (lambda k, p=p: p[k]) if p else (lambda k: "—")
    L.append(
      f"### `{a}` ({n_seeds[a]} seed{'s' if n_seeds[a] != 1 else ''})"
      + (f" — paper arm: {p['label']}" if p else " — no matching paper arm")
    )
    L.append("")
    acc = (
      f"{fms(s['val_acc_first'], digits=1, scale=100, suffix='%')} → "
      f"{fms(s['val_acc_final'], digits=1, scale=100, suffix='%')}"
    )
    L += table(
      ["quantity", "this run", "paper (reported)"],
      [
        ["final val loss", fms(s["val_loss_final"]), pv("final_val_loss")],
        [
          "val loss change, first → final epoch",
          fms(s["val_loss_change"], digits=2, suffix="%", sign=True),
          pv("val_loss_change"),
        ],
        ["val accuracy, first → final epoch", acc, pv("val_acc")],
        [
          "val accuracy change",
          fms(s["val_acc_change"], digits=2, suffix="%", sign=True),
          pv("val_acc_change"),
        ],
        [
          "final gap: train − val accuracy",
          fms(s["gap_acc_final"], sign=True),
          pv("gap") + (" †" if p else ""),
        ],
        [
          "final gap: val − train loss",
          fms(s["gap_loss_final"], sign=True),
          pv("gap") + (" †" if p else ""),
        ],
        ["largest train − val accuracy gap over epochs", fms(s["gap_acc_max"], sign=True), "—"],
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
    best = fms(s["val_acc_best"])
    best_epochs = [seed_summary(r)["best_epoch"] for r in arm.runs]
    if any(e is not None for e in best_epochs):
      best += f" (ep {int_list(best_epochs)})"
    rows.append(
      [
        f"`{a}`",
        str(n_seeds[a]),
        fms(s["test_accuracy"]),
        fms(s["test_balanced_accuracy"]),
        fms(s["test_macro_f1"]),
        fms(s["test_macro_auc"]),
        fms(s["test_loss"]),
        best,
      ]
    )
  # Majority baseline: the same for every run when the splits are fixed; averaged over all runs.
  maj = {
    k: mean_std(
      [v for a in arms for v in [seed_summary(r)[f"majority_{k}"] for r in arms[a].runs]]
    )
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
  }
  rows.append(
    [
      "majority class (train majority, always predicted)",
      "—",
      fmt(maj["accuracy"][0]),
      fmt(maj["balanced_accuracy"][0]),
      fmt(maj["macro_f1"][0]),
      fmt(maj["macro_auc"][0]),
      "—",
      "—",
    ]
  )
  if derma:
    for label, acc_ref, auc_ref in REFERENCES:
      rows.append([label, "—", f"{acc_ref:.3f}", "—", "—", f"{auc_ref:.3f}", "—", "—"])
  L += table(
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
  L.append(reference_sentence(arms, top, test_sa, derma))
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
  L += interval_lines(test_sa, n_boot, arm_names)
  if test_sa.diffs:
    L += ["### Differences between the arms (paired bootstrap, test split)", ""]
    L.append(
      "Each difference is arm A − arm B on the same resampled test images; per seed, arm A's run "
      "with seed s is paired with arm B's run with seed s. An interval that contains 0 means no "
      "difference is detectable on this test set."
    )
    L.append("")
    L += diff_lines(test_sa)

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
          vals.append(num(recall[i]) if i < len(recall) else None)
        row.append(fms(mean_std(vals)))
      rows.append(row)
    L += [
      "### Per-class test recall (mean ± std over seeds; n/a = class absent from the test split)",
      "",
    ]
    L += table(header, rows)
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
    L += table(
      ["arm", "seeds", "ECE"],
      [[f"`{a}`", str(len(v)), fms(mean_std(v))] for a, v in test_sa.ece.items()],
    )
    L.append("")

  if shifted:
    L += shift_lines(analysis, arm_names)

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
  L += conclusion(summary, n_seeds, test_sa)

  return fileio.atomic_write_text(fileio.join(workdir, "report.md"),
                                  "\n".join(L).rstrip() + "\n")
