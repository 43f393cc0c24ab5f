"""write_report: DIR/report.md and DIR/figures/*.png of a study workdir, assembled from the
analysis of each protocol and label fraction, the section lines, the figures and the
conclusion. Does not import jax.
"""

from __future__ import annotations

import os
from typing import Any

from derm_jax import arms as arm_table
from derm_jax import fileio, plots
from derm_jax.report import figures as report_figures
from derm_jax.report.analysis import (
  EFFICIENCY_METRICS,
  SetAnalysis,
  analyse_sets,
  label_efficiency,
  mean_std,
  seed_summary,
  summarize,
)
from derm_jax.report.closed_form import lines as closed_form_lines
from derm_jax.report.formatting import (
  config_field,
  flatten,
  fms,
  fmt,
  fmt_ci,
  fmt_value,
  int_list,
  table,
)
from derm_jax.report.lesions import lesion_lines, subgroup_lines
from derm_jax.report.runs import (
  CLASSIFIER,
  FULL,
  PROBE,
  PROTOCOL_LABELS,
  TEST_SET,
  ArmRuns,
  Condition,
  Study,
  fraction_name,
  load_study,
  num,
  paper_arm,
  read_json,
  smoke_reasons,
)
from derm_jax.report.sections import (
  CONFIG_FIELDS,
  REFERENCES,
  config_differences,
  data_lines,
  diff_lines,
  efficiency_lines,
  fraction_column,
  interval_lines,
  reference_sentence,
  shift_lines,
  split_sizes,
  training_mode,
  warning_lines,
)
from derm_jax.report.verdicts import SMALL_SPLIT, conclusion, headline_pair

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

TEST_HEADER = [
  "arm",
  "seeds",
  "test accuracy",
  "test balanced acc.",
  "test macro-F1",
  "test macro AUC",
  "test loss",
  "best val accuracy",
]


def _analyse(
  study: Study, n_boot: int, seed: int
) -> tuple[dict[str, SetAnalysis], dict[str, SetAnalysis], dict[Condition, SetAnalysis]]:
  """(identical classifier's sets, linear probe's sets, test-split analysis per condition).

  All labels: every evaluation set, the four interval metrics; the classifier also gets
  calibration. Label fractions: the test split, the label-efficiency metrics only."""
  classifier = analyse_sets(study.arms(), n_boot=n_boot, seed=seed)
  probe_arms = study.arms(PROBE)
  probe = analyse_sets(probe_arms, n_boot, seed, calibration=False) if probe_arms else {}
  tests: dict[Condition, SetAnalysis] = {}
  for cond, arms in study.groups.items():
    if cond == Condition(CLASSIFIER, FULL):
      tests[cond] = classifier[TEST_SET]
    elif cond == Condition(PROBE, FULL):
      tests[cond] = probe[TEST_SET]
    else:
      tests[cond] = analyse_sets(
        arms, n_boot, seed, metrics=EFFICIENCY_METRICS, test_only=True, calibration=False
      )[TEST_SET]
  return classifier, probe, tests


def _test_table(arms: dict[str, ArmRuns], derma: bool) -> list[str]:
  """Mean ± std over seeds of each arm's test_metrics.json, the majority row and (DermaMNIST)
  the MedMNIST reference rows."""
  summary = summarize(arms)
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
        str(len(arm.runs)),
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
    k: mean_std([seed_summary(r)[f"majority_{k}"] for arm in arms.values() for r in arm.runs])
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
  return table(TEST_HEADER, rows) + [""]


def _protocol_lines(study: Study) -> list[str]:
  """Arms (when there are others than the paper's two), protocols and label fractions."""
  L = []
  names = list(study.arms())
  if any(a not in ("vae", "imagenet") for a in names):
    L.append(
      "Arms: "
      + "; ".join(
        f"`{a}` = {arm_table.description(a)}" for a in names
      )
      + "."
    )
    L.append("")
  probes = study.arms(PROBE)
  if not probes and not study.fractions:
    return L
  L.append("Evaluation protocols:")
  L.append("")
  L.append(
    "- **identical classifier** (`arms/`): the classifier of `config.classifier` on each "
    "arm's backbone, fine-tuned or frozen as its config says, all training labels: "
    + ", ".join(f"`{a}`" for a in names)
    + "."
  )
  if probes:
    L.append(
      "- **linear probe** (`probes/`): the arm's backbone frozen, a linear head on its pooled "
      "features, all training labels: " + ", ".join(f"`{a}`" for a in probes) + "."
    )
  for f in study.fractions:
    parts = [
      f"{PROTOCOL_LABELS[p]}: " + ", ".join(f"`{a}`" for a in study.arms(p, f))
      for p in (CLASSIFIER, PROBE)
      if study.arms(p, f)
    ]
    L.append(
      f"- **{fraction_column(f)} of the training labels** (`fractions/{fraction_name(f)}/`, a "
      f"class-stratified subset): " + "; ".join(parts) + "."
    )
  L.append("")
  return L


def _probe_lines(
  study: Study, classifier_sa: SetAnalysis, probe: dict[str, SetAnalysis], derma: bool
) -> list[str]:
  """The second protocol: both protocols' intervals side by side, the probe's test table,
  paired differences and overfitting gaps."""
  probes = study.arms(PROBE)
  sa = probe[TEST_SET]
  L = ["## Second evaluation protocol: linear probe (frozen backbone, linear head)", ""]
  L.append(
    "Each arm's pretrained backbone frozen and a linear head trained on its pooled features "
    "with all training labels (`probes/<arm>/seed_<s>/`): how linearly separable the classes "
    "are in the pretrained features. The identical-classifier numbers above are the first "
    "protocol."
  )
  L.append("")
  L += ["### Both protocols side by side (test split, bootstrap 95% intervals)", ""]
  L.append(
    "Each cell: the metric averaged over seeds [95% percentile bootstrap interval over the test "
    "images]."
  )
  L.append("")
  rows = []
  names = list(dict.fromkeys([*study.arms(), *probes]))
  for a in names:
    for label, s in ((PROTOCOL_LABELS[CLASSIFIER], classifier_sa), (PROTOCOL_LABELS[PROBE], sa)):
      if a not in s.runs:
        continue
      if a not in s.ci:
        rows.append([f"`{a}`", label, "—", *["n/a"] * len(s.metrics)])
        continue
      rows.append(
        [
          f"`{a}`",
          label,
          ", ".join(str(x) for x in s.ci_seeds[a]),
          *[f"{fmt(s.ci[a][m].estimate)} {fmt_ci(s.ci[a][m])}" for m in s.metrics],
        ]
      )
  L += table(
    ["arm", "protocol", "seeds", "accuracy", "balanced accuracy", "macro-F1", "macro AUC"], rows
  )
  L.append("")
  if sa.notes:
    L += [f"- {n}" for n in sa.notes] + [""]
  L += ["### Linear probe: test-set metrics (mean ± std over seeds)", ""]
  L += _test_table(probes, derma=False)  # the reference rows are in the first protocol's table
  if sa.diffs:
    L += ["### Linear probe: differences between the arms (paired bootstrap, test split)", ""]
    L += diff_lines(sa)
  summary = summarize(probes)
  L += ["### Linear probe: overfitting gap at the final epoch (mean ± std over seeds)", ""]
  L += table(
    [
      "arm",
      "seeds",
      "train − val accuracy",
      "val − train loss",
      "largest train − val accuracy gap over epochs",
    ],
    [
      [
        f"`{a}`",
        str(len(arm.runs)),
        fms(summary[a]["gap_acc_final"], sign=True),
        fms(summary[a]["gap_loss_final"], sign=True),
        fms(summary[a]["gap_acc_max"], sign=True),
      ]
      for a, arm in probes.items()
    ],
  )
  L.append("")
  return L


def write_report(workdir: str, n_boot: int = 2000, seed: int = 0, figures: bool = True) -> str:
  """Writes DIR/report.md and DIR/figures/*.png; returns the path of report.md.

  n_boot: bootstrap resamples per interval; seed: the resampling seed (the same resamples
  for every arm, seed and metric of a set, which makes the arm differences paired; each
  outside set gets its own seed derived from it); figures=False skips drawing the figures
  (faster; the report then says they were not drawn).
  """
  workdir = os.fspath(workdir)
  study = load_study(workdir)
  arms = study.arms()
  top_path = fileio.join(workdir, "config.json")
  top = read_json(top_path) if fileio.isfile(top_path) else {}
  top = top if isinstance(top, dict) else {}
  summary = summarize(arms)
  n_seeds = {a: len(arm.runs) for a, arm in arms.items()}
  analysis, probe, tests = _analyse(study, n_boot, seed)
  test_sa = analysis[TEST_SET]
  arm_names = list(arms)
  pair = headline_pair(arm_names)
  eff = label_efficiency(tests) if study.fractions else {}
  smoke = smoke_reasons(study, top)
  banner = (
    "⚠ SMOKE RUN (" + "; ".join(smoke) + "): these numbers test the pipeline only; no "
    "conclusions are drawn."
    if smoke
    else None
  )
  fig_dir = fileio.join(workdir, "figures")
  if figures:
    fileio.makedirs(fig_dir)
  figure_banner = "⚠ SMOKE RUN: a pipeline test, not a result; no conclusions" if smoke else None
  with plots.banner(figure_banner):
    confusion_files, class_names, reliability_files = _draw_figures(
      study, analysis, probe, eff, fig_dir, figures
    )

  # --- header and warnings
  L: list[str] = ["# Self-supervised VAE vs ImageNet transfer: comparison report", ""]
  if banner:
    L += [f"> **{banner}**", ""]
  L.append(
    f"Workdir: `{fileio.abspath(workdir)}`. Paper: Matas et al. 2025, arXiv:2505.16773 "
    "(only its abstract's numbers are known)."
  )
  L.append("")
  sizes = split_sizes(arms, top, test_sa)
  warnings = [f"- ⚠ {w}." for w in study.warnings] + small_split_lines(sizes, analysis)
  warnings += warning_lines(analysis)
  for cond, sa in tests.items():
    if cond == Condition(PROBE, FULL):
      warnings += warning_lines(probe, cond.label)
    elif cond != Condition(CLASSIFIER, FULL):
      warnings += warning_lines({TEST_SET: sa}, cond.label)
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
    epochs = _recorded_epochs(arm)
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
    "Training mode: " + "; ".join(f"`{a}` {training_mode(arm)[1]}" for a, arm in arms.items()) + "."
  )
  L.append("")
  L += _protocol_lines(study)
  rec = {a: _recorded_epochs(arm) for a, arm in arms.items()}
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
    "first epoch. Gaps: train − val accuracy and val − train loss (both > 0 when overfitting). "
    "The paper's values are from a different (proprietary) dataset and setup: compare "
    "directions, not levels."
  )
  L.append("")
  for a in arms:
    L += _paper_table(a, summary[a], n_seeds[a])
  L.append("† The paper does not say which definition its overfitting gap uses.")
  L.append("")

  # --- (c) what the paper lacks
  n_text = ", ".join(f"`{a}` n={k}" for a, k in n_seeds.items())
  protocol = ": identical classifier" if probe else ""
  L += [f"## Test-set metrics (not reported by the paper){protocol}", ""]
  L.append(
    f"Mean ± sample std over seeds ({n_text}), from each run's test_metrics.json. Best val "
    "accuracy = the highest per-epoch validation accuracy of each run (its epoch in brackets, "
    "per seed)."
  )
  L.append("")
  L += _test_table(arms, derma)
  L.append(reference_sentence(arms, top, test_sa, derma))
  L.append("")

  L += ["### Bootstrap 95% intervals (test split)", ""]
  if test_sa.ci:
    L.append(
      f"Percentile bootstrap over the {test_sa.n_images:,} test images ({n_boot:,} resamples). "
      "With several seeds the statistic is the metric averaged over the seeds, each resample "
      "drawing the same images for every seed and arm. The interval shows the uncertainty due "
      "to the finite test set; the ± above shows the seed-to-seed spread."
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
  L += _recall_lines(arms, class_names)
  if test_sa.ece:
    L += ["### Calibration (test split)", ""]
    L.append(
      "Expected calibration error (ECE, top-label, 15 equal-width confidence bins, Guo et al. "
      "2017): the average gap between confidence and accuracy, weighted by the images per bin; "
      "0 = perfectly calibrated. Mean ± std over seeds."
    )
    L.append("")
    L += table(
      ["arm", "seeds", "ECE"],
      [[f"`{a}`", str(len(v)), fms(mean_std(v))] for a, v in test_sa.ece.items()],
    )
    L.append("")

  if probe:
    L += _probe_lines(study, test_sa, probe, derma)
  if eff:
    L += ["## Label efficiency (class-stratified fractions of the training labels)", ""]
    L.append(
      "Each arm trained on a class-stratified fraction of the training labels "
      "(`fractions/<f>/`; 100% = `arms/` and `probes/`) and scored on the same test split. "
      "Each cell: the metric averaged over seeds [95% percentile bootstrap interval over the "
      "test images]; seeds = seeds per fraction."
    )
    L.append("")
    L += efficiency_lines(eff, EFFICIENCY_METRICS)
  with plots.banner(figure_banner):
    L += closed_form_lines(workdir, fig_dir if figures else None, smoke=bool(smoke))

  withheld = "smoke run" if smoke else None
  if len(analysis) > 1:
    L += shift_lines(analysis, arm_names, pair, withheld=withheld)
  if len(probe) > 1:
    L += shift_lines(
      probe,
      list(study.arms(PROBE)),
      headline_pair(list(study.arms(PROBE))),
      title="## In distribution vs shifted: linear probe",
      withheld=withheld,
    )

  L += lesion_lines(arms, test_sa, n_boot, seed)
  L += subgroup_lines(arms)

  # --- figures
  L += _figure_lines(
    study, n_seeds, confusion_files, reliability_files, analysis, probe, eff, figures
  )

  # --- (e) conclusion
  per_seed = {a: {r.seed: seed_summary(r) for r in arm.runs} for a, arm in arms.items()}
  L += conclusion(
    summary, n_seeds, test_sa, tests, per_seed=per_seed, smoke=smoke, val_images=sizes.get("val")
  )

  return fileio.atomic_write_text(fileio.join(workdir, "report.md"), "\n".join(L).rstrip() + "\n")


def _epoch_text(epoch: Any) -> str:
  """'6', or '0.032' for a run stopped inside its first epoch."""
  e = num(epoch)
  if e is None:
    return str(epoch)
  return str(int(e)) if float(e).is_integer() else format(e, ".3g")


def _recorded_epochs(arm: ArmRuns) -> list[str]:
  """The distinct last recorded epochs of an arm's runs, ascending, as text."""
  last = {r.history[-1]["epoch"] for r in arm.runs}
  return [_epoch_text(e) for e in sorted(last, key=lambda e: num(e) or 0.0)]


def small_split_lines(sizes: dict[str, int], analysis: dict[str, SetAnalysis]) -> list[str]:
  """A warning for each validation, test or outside set under `SMALL_SPLIT` images."""
  small = [(f"the {k} split" if k != "val" else "the validation split", n)
           for k, n in sizes.items() if k in ("val", "test") and n < SMALL_SPLIT]
  small += [
    (f"the outside set `{sa.name}`", sa.n_images)
    for sa in analysis.values()
    if sa.shifted and sa.labelled and sa.n_images and sa.n_images < SMALL_SPLIT
  ]
  return [
    f"- ⚠ **Small split: {what} has {n} image{'s' if n != 1 else ''}** (under {SMALL_SPLIT}): "
    f"one image moves its accuracy by {100 / n:.1f} points, so its intervals are wide"
    + (" and the overfitting gap (measured on it) decides nothing" if "validation" in what else "")
    + "; more images are needed before its numbers carry a verdict."
    for what, n in small
    if n
  ]


def _draw_figures(
  study: Study,
  analysis: dict[str, SetAnalysis],
  probe: dict[str, SetAnalysis],
  eff: dict[str, Any],
  fig_dir: str,
  draw: bool,
) -> tuple[dict[str, tuple[str, int]], list[str] | None, dict[str, str]]:
  """Draws every figure (when `draw`); returns the confusion and reliability file names and
  the class names."""
  arms = study.arms()
  report_figures.curves(arms, fig_dir, draw)
  confusion_files, class_names = report_figures.confusion_matrices(arms, fig_dir, draw)
  reliability_files = report_figures.reliability(analysis[TEST_SET], fig_dir, draw)
  if len(analysis) > 1:
    report_figures.shift(
      analysis,
      list(arms),
      fileio.join(fig_dir, "shift_balanced_accuracy.png"),
      "Balanced accuracy in distribution and on shifted data\n"
      "(points: mean over seeds; bars: 95% bootstrap interval)",
      draw,
    )
  if len(probe) > 1:
    report_figures.shift(
      probe,
      list(study.arms(PROBE)),
      fileio.join(fig_dir, "shift_balanced_accuracy_probe.png"),
      "Linear probe: balanced accuracy in distribution and on shifted data\n"
      "(points: mean over seeds; bars: 95% bootstrap interval)",
      draw,
    )
  if eff:
    report_figures.label_efficiency(
      eff, EFFICIENCY_METRICS, fileio.join(fig_dir, "label_efficiency.png"), draw
    )
  return confusion_files, class_names, reliability_files


def _paper_table(a: str, s: dict[str, Any], n: int) -> list[str]:
  """One arm's validation curve and overfitting-gap numbers next to the paper's."""
  pa = paper_arm(a)
  p = PAPER.get(pa) if pa else None
  pv = (lambda k, p=p: p[k]) if p else (lambda k: "—")
  L = [
    f"### `{a}` ({n} seed{'s' if n != 1 else ''})"
    + (f" — paper arm: {p['label']}" if p else " — no matching paper arm"),
    "",
  ]
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
  return L


def _recall_lines(arms: dict[str, ArmRuns], class_names: list[str] | None) -> list[str]:
  """Per-class test recall, mean ± std over seeds, with the class names spelt out."""
  k = max(
    (len(r.test.get("per_class_recall") or []) for arm in arms.values() for r in arm.runs),
    default=0,
  )
  if not k:
    return []
  names = class_names if class_names and len(class_names) == k else [f"class {i}" for i in range(k)]
  support = arms[next(iter(arms))].runs[0].test.get("support")
  with_support = bool(support) and len(support) == k
  header = ["class", *(["test support"] if with_support else []), *[f"`{a}`" for a in arms]]
  rows = []
  for i in range(k):
    row = [names[i], *([str(support[i])] if with_support else [])]
    for arm in arms.values():
      vals = []
      for r in arm.runs:
        recall = r.test.get("per_class_recall") or []
        vals.append(num(recall[i]) if i < len(recall) else None)
      row.append(fms(mean_std(vals)))
    rows.append(row)
  L = [
    "### Per-class test recall (mean ± std over seeds; n/a = class absent from the test split)",
    "",
  ]
  L += table(header, rows)
  L.append("")
  caption = plots.class_caption(names)
  if caption:
    L += [f"Classes: {caption}.", ""]
  return L


def _figure_lines(
  study: Study,
  n_seeds: dict[str, int],
  confusion_files: dict[str, tuple[str, int]],
  reliability_files: dict[str, str],
  analysis: dict[str, SetAnalysis],
  probe: dict[str, SetAnalysis],
  eff: dict[str, Any],
  drawn: bool,
) -> list[str]:
  L = ["## Figures", ""]
  if not drawn:
    L += ["(Not drawn in this report: written with figures=False.)", ""]
  else:
    band = " Lines are means over seeds, bands ±1 sample std." if max(n_seeds.values()) > 1 else ""
    which = "both arms" if len(n_seeds) == 2 else "all arms (identical classifier)"
    L.append(f"Loss, train and validation, {which}.{band}")
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
        "row-normalised (recall on the diagonal):"
      )
      L += ["", f"![confusion {a}](figures/{fname})", ""]
    for a, fname in reliability_files.items():
      L.append(
        f"Reliability diagram of `{a}` (test split, seeds pooled): bars on the diagonal = "
        "calibrated; bars below it = overconfident."
      )
      L += ["", f"![reliability {a}](figures/{fname})", ""]
    if len(analysis) > 1:
      L.append(
        "Balanced accuracy per evaluation set, in distribution and shifted side by side (dotted "
        "line: always predicting the majority class):"
      )
      L += ["", "![shift](figures/shift_balanced_accuracy.png)", ""]
    if len(probe) > 1:
      L.append("The same for the linear probe:")
      L += ["", "![shift, linear probe](figures/shift_balanced_accuracy_probe.png)", ""]
    if eff:
      L.append(
        "Label efficiency: test balanced accuracy (left) and macro AUC (right) against the "
        "fraction of training labels, log scale; colour = arm, line style = protocol (solid: "
        "identical classifier, dashed: linear probe), bars = 95% bootstrap intervals over the "
        "test images:"
      )
      L += ["", "![label efficiency](figures/label_efficiency.png)", ""]
  if study.latent_map:
    seed_dir = study.latent_map.split("/")[1] if study.latent_map.count("/") == 2 else None
    L.append(
      "VAE latent space: a 2-D PCA of the VAE's latent means, coloured by class (written by the "
      "VAE run" + (f", {seed_dir.replace('_', ' ')}" if seed_dir else "") + "):"
    )
    L += ["", f"![VAE latent PCA]({study.latent_map})", ""]
  return L
