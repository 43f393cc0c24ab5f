"""Markdown report of a study workdir (self-supervised arms vs ImageNet transfer feeding an
identical classifier), side by side with the paper.

  python -m derm_jax.report --workdir=DIR [--n_boot=2000]   (or: write_report(DIR) -> DIR/report.md)

Reads the layout written by the study (`load_study`; every run folder holds the same files):

  DIR/config.json                             the study config (data, seeds, arms); optional
  DIR/arms/<arm>/seed_<s>/                    the identical classifier, all training labels
  DIR/probes/<arm>/seed_<s>/                  linear probe (frozen backbone, linear head);
                                              optional
  DIR/fractions/<f>/arms/<arm>/seed_<s>/      the identical classifier / the linear probe on a
  DIR/fractions/<f>/probes/<arm>/seed_<s>/    class-stratified fraction f of the training
                                              labels, <f> = format(f, "g"); optional
  DIR/vae/seed_<s>/latent_pca.png             the VAE's latent map (older studies:
                                              DIR/vae/latent_pca.png); optional
and in each run folder:
  config.json                 the run's full config (data.name, data.source, freeze_backbone,
                              init.source, label_fraction, head.hidden, ...)
  metrics.jsonl               one JSON object per epoch ("epoch", "train/loss", "val/accuracy",
                              "gap/accuracy", ...)
  test_metrics.json           test metrics, class names, majority baseline
  test_predictions.csv        per-image test probabilities (derm_jax.evaluation.predictions);
                              optional
  external/<set>/metrics.json, external/<set>/predictions.csv
                              the same on an outside evaluation set; optional

Arms are named `vae`, `imagenet`, `scratch`, `simclr`, `imagenet_simclr`, `micle` (any
subset; other names come after these); the paper's comparison is exactly `vae` vs
`imagenet`. Writes DIR/report.md and DIR/figures/*.png: the paper's own table (val loss
and accuracy first -> final with % change, final overfitting gap) per arm next to the
numbers reported by Matas et al. 2025 (arXiv:2505.16773); the metrics the paper lacks
(test accuracy / balanced accuracy / macro-F1 / macro AUC, mean +- std over seeds,
bootstrap 95% intervals, paired bootstrap differences between every pair of arms,
calibration, majority-class and (DermaMNIST only) MedMNIST v2 reference rows); per-class
test recall; the linear probe beside the identical classifier; label efficiency (test
balanced accuracy and macro AUC against the label fraction, figures/label_efficiency.png);
in distribution vs shifted, with the change of each paired difference tested by its own
interval; warnings for runs no better than the majority class or whose config contradicts
their folder; and a conclusion computed from the intervals (the paper's question first,
then which self-supervised arm beats ImageNet and where self-supervision loses). Does not
import jax.

Conventions: "first"/"final" are each run's first and last recorded epoch; every
per-run quantity (including % changes) is computed per seed, then summarised as
mean +- sample std (ddof=1) over seeds; with one seed no std is shown.
Intervals (derm_jax.stats): percentile bootstrap over images, n_boot resamples; an arm's
interval is that of its metric averaged over its seeds, every resample drawing the same
images for every seed and arm of a set, so differences between arms are paired; different
sets are resampled independently. Runs without a predictions file get no interval (the
report says so).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from derm_jax.report.analysis import (
  EfficiencyPoint,
  SetAnalysis,
  ShiftChange,
  analyse_sets,
  label_efficiency,
  shift_change,
  summarize,
)
from derm_jax.report.runs import (
  CLASSIFIER,
  PROBE,
  ArmRuns,
  Condition,
  EvalSet,
  ReportError,
  SeedRun,
  Study,
  load_study,
)
from derm_jax.report.write import write_report

__all__ = [
  "CLASSIFIER",
  "PROBE",
  "ArmRuns",
  "Condition",
  "EfficiencyPoint",
  "EvalSet",
  "ReportError",
  "SeedRun",
  "SetAnalysis",
  "ShiftChange",
  "Study",
  "analyse_sets",
  "label_efficiency",
  "load_study",
  "main",
  "shift_change",
  "summarize",
  "write_report",
]


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m derm_jax.report", description=__doc__.split("\n")[0]
  )
  parser.add_argument(
    "--workdir",
    required=True,
    help="study workdir holding arms/<arm>/seed_<s>/ (and optionally probes/, fractions/)",
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
