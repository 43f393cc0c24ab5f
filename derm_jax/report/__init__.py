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
                                              (derm_jax.evaluation.predictions); optional
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
import sys
from collections.abc import Sequence

from derm_jax.report.analysis import SetAnalysis, analyse_sets, summarize
from derm_jax.report.runs import ArmRuns, EvalSet, ReportError, SeedRun, load_compare_dir
from derm_jax.report.write import write_report

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
