"""Tests of derm_jax.report on fake compare workdirs (2 arms x 2 seeds of synthetic histories)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from derm_jax import metrics, plots, stats
from derm_jax.evaluation.predictions import read_predictions_csv, write_predictions_csv
from derm_jax.report import ReportError, analysis, runs, write_report

REPO = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ["akiec", "bcc", "nv"]


def _history(
  epochs: int, vl0: float, vl1: float, va0: float, va1: float, gap_acc: float, gap_loss: float
):
  """Linear val curves from (vl0, va0) to (vl1, va1); the gaps grow linearly from 0 to their final "
  "value."""
  rows = []
  for e in range(1, epochs + 1):
    t = (e - 1) / (epochs - 1)
    val_loss, val_acc = vl0 + t * (vl1 - vl0), va0 + t * (va1 - va0)
    ga, gl = t * gap_acc, t * gap_loss
    rows.append(
      {
        "epoch": e,
        "step": 10 * e,
        "train/loss": val_loss - gl,
        "train/accuracy": val_acc + ga,
        "train/balanced_accuracy": 0.5,
        "train/macro_f1": 0.4,
        "train/macro_auc": 0.8,
        "val/loss": val_loss,
        "val/accuracy": val_acc,
        "val/balanced_accuracy": 0.45,
        "val/macro_f1": 0.35,
        "val/macro_auc": 0.75,
        "gap/accuracy": ga,
        "gap/loss": gl,
        "lr": 1e-3,  # an extra key the report must ignore
      }
    )
  return rows


def _test_metrics(acc: float, bal: float, f1: float, auc: float, recall: list):
  return {
    "loss": 0.7,
    "accuracy": acc,
    "balanced_accuracy": bal,
    "macro_f1": f1,
    "macro_auc": auc,
    "per_class_recall": recall,
    "confusion_matrix": [[3, 1, 0], [1, 4, 1], [0, 2, 20]],
    "class_names": CLASSES,
    "majority_baseline": {
      "accuracy": 0.669,
      "balanced_accuracy": 1 / 3,
      "macro_f1": 0.267,
      "macro_auc": 0.5,
    },
  }


def _write_run(root: pathlib.Path, arm: str, seed: int, history, test, backbone: str):
  d = root / "arms" / arm / f"seed_{seed}"
  d.mkdir(parents=True)
  config = {
    "seed": seed,
    "data": {"dataset": "dermamnist", "image_size": 64},
    "model": {"backbone": backbone},
    "train": {"num_epochs": len(history), "batch_size": 32},
    "pretrain": {"kind": arm},
  }
  (d / "config.json").write_text(json.dumps(config))
  (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
  (d / "test_metrics.json").write_text(json.dumps(test))


def _make_workdir(
  root: pathlib.Path, winner: str, seeds: int = 2, imagenet_epochs: int = 6
) -> pathlib.Path:
  """Two arms; `winner` ('vae' or 'imagenet') gets the small gap and the better test scores."""
  good = {"gap_acc": 0.01, "gap_loss": 0.02, "test": (0.74, 0.60, 0.55, 0.90)}
  bad = {"gap_acc": 0.15, "gap_loss": 0.30, "test": (0.70, 0.45, 0.40, 0.80)}
  specs = {
    # seed 0 and seed 1 curves for the vae arm: val loss 0.9 -> 0.6 and 1.0 -> 0.65,
    # val accuracy 0.40 -> 0.60 and 0.50 -> 0.65.
    "vae": ([(0.9, 0.6, 0.40, 0.60), (1.0, 0.65, 0.50, 0.65)], 8, "convnext_tiny"),
    "imagenet": (
      [(0.8, 0.7, 0.60, 0.70), (0.82, 0.71, 0.62, 0.72)],
      imagenet_epochs,
      "convnext_tiny_in1k",
    ),
  }
  for arm, (curves, epochs, backbone) in specs.items():
    q = good if arm == winner else bad
    for s in range(seeds):
      vl0, vl1, va0, va1 = curves[s]
      jitter = 0.004 * s  # a small seed spread
      hist = _history(epochs, vl0, vl1, va0, va1, q["gap_acc"] + jitter, q["gap_loss"] + jitter)
      acc, bal, f1, auc = (x + jitter for x in q["test"])
      test = _test_metrics(acc, bal, f1, auc, [0.5 + jitter, None, 0.9])
      _write_run(root, arm, s, hist, test, backbone)
  return root


def _is_png(path: pathlib.Path) -> bool:
  with open(path, "rb") as f:
    if f.read(8) != b"\x89PNG\r\n\x1a\n":
      return False
  Image.open(path).verify()
  return True


def test_report_tables_figures_and_conclusion_vae_wins(tmp_path):
  wd = _make_workdir(tmp_path / "cmp", winner="vae")
  path = write_report(str(wd))
  assert path == str(wd / "report.md")
  text = pathlib.Path(path).read_text()

  # Header from config.json.
  assert "convnext_tiny_in1k" in text and "dermamnist" in text
  assert "| `vae` | dermamnist | — | — | convnext_tiny | 64 | 8 | 32 | — | 8 | 0, 1 |" in text
  assert (
    "| `imagenet` | dermamnist | — | — | convnext_tiny_in1k | 64 | 6 | 32 | — | 6 | 0, 1 |" in text
  )
  assert "different numbers of epochs" in text

  # Paper's table, vae arm. Val loss change per seed: (0.6-0.9)/0.9 = -33.333%,
  # (0.65-1.0)/1.0 = -35%: mean -34.167%, sample std 1.1785.
  assert "| val loss change, first → final epoch | -34.17 ± 1.18% | -33.33% |" in text
  # Final val loss: mean(0.6, 0.65) = 0.625, std 0.0354.
  assert "| final val loss | 0.625 ± 0.035 | 0.110 |" in text
  # Val accuracy 0.40 -> 0.60 (+50%) and 0.50 -> 0.65 (+30%): mean 45% -> 62.5%,
  # change +40 ± 14.14%.
  assert "| val accuracy, first → final epoch | 45.0 ± 7.1% → 62.5 ± 3.5% | 45% → 65% |" in text
  assert "| val accuracy change | +40.00 ± 14.14% | +44.44% |" in text
  # Final gaps: vae 0.01 and 0.013 -> +0.012 ± 0.003.
  assert "| final gap: train − val accuracy | +0.012 ± 0.003 | ≈ 0 † |" in text
  # ImageNet arm: loss change (0.7-0.8)/0.8 = -12.5%, (0.71-0.82)/0.82 = -13.41%.
  want = np.mean([-12.5, (0.71 - 0.82) / 0.82 * 100])
  assert f"| val loss change, first → final epoch | {want:+.2f} ± " in text
  assert "| -16.67% |" in text and "grows to +0.060" in text

  # Test-metrics table with n seeds, majority row and the MedMNIST reference row.
  assert "`vae` n=2" in text
  assert "| `vae` | 2 | 0.742 ± 0.003 | 0.602 ± 0.003 | 0.552 ± 0.003 | 0.902 ± 0.003 |" in text
  assert (
    "| majority class (train majority, always predicted) | — | 0.669 | 0.333 | 0.267 | 0.500 |"
    in text
  )
  assert "| MedMNIST v2 ResNet-18 (28) [reference] | — | 0.735 | — | — | 0.917 |" in text
  # Best val accuracy = final (monotone curves): mean(0.60, 0.65) at epoch 8.
  assert "0.625 ± 0.035 (ep 8)" in text and "ep 8.0" not in text
  # Per-class recall, absent class -> n/a.
  assert "| bcc | n/a | n/a |" in text
  assert "| akiec | 0.502 ± 0.003 | 0.502 ± 0.003 |" in text

  # Figures.
  for name in (
    "loss.png",
    "accuracy.png",
    "gap.png",
    "confusion_vae.png",
    "confusion_imagenet.png",
  ):
    assert _is_png(wd / "figures" / name), name
    assert f"figures/{name}" in text
  assert "summed over 2 seed(s)" in text

  # Conclusion.
  assert "**Overall: `vae` generalised better on these data**" in text
  # The gaps decide through the interval of max(gap, 0) over the paired seeds (the rough
  # "k of 4 differences exceed the seed std" count is gone: it decided nothing).
  assert (
    "**`vae`** overfits less: `vae` +0.012 ± 0.003 vs `imagenet` +0.152 ± 0.003; max(gap, 0) "
    "`vae` − `imagenet` = -0.140 [" in text
  )
  assert "of these differences exceed" not in text
  assert "the paper's direction is reproduced" in text


def test_conclusion_imagenet_wins_via_cli(tmp_path):
  wd = _make_workdir(tmp_path / "cmp", winner="imagenet", imagenet_epochs=8)
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run(
    [sys.executable, "-m", "derm_jax.report", f"--workdir={wd}"],
    check=False,
    capture_output=True,
    text=True,
    env=env,
    cwd=str(tmp_path),
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == str(wd / "report.md")
  text = (wd / "report.md").read_text()
  assert "**Overall: `imagenet` generalised better on these data**" in text
  assert "`vae` generalised better" not in text
  assert "the paper's direction is not reproduced" in text
  assert "different numbers of epochs" not in text
  assert _is_png(wd / "figures" / "gap.png")


def test_one_seed_says_no_spread(tmp_path):
  wd = _make_workdir(tmp_path / "cmp", winner="vae", seeds=1)
  text = pathlib.Path(write_report(str(wd), figures=False)).read_text()
  assert "no seed-to-seed spread can be estimated" in text
  # One seed: plain numbers without ±; seed 0 val loss change = -33.33%.
  assert "| val loss change, first → final epoch | -33.33% | -33.33% |" in text
  assert "no seed spread available" in text


def test_mixed_verdict(tmp_path):
  wd = _make_workdir(tmp_path / "cmp", winner="vae")
  # Give imagenet the better test scores while keeping its larger gap.
  for s in (0, 1):
    p = wd / "arms" / "imagenet" / f"seed_{s}" / "test_metrics.json"
    t = json.loads(p.read_text())
    t["balanced_accuracy"], t["macro_auc"] = 0.8 + 0.001 * s, 0.95
    p.write_text(json.dumps(t))
  text = pathlib.Path(write_report(str(wd), figures=False)).read_text()
  assert "**Overall: mixed.** `vae` overfits less" in text
  assert "but `imagenet` scores higher" in text


def test_missing_metrics_file_is_a_clear_error(tmp_path):
  wd = _make_workdir(tmp_path / "cmp", winner="vae")
  missing = wd / "arms" / "vae" / "seed_1" / "metrics.jsonl"
  missing.unlink()
  with pytest.raises(ReportError, match="missing file: .*seed_1/metrics.jsonl"):
    write_report(str(wd))
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run(
    [sys.executable, "-m", "derm_jax.report", f"--workdir={wd}"],
    check=False,
    capture_output=True,
    text=True,
    env=env,
    cwd=str(tmp_path),
    timeout=300,
  )
  assert proc.returncode != 0
  assert str(missing) in proc.stderr
  assert "Traceback" not in proc.stderr


def test_report_package_does_not_import_jax():
  code = "import sys, derm_jax.report; sys.exit(1 if 'jax' in sys.modules else 0)"
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0


def test_missing_arms_dir(tmp_path):
  with pytest.raises(ReportError, match="arms"):
    write_report(str(tmp_path))


# ----------------------------------------------------------------------------- new layout
# Predictions files, frozen / fine-tuned arms, outside evaluation sets.


NAMES7 = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
NV = NAMES7.index("nv")
N_BOOT = 300


def _labels(n, classes, seed):
  rng = np.random.default_rng(seed)
  weights = np.array([3, 5, 11, 1, 11, 67, 2], float)[classes]
  return np.asarray(classes)[rng.choice(len(classes), size=n, p=weights / weights.sum())]


def _arm_probs(labels, kind, seed):
  """'good': informative probabilities; 'weak': barely informative; 'nv': always nv; a number:
  the logit added to the true class (the larger, the better the arm)."""
  rng = np.random.default_rng(seed)
  n = labels.shape[0]
  if kind == "nv":
    p = np.full((n, 7), 0.05)
    p[:, NV] = 0.7
    return p + rng.random((n, 7)) * 1e-3
  logits = rng.normal(size=(n, 7))
  logits[np.arange(n), labels] += {"good": 3.0, "weak": 0.4}.get(kind, kind)
  p = np.exp(logits)
  return p / p.sum(axis=1, keepdims=True)


def _eval_files(d, ids, labels, probs, train_labels, metrics_name, preds_name):
  m = metrics.classification_metrics(labels, probs, 7, loss=0.5)
  m["class_names"] = NAMES7
  m["majority_baseline"] = metrics.majority_baseline(train_labels, labels, 7)
  d.mkdir(parents=True, exist_ok=True)
  (d / metrics_name).write_text(json.dumps(m))
  write_predictions_csv(d / preds_name, ids, labels, probs, NAMES7)
  return m


def _make_new_workdir(
  root,
  kinds,
  frozen,
  data_name="dermamnist",
  source="embedded",
  seeds=2,
  external=False,
  folder="arms",
  label_fraction=None,
  linear=False,
):
  """kinds: arm -> probability kind per seed ('good' / 'weak' / 'nv' / a logit boost); frozen:
  arm -> freeze_backbone. folder: where the runs go ('arms', 'probes', 'fractions/0.1/arms',
  ...); label_fraction: written to each run's config; linear: a linear head (head.hidden 0).
  The test split (300 images) and the outside set are the same in every folder."""
  train_labels = _labels(1000, list(range(7)), 1)
  test_labels = _labels(300, list(range(7)), 2)
  test_ids = [f"{1000 + i}" for i in range(300)]
  ext_labels = _labels(120, [1, 4, 5], 3)  # an outside set with bcc, mel, nv only
  ext_ids = [f"ISIC_{i:07d}" for i in range(120)]
  (root / "config.json").parent.mkdir(parents=True, exist_ok=True)
  # Other probabilities in every folder (arms/ keeps offset 0).
  offset = 0 if folder == "arms" else zlib.crc32(folder.encode()) % 10_000
  (root / "config.json").write_text(
    json.dumps(
      {
        "data": {"name": data_name, "source": source},
        "seeds": list(range(seeds)),
        "arms": list(kinds),
      }
    )
  )
  for a, (arm, kind) in enumerate(kinds.items()):
    for s in range(seeds):
      d = root / folder / arm / f"seed_{s}"
      d.mkdir(parents=True)
      config = {
        "seed": s,
        "data": {"name": data_name, "source": source, "image_size": 28},
        "freeze_backbone": frozen[arm],
        "init": {"source": arm},
        "model": {"backbone": "convnext_tiny"},
        "train": {"num_epochs": 5, "batch_size": 32},
      }
      if label_fraction is not None:
        config["label_fraction"] = label_fraction
      if linear:
        config["head"] = {"hidden": 0}
      (d / "config.json").write_text(json.dumps(config))
      hist = _history(5, 1.0, 0.7, 0.5, 0.6 + 0.01 * a, 0.02 + 0.1 * a, 0.03 + 0.1 * a)
      (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hist))
      probs = _arm_probs(test_labels, kind, offset + 100 * a + s)
      _eval_files(
        d, test_ids, test_labels, probs, train_labels, "test_metrics.json", "test_predictions.csv"
      )
      if external:
        probs = _arm_probs(ext_labels, kind, offset + 200 + 100 * a + s)
        _eval_files(
          d / "external" / "isic_subset",
          ext_ids,
          ext_labels,
          probs,
          train_labels,
          "metrics.json",
          "predictions.csv",
        )
  return root


def _row(text, start):
  return next(line for line in text.splitlines() if line.startswith(start))


def _cells(text, start):
  """The cells of the first table row starting with `start`."""
  return [c.strip() for c in _row(text, start).strip().strip("|").split("|")]


def _section(text, heading):
  """The text from `heading` to the next heading of the same or a higher level."""
  level = heading.split(" ", 1)[0]
  part = text.split(heading, 1)[1]
  stops = [i for i in (part.find(f"\n{'#' * n} ") for n in range(1, len(level) + 1)) if i >= 0]
  return part[: min(stops)] if stops else part


def test_dataset_named_from_config_and_frozen_wording(tmp_path):
  wd = _make_new_workdir(
    tmp_path / "a", {"vae": "good", "imagenet": "good"}, {"vae": True, "imagenet": False}
  )
  text = pathlib.Path(write_report(str(wd), n_boot=N_BOOT, figures=False)).read_text()
  assert "not recognisably DermaMNIST" not in text and "our backbones are frozen" not in text
  assert (
    "Data: **DermaMNIST** (`data.name` = `dermamnist`), source `embedded` (the stratified "
    "DermaMNIST "
    "subset packaged with derm_jax); images per split: test 300"
  ) in text
  assert "| MedMNIST v2 ResNet-18 (28) [reference] | — | 0.735 | — | — | 0.917 |" in text
  assert "`vae` frozen backbone (only the classifier head is trained)" in text
  assert "`imagenet` fine-tuned backbone (trained end to end together with the head)" in text
  assert "A frozen backbone is expected to score below end-to-end training." in text
  assert "This test split has 300 images, not the full 2,005 (the embedded subset)" in text
  assert (
    "| `vae` | dermamnist | vae | yes (frozen) | convnext_tiny | 28 | 5 | 32 | — | 5 | 0, 1 |"
    in text
  )
  assert (
    "| `imagenet` | dermamnist | imagenet | no (fine-tuned) | convnext_tiny | 28 | 5 | 32 | — | 5 "
    "| 0, 1 |" in text
  )

  # Split sizes recorded by the evaluator in test_metrics.json are named too.
  for arm in ("vae", "imagenet"):
    for s in (0, 1):
      p = wd / "arms" / arm / f"seed_{s}" / "test_metrics.json"
      t = json.loads(p.read_text())
      t["data"] = {
        "split": "test",
        "name": "dermamnist",
        "source": "embedded",
        "splits": {"train": 1000, "val": 150, "test": 300},
      }
      p.write_text(json.dumps(t))
  text = pathlib.Path(write_report(str(wd), n_boot=N_BOOT, figures=False)).read_text()
  assert "images per split: train 1,000, val 150, test 300. All arms use the same data." in text

  # Another dataset, both arms fine-tuned: no DermaMNIST references, no frozen wording.
  wd = _make_new_workdir(
    tmp_path / "b",
    {"vae": "good", "imagenet": "good"},
    {"vae": False, "imagenet": False},
    data_name="isic2019",
    source="download",
  )
  text = pathlib.Path(write_report(str(wd), n_boot=N_BOOT, figures=False)).read_text()
  # data.source is DermaMNIST's field (every config carries it): not shown for others.
  assert "Data: **isic2019** (`data.name` = `isic2019`);" in text
  assert "source `download`" not in text
  assert "MedMNIST v2 ResNet-18" not in text
  assert "the MedMNIST v2 numbers are for DermaMNIST, and this run's data are `isic2019`" in text
  assert "frozen backbone (only" not in text and "A frozen backbone" not in text
  assert "`vae` fine-tuned backbone" in text and "`imagenet` fine-tuned backbone" in text


def test_majority_warning_only_for_the_constant_arm(tmp_path):
  wd = _make_new_workdir(
    tmp_path / "w", {"vae": "good", "imagenet": "nv"}, {"vae": True, "imagenet": True}
  )
  text = pathlib.Path(write_report(str(wd), n_boot=N_BOOT, figures=False)).read_text()
  warnings = text.split("## Warnings", 1)[1].split("\n## ", 1)[0]
  assert (
    "⚠ **`imagenet` on the test split (in distribution): predictions statistically "
    "indistinguishable from (or worse than) always predicting the majority class `nv` "
    "(melanocytic nevi)** (seeds 0, 1 of 2)"
  ) in warnings
  assert "predicts the majority class for 100.0% of images" in warnings
  assert "`vae` on the test split" not in warnings
  assert (
    "Caution: `imagenet` is statistically indistinguishable from (or worse than) always "
    "predicting the majority class on the test split" in text
  )


def test_report_numbers_equal_metric_files_and_bootstrap(tmp_path):
  # imagenet: worse than vae but above the majority-class baseline (a 'weak' arm at the
  # baseline would get no verdict; see test_verdicts.py).
  wd = _make_new_workdir(
    tmp_path / "n", {"vae": "good", "imagenet": 1.5}, {"vae": True, "imagenet": True}
  )
  text = pathlib.Path(write_report(str(wd), n_boot=N_BOOT)).read_text()
  tests = {
    arm: [
      json.loads((wd / "arms" / arm / f"seed_{s}" / "test_metrics.json").read_text())
      for s in (0, 1)
    ]
    for arm in ("vae", "imagenet")
  }
  preds = {
    arm: [
      read_predictions_csv(wd / "arms" / arm / f"seed_{s}" / "test_predictions.csv") for s in (0, 1)
    ]
    for arm in ("vae", "imagenet")
  }
  labels = preds["vae"][0].labels

  def ms(vals):
    return f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}"

  for arm in ("vae", "imagenet"):
    want = " | ".join(
      ms([t[k] for t in tests[arm]])
      for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
    )
    assert f"| `{arm}` | 2 | {want} |" in text
    probs = np.stack([p.probs for p in preds[arm]])
    cells = []
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
      est, lo, hi = stats.bootstrap_ci(labels, probs, k, n_boot=N_BOOT, seed=0)
      assert est == pytest.approx(np.mean([t[k] for t in tests[arm]]))
      cells.append(f"{est:.3f} [{lo:.3f}, {hi:.3f}]")
    assert f"| `{arm}` | 0, 1 | {' | '.join(cells)} |" in text
  # Paired differences: pooled over seeds, and the test of a planted difference.
  pa = np.stack([p.probs for p in preds["vae"]])
  pb = np.stack([p.probs for p in preds["imagenet"]])
  d = stats.paired_bootstrap_diff(labels, pa, pb, "balanced_accuracy", n_boot=N_BOOT, seed=0)
  assert d.lo > 0
  header = _cells(text, "| A − B | paired seeds |")
  row = _cells(text, "| `vae` − `imagenet` |")
  assert row[1] == "0, 1"
  assert row[header.index("balanced accuracy")].startswith(
    f"{d.estimate:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}]; 2 of 2 seeds exclude 0; per seed "
  )
  assert (
    "Test balanced accuracy (higher is better): **`vae`** is higher: `vae` − `imagenet` = "
    f"{d.estimate:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}] (95% paired bootstrap over 300 images, mean "
    "over 2 "
    "paired seeds); the interval excludes 0."
  ) in text
  assert "**Overall: `vae` generalised better on these data**" in text
  # Calibration: per-seed ECE, mean ± std, and a reliability figure per arm.
  eces = [stats.expected_calibration_error(labels, p.probs) for p in preds["vae"]]
  assert f"| `vae` | 2 | {ms(eces)} |" in text
  assert _is_png(wd / "figures" / "reliability_vae.png") and "figures/reliability_vae.png" in text
  assert "`vae` on the test split" not in text  # the weak imagenet arm may be flagged, vae never


def test_identical_arms_no_difference_detectable(tmp_path):
  wd = _make_new_workdir(
    tmp_path / "i", {"vae": "good", "imagenet": "good"}, {"vae": True, "imagenet": True}
  )
  for s in (0, 1):  # the imagenet runs' predictions become copies of the vae runs'
    for name in ("test_predictions.csv", "test_metrics.json"):
      src = wd / "arms" / "vae" / f"seed_{s}" / name
      (wd / "arms" / "imagenet" / f"seed_{s}" / name).write_bytes(src.read_bytes())
  text = pathlib.Path(write_report(str(wd), n_boot=N_BOOT, figures=False)).read_text()
  cell = "+0.000 [+0.000, +0.000]; 0 of 2 seeds exclude 0; per seed +0.000 ± 0.000"
  assert _cells(text, "| `vae` − `imagenet` |") == ["`vae` − `imagenet`", "0, 1", *[cell] * 4]
  assert "Test balanced accuracy (higher is better): no difference detectable" in text
  assert "**Overall: no difference detectable on the test set.**" in text


def test_missing_predictions_say_intervals_unavailable(tmp_path):
  wd = _make_new_workdir(
    tmp_path / "m", {"vae": "good", "imagenet": "weak"}, {"vae": True, "imagenet": True}
  )
  (wd / "arms" / "vae" / "seed_1" / "test_predictions.csv").unlink()
  bad = wd / "arms" / "imagenet" / "seed_1" / "test_predictions.csv"
  bad.write_text(bad.read_text().replace(",", ";", 3))
  text = pathlib.Path(write_report(str(wd), n_boot=N_BOOT, figures=False)).read_text()
  assert "`vae` has no interval from seed 1: no test_predictions.csv." in text
  assert "`imagenet` has no interval from seed 1: unreadable predictions file" in text
  assert "| `vae` | 0 | " in text  # the interval uses the seed that has predictions
  for s in (0, 1):
    (wd / "arms" / "vae" / f"seed_{s}" / "test_predictions.csv").unlink(missing_ok=True)
    (wd / "arms" / "imagenet" / f"seed_{s}" / "test_predictions.csv").unlink()
  text = pathlib.Path(write_report(str(wd), n_boot=N_BOOT, figures=False)).read_text()
  assert "Bootstrap intervals are unavailable for the test split (in distribution)" in text
  assert "(No bootstrap interval: predictions files missing.)" in text
  assert (
    "(Not drawn in this report: written with figures=False.)" in text and "figures/" not in text
  )
  assert not (wd / "figures").exists()


def test_shift_section_with_partial_outside_set(tmp_path):
  wd = _make_new_workdir(
    tmp_path / "s",
    {"vae": "good", "imagenet": 1.5},  # worse than vae, above the majority-class baseline
    {"vae": True, "imagenet": False},
    external=True,
  )
  (wd / "vae").mkdir()
  Image.new("RGB", (8, 8)).save(wd / "vae" / "latent_pca.png")
  text = pathlib.Path(write_report(str(wd), n_boot=N_BOOT)).read_text()
  assert "## In distribution vs shifted" in text
  shift = text.split("## In distribution vs shifted", 1)[1].split("\n## ", 1)[0]
  ext = [
    json.loads(
      (wd / "arms" / arm / f"seed_{s}" / "external" / "isic_subset" / "metrics.json").read_text()
    )
    for arm in ("vae", "imagenet")
    for s in (0, 1)
  ]
  sup = ext[0]["support"]
  assert (
    f"120 images. Covers 3 of 7 classes: bcc (basal cell carcinoma, n={sup[1]}), mel (melanoma, "
    f"n={sup[4]}), nv (melanocytic nevi, n={sup[5]}); absent: akiec, bkl, df, vasc"
  ) in shift
  # The vae arm's numbers on the outside set are the metrics files' mean ± std.
  vae = ext[:2]
  cells = " | ".join(
    f"{np.mean([m[k] for m in vae]):.3f} ± {np.std([m[k] for m in vae], ddof=1):.3f}"
    for k in ("accuracy", "balanced_accuracy", "macro_auc")
  )
  assert f"| `vae` | 2 | {cells} |" in shift
  # Per-class recall lists the present classes only.
  part = shift.split("### `isic_subset` (shifted)", 1)[1]
  assert f"| mel | {sup[4]} | " in part and "| akiec |" not in part
  maj = ext[0]["majority_baseline"]
  assert (
    f"| majority class (always predicted) | — | {maj['accuracy']:.3f} | "
    f"{maj['balanced_accuracy']:.3f} |" in part
  )
  # Paired difference on the outside set, and the verdicts.
  preds = {
    arm: np.stack(
      [
        read_predictions_csv(
          wd / "arms" / arm / f"seed_{s}" / "external" / "isic_subset" / "predictions.csv"
        ).probs
        for s in (0, 1)
      ]
    )
    for arm in ("vae", "imagenet")
  }
  labels = read_predictions_csv(
    wd / "arms" / "vae" / "seed_0" / "external" / "isic_subset" / "predictions.csv"
  ).labels
  # The outside set is resampled with its own seed, independently of the test split.
  ext_seed = analysis.bootstrap_seed(0, "isic_subset")
  assert ext_seed != analysis.bootstrap_seed(0, "test") == 0
  d = stats.paired_bootstrap_diff(
    labels, preds["vae"], preds["imagenet"], "balanced_accuracy", n_boot=N_BOOT, seed=ext_seed
  )
  row = _cells(part, "| `vae` − `imagenet` | 0, 1 |")
  assert row[3].startswith(f"{d.estimate:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}]; ")
  assert (
    "Verdict (`isic_subset` (shifted), balanced accuracy): **`vae` generalised better**" in shift
  )
  assert (
    "Verdict (test split (in distribution), balanced accuracy): **`vae` generalised better**"
    in shift
  )
  # The change under shift: (vae − imagenet on the outside set) − (on the test split).
  test_ba = {
    arm: np.mean(
      [
        json.loads((wd / "arms" / arm / f"seed_{s}" / "test_metrics.json").read_text())[
          "balanced_accuracy"
        ]
        for s in (0, 1)
      ]
    )
    for arm in ("vae", "imagenet")
  }
  ext_ba = {
    arm: np.mean([m["balanced_accuracy"] for m in ext[2 * i : 2 * i + 2]])
    for i, arm in enumerate(("vae", "imagenet"))
  }
  change = (ext_ba["vae"] - ext_ba["imagenet"]) - (test_ba["vae"] - test_ba["imagenet"])
  row = _cells(shift, "| `vae` − `imagenet` | `isic_subset` |")
  assert row[5].startswith(f"{change:+.3f} [")
  assert row[3].startswith(f"{test_ba['vae'] - test_ba['imagenet']:+.3f} [")
  assert _is_png(wd / "figures" / "shift_balanced_accuracy.png")
  assert (
    "figures/shift_balanced_accuracy.png" in text
    and "![VAE latent PCA](vae/latent_pca.png)" in text
  )


def test_shift_answer_changes(tmp_path):
  wd = _make_new_workdir(
    tmp_path / "c",
    {"vae": "good", "imagenet": "weak"},
    {"vae": True, "imagenet": True},
    external=True,
  )
  for s in (
    0,
    1,
  ):  # on the outside set, imagenet becomes as good as vae (a copy): no difference detectable
    for name in ("predictions.csv", "metrics.json"):
      src = wd / "arms" / "vae" / f"seed_{s}" / "external" / "isic_subset" / name
      (wd / "arms" / "imagenet" / f"seed_{s}" / "external" / "isic_subset" / name).write_bytes(
        src.read_bytes()
      )
  text = pathlib.Path(write_report(str(wd), n_boot=N_BOOT, figures=False)).read_text()
  assert (
    "Verdict (`isic_subset` (shifted), balanced accuracy): **no difference detectable**" in text
  )
  # The change itself is tested: imagenet's deficit vanishes on the outside set, so
  # (vae − imagenet shifted) − (vae − imagenet in distribution) = −(the test-split difference).
  in_dist = _cells(text, "| `vae` − `imagenet` | 0, 1 |")[3].split(" [")[0]
  row = _cells(text, "| `vae` − `imagenet` | `isic_subset` |")
  assert row[4].startswith("+0.000 [+0.000, +0.000]") and row[3].startswith(in_dist)
  assert row[5].startswith(f"{-float(in_dist):+.3f} [")
  assert row[7] == "**changes**: smaller on the shifted set"
  assert (
    "- `isic_subset`: **the answer changes under shift**: `vae` − `imagenet` in balanced "
    "accuracy is smaller on the shifted set (shifted − test split = "
  ) in text


# ----------------------------------------------------------------------------- planted outcomes
# Arms whose right and wrong images are chosen per seed, so that every number the report
# prints about them follows from simple counting.


def _planted_run(d, ids, labels, right, names, metrics_name, preds_name):
  """A run that is right exactly on the images where `right` is true (probability 0.6 on the
  predicted class), wrong elsewhere (it predicts the next class)."""
  k = len(names)
  labels = np.asarray(labels)
  pred = np.where(right, labels, (labels + 1) % k)
  probs = np.full((labels.shape[0], k), 0.4 / (k - 1))
  probs[np.arange(labels.shape[0]), pred] = 0.6
  m = metrics.classification_metrics(labels, probs, k, loss=0.5)
  m["class_names"] = list(names)
  m["majority_baseline"] = metrics.majority_baseline(labels, labels, k)
  d.mkdir(parents=True, exist_ok=True)
  (d / metrics_name).write_text(json.dumps(m))
  write_predictions_csv(d / preds_name, ids, labels, probs, names)


def _planted_study(root, test_right, ext_right=None, n_test=None, n_ext=None):
  """test_right / ext_right: arm -> one boolean mask per seed over the test / outside images;
  labels cycle through 3 classes (i % 3)."""
  for arm, masks in test_right.items():
    for s, right in enumerate(masks):
      d = root / "arms" / arm / f"seed_{s}"
      labels = np.arange(len(right)) % 3
      _planted_run(
        d,
        [str(i) for i in range(len(right))],
        labels,
        right,
        CLASSES,
        "test_metrics.json",
        "test_predictions.csv",
      )
      config = {"seed": s, "data": {"name": "dermamnist"}, "init": {"source": arm}}
      (d / "config.json").write_text(json.dumps(config))
      hist = _history(3, 1.0, 0.8, 0.5, 0.6, 0.02, 0.03)
      (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hist))
      if ext_right is not None:
        right = ext_right[arm][s]
        _planted_run(
          d / "external" / "outside",
          [f"ISIC_{i:07d}" for i in range(len(right))],
          np.arange(len(right)) % 3,
          right,
          CLASSES,
          "metrics.json",
          "predictions.csv",
        )
  return root


def _mask(n, *ranges):
  m = np.zeros(n, bool)
  for lo, hi in ranges:
    m[lo:hi] = True
  return m


def test_paired_cells_equal_planted_differences(tmp_path):
  """Per seed, vae − imagenet is planted: seed 0 vae is right on 30 more images (10 per class),
  seed 1 both are right on the same images, seed 2 vae gains 15 images and loses 15 (5 per
  class each). So per seed the difference in accuracy and in balanced accuracy is 1/3, 0, 0,
  and only seed 0's own interval can exclude 0 (seed 1's is exactly [0, 0])."""
  n = 90
  right = {
    "vae": [_mask(n, (0, 72)), _mask(n, (0, 60)), _mask(n, (0, 45))],
    "imagenet": [_mask(n, (0, 42)), _mask(n, (0, 60)), _mask(n, (0, 30), (45, 60))],
  }
  wd = _planted_study(tmp_path / "p", right)
  text = pathlib.Path(write_report(str(wd), n_boot=N_BOOT, figures=False)).read_text()
  per_seed = [
    (ra.sum() - rb.sum()) / n for ra, rb in zip(right["vae"], right["imagenet"], strict=True)
  ]
  assert per_seed == [1 / 3, 0.0, 0.0]
  mean, std = np.mean(per_seed), np.std(per_seed, ddof=1)
  header = _cells(text, "| A − B | paired seeds |")
  row = _cells(text, "| `vae` − `imagenet` |")
  assert row[1] == "0, 1, 2"
  for metric in ("accuracy", "balanced accuracy"):
    cell = row[header.index(metric)]
    assert cell.startswith(f"{mean:+.3f} [")
    assert cell.endswith(f"; 1 of 3 seeds exclude 0; per seed {mean:+.3f} ± {std:.3f}"), cell
  # The pooled interval: seed 0's gain is in every resample, seed 2's swaps average out.
  lo = float(row[header.index("accuracy")].split("[")[1].split(",")[0])
  assert 0 < lo < mean
  assert (
    "Test balanced accuracy (higher is better): **`vae`** is higher: `vae` − `imagenet` = "
    f"{mean:+.3f} [" in text
  )


def test_paper_arm_is_exact_and_unknown_arms_come_last(tmp_path):
  assert runs.paper_arm("vae") == "self_supervised" and runs.paper_arm("imagenet") == "imagenet"
  for name in ("imagenet_simclr", "simclr", "micle", "scratch", "vae_large"):
    assert runs.paper_arm(name) is None, name
  assert runs.is_self_supervised("imagenet_simclr") and not runs.is_self_supervised("scratch")
  assert sorted(["zeta", "micle", "alpha", "imagenet", "vae"], key=runs.arm_sort_key) == [
    "vae",
    "imagenet",
    "micle",
    "alpha",
    "zeta",
  ]


# Every pair of arms, in the report's order: A − B with ImageNet, then scratch, as B.
SIX_ARM_PAIRS = [
  ("vae", "imagenet"),
  ("scratch", "imagenet"),
  ("simclr", "imagenet"),
  ("imagenet_simclr", "imagenet"),
  ("zeta", "imagenet"),
  ("vae", "scratch"),
  ("simclr", "scratch"),
  ("imagenet_simclr", "scratch"),
  ("zeta", "scratch"),
  ("vae", "simclr"),
  ("vae", "imagenet_simclr"),
  ("simclr", "imagenet_simclr"),
  ("vae", "zeta"),
  ("simclr", "zeta"),
  ("imagenet_simclr", "zeta"),
]


def test_every_pair_of_arms_in_one_table_and_who_beats_imagenet(tmp_path):
  # Every arm of the verdicts above the majority-class baseline (vae at 0.2 was not: it now
  # gets no verdict, see test_verdicts.py).
  kinds = {"zeta": 1.0, "simclr": 3.0, "imagenet": 1.5, "scratch": 0.6, "vae": 0.7}
  kinds["imagenet_simclr"] = 2.5
  wd = _make_new_workdir(tmp_path / "six", kinds, {a: False for a in kinds})
  text = pathlib.Path(write_report(str(wd), n_boot=100, figures=False)).read_text()
  order = ["vae", "imagenet", "scratch", "simclr", "imagenet_simclr", "zeta"]
  setup = _section(text, "## Setup")
  table = setup.split("| arm | dataset |", 1)[1].split("\n\n", 1)[0]
  assert [line.split("`")[1] for line in table.splitlines() if line.startswith("| `")] == order
  assert "`zeta` = an arm this report does not know" in setup
  assert "`imagenet_simclr` = self-supervised, contrastive" in setup
  # imagenet_simclr is not the paper's ImageNet arm; the paper's table covers every arm.
  assert "### `imagenet_simclr` (2 seeds) — no matching paper arm" in text
  assert "### `imagenet` (2 seeds) — paper arm: ImageNet transfer" in text
  assert "### `scratch` (2 seeds) — no matching paper arm" in text

  test_part = _section(text, "### Differences between the arms (paired bootstrap, test split)")
  rows = [line for line in test_part.splitlines() if line.startswith("| `")]
  assert [tuple(c.strip("`") for c in r.split("|")[1].strip().split(" − ")) for r in rows] == (
    SIX_ARM_PAIRS
  )
  acc = {
    arm: np.mean(
      [
        json.loads((wd / "arms" / arm / f"seed_{s}" / "test_metrics.json").read_text())["accuracy"]
        for s in (0, 1)
      ]
    )
    for arm in order
  }
  for a, b in SIX_ARM_PAIRS:
    cells = _cells(test_part, f"| `{a}` − `{b}` |")
    assert cells[2].startswith(f"{acc[a] - acc[b]:+.3f} ["), (a, b, cells[2])

  # The conclusion: the paper's question first, then the self-supervised arms vs ImageNet.
  concl = text.split("## Conclusion", 1)[1]
  paper = concl.index("### The paper's question: `vae` (self-supervised VAE) vs `imagenet`")
  assert paper < concl.index("### Self-supervised arms vs ImageNet")
  # Only vae and imagenet enter the headline verdict (zeta has the smallest gap of all arms,
  # simclr the best test scores).
  assert "**Overall: `imagenet` generalised better on these data**" in concl
  assert "Test balanced accuracy (higher is better): **`imagenet`** is higher" in concl
  label = "identical classifier, all training labels"
  assert (
    f"**Self-supervised arms that beat ImageNet:** `simclr` ({label}) and `imagenet_simclr` "
    f"({label})."
  ) in concl
  assert f"**Where self-supervision loses to ImageNet:** `vae` ({label})." in concl
  board = _cells(concl, "| `simclr` |")
  assert board[1].startswith("**beats**: balanced accuracy +")
  assert _cells(concl, "| `vae` |")[1].startswith("**loses**: balanced accuracy -")
  assert "| `scratch` |" not in concl and "| `zeta` |" not in concl  # not self-supervised


def test_linear_probe_and_label_fractions(tmp_path, monkeypatch):
  # Of the figures only label_efficiency.png is tested here: the others are not drawn (time).
  for name in ("save_curves", "save_confusion_matrix", "save_reliability_diagram"):
    monkeypatch.setattr(plots, name, lambda *args, **kwargs: None)
  root = tmp_path / "lf"
  signal = {0.01: 0.3, 0.1: 1.0, 1.0: 2.5}  # more labels, a better arm
  for protocol, folder in (("classifier", "arms"), ("probe", "probes")):
    for f, boost in signal.items():
      where = folder if f == 1.0 else f"fractions/{format(f, 'g')}/{folder}"
      _make_new_workdir(
        root,
        {"vae": boost - 0.2, "imagenet": boost + (0.5 if protocol == "probe" else 0.0)},
        {"vae": protocol == "probe", "imagenet": protocol == "probe"},
        folder=where,
        label_fraction=f,
        linear=protocol == "probe",
      )
  # Two config contradictions the report must flag.
  p = root / "probes" / "imagenet" / "seed_1" / "config.json"
  p.write_text(json.dumps({**json.loads(p.read_text()), "freeze_backbone": False}))
  p = root / "fractions" / "0.1" / "arms" / "vae" / "seed_0" / "config.json"
  p.write_text(json.dumps({**json.loads(p.read_text()), "label_fraction": 0.5}))
  text = pathlib.Path(write_report(str(root), n_boot=100)).read_text()

  warnings = _section(text, "## Warnings")
  assert (
    "`probes/imagenet/seed_1`: a linear-probe run whose config.json has `freeze_backbone` = false"
  ) in warnings
  assert (
    "`fractions/0.1/arms/vae/seed_0`: config.json says `label_fraction` = 0.5, but the run is in "
    "the folder for 0.1"
  ) in warnings
  setup = _section(text, "## Setup")
  assert "- **linear probe** (`probes/`): the arm's backbone frozen" in setup
  assert (
    "- **1% of the training labels** (`fractions/0.01/`, a class-stratified subset): identical "
    "classifier: `vae`, `imagenet`; linear probe: `vae`, `imagenet`."
  ) in setup

  def mean_metric(folder, arm, metric):
    return np.mean(
      [
        json.loads((root / folder / arm / f"seed_{s}" / "test_metrics.json").read_text())[metric]
        for s in (0, 1)
      ]
    )

  def preds(folder, arm):
    ps = [
      read_predictions_csv(root / folder / arm / f"seed_{s}" / "test_predictions.csv")
      for s in (0, 1)
    ]
    return ps[0].labels, np.stack([p.probs for p in ps])

  # The second protocol: both protocols' rows side by side, the probe's own tables.
  probe = _section(text, "## Second evaluation protocol: linear probe")
  for arm in ("vae", "imagenet"):
    for protocol, folder in (("identical classifier", "arms"), ("linear probe", "probes")):
      cells = _cells(probe, f"| `{arm}` | {protocol} |")
      want = mean_metric(folder, arm, "balanced_accuracy")
      assert cells[4].startswith(f"{want:.3f} ["), (arm, protocol, cells)
  probe_table = _section(probe, "### Linear probe: test-set metrics")
  acc = [
    json.loads((root / "probes" / "vae" / f"seed_{s}" / "test_metrics.json").read_text())[
      "accuracy"
    ]
    for s in (0, 1)
  ]
  assert _cells(probe_table, "| `vae` |")[2] == f"{np.mean(acc):.3f} ± {np.std(acc, ddof=1):.3f}"
  diffs = _section(probe, "### Linear probe: differences between the arms")
  want = mean_metric("probes", "vae", "macro_auc") - mean_metric("probes", "imagenet", "macro_auc")
  assert _cells(diffs, "| `vae` − `imagenet` |")[5].startswith(f"{want:+.3f} [")
  assert "| `vae` | 2 | +0.020 ± 0.000 |" in _section(probe, "### Linear probe: overfitting gap")

  # Label efficiency: every fraction's cell is the metric averaged over seeds [its interval].
  eff = _section(text, "## Label efficiency")
  for metric, name in (("balanced_accuracy", "balanced accuracy"), ("macro_auc", "macro AUC")):
    table = eff.split(f"Test {name} by fraction of the training labels:", 1)[1]
    assert _cells(table, "| arm | protocol |") == ["arm", "protocol", "seeds", "1%", "10%", "100%"]
    for arm in ("vae", "imagenet"):
      for protocol, folder in (("identical classifier", "arms"), ("linear probe", "probes")):
        want = [arm, protocol, "2"]
        for f in (0.01, 0.1, 1.0):
          where = folder if f == 1.0 else f"fractions/{format(f, 'g')}/{folder}"
          labels, probs = preds(where, arm)
          est, lo, hi = stats.bootstrap_ci(labels, probs, metric, n_boot=100, seed=0)
          assert est == pytest.approx(mean_metric(where, arm, metric))
          want.append(f"{mean_metric(where, arm, metric):.3f} [{lo:.3f}, {hi:.3f}]")
        assert _cells(table, f"| `{arm}` | {protocol} |") == [f"`{want[0]}`", *want[1:]]
  assert _is_png(root / "figures" / "label_efficiency.png")
  assert "![label efficiency](figures/label_efficiency.png)" in text

  # The conclusion compares vae with imagenet under every protocol and fraction.
  board = _section(text, "### Self-supervised arms vs ImageNet")
  assert _cells(board, "| A (vs `imagenet`) |") == [
    "A (vs `imagenet`)",
    "identical classifier, all training labels",
    "linear probe, all training labels",
    "identical classifier, 1% of the training labels",
    "linear probe, 1% of the training labels",
    "identical classifier, 10% of the training labels",
    "linear probe, 10% of the training labels",
  ]
  assert _cells(board, "| `vae` |")[2].startswith("**loses**: balanced accuracy -")


def test_shift_change_is_tested_on_the_change_itself(tmp_path):
  """vae − imagenet is +0.1 on both sets. On 600 test images that interval excludes 0, on 60
  outside images it does not: the verdicts differ, but the change (0) is not detectable, and
  the report must not say that the answer changes. Then imagenet becomes better outside: a
  change of −0.4 that it must report."""
  n, m = 600, 60
  test = {  # vae: +1 on 90 images (30 per class), −1 on 30 (10 per class)
    "vae": [_mask(n, (0, 390), (420, 510))] * 2,
    "imagenet": [_mask(n, (0, 420))] * 2,
  }
  ext = {  # +1 on 9 images (3 per class), −1 on 3 (1 per class)
    "vae": [_mask(m, (0, 30), (33, 42))] * 2,
    "imagenet": [_mask(m, (0, 33))] * 2,
  }
  wd = _planted_study(tmp_path / "same", test, ext)
  text = pathlib.Path(write_report(str(wd), n_boot=400, figures=False)).read_text()
  assert "Verdict (test split (in distribution), balanced accuracy): **`vae` generalised" in text
  assert "Verdict (`outside` (shifted), balanced accuracy): **no difference detectable**" in text
  row = _cells(text, "| `vae` − `imagenet` | `outside` |")
  assert row[3].startswith("+0.100 [") and row[4].startswith("+0.100 [")
  assert row[5].startswith("+0.000 [") and row[7] == "no detectable change"
  assert "**the answer changes" not in text and "**changes**" not in text
  assert (
    "- `outside`: no detectable change of `vae` − `imagenet` under shift (shifted − test split = "
    "+0.000 ["
  ) in text
  assert "although the two sets' verdicts differ" in text

  ext["vae"] = [_mask(m, (0, 30), (51, 54))] * 2  # +1 on 3 images, −1 on 21: −0.3
  ext["imagenet"] = [_mask(m, (0, 51))] * 2
  wd = _planted_study(tmp_path / "changed", test, ext)
  text = pathlib.Path(write_report(str(wd), n_boot=400, figures=False)).read_text()
  row = _cells(text, "| `vae` − `imagenet` | `outside` |")
  assert row[4].startswith("-0.300 [") and row[5].startswith("-0.400 [")
  assert row[7] == "**changes**: smaller on the shifted set"
  assert "- `outside`: **the answer changes under shift**" in text


def test_shift_change_resamples_both_sets_independently(tmp_path):
  """The outside set is a copy of the test split (other image ids, same size): a change
  computed on the same resamples of both would be exactly 0 in every resample; resampling
  both sets independently gives a half-width of about sqrt(2) times either set's."""
  n = 300
  right = {"vae": [_mask(n, (0, 240))], "imagenet": [_mask(n, (0, 210))]}
  wd = _planted_study(tmp_path / "copy", right, right)
  text = pathlib.Path(write_report(str(wd), n_boot=1000, figures=False)).read_text()
  row = _cells(text, "| `vae` − `imagenet` | `outside` |")

  def half_width(cell):
    lo, hi = (float(x) for x in cell.split("[")[1].split("]")[0].split(","))
    return (hi - lo) / 2

  h_in, h_out, h_change = (half_width(row[i]) for i in (3, 4, 5))
  assert h_in > 0 and h_out > 0
  assert h_change == pytest.approx(np.hypot(h_in, h_out), rel=0.15)
  # and the expected size from the planted design: 30 of 300 images differ, all in vae's favour
  p = 30 / n
  assert h_change == pytest.approx(1.96 * np.sqrt(2 * p * (1 - p) / n), rel=0.15)


def test_latent_map_of_the_first_vae_seed(tmp_path):
  wd = _make_workdir(tmp_path / "cmp", winner="vae", seeds=1)
  for s in (3, 1):
    (wd / "vae" / f"seed_{s}").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(wd / "vae" / f"seed_{s}" / "latent_pca.png")
  (wd / "vae" / "seed_0").mkdir()  # a seed folder without a latent map
  text = pathlib.Path(write_report(str(wd), figures=False)).read_text()
  assert "![VAE latent PCA](vae/seed_1/latent_pca.png)" in text
  assert "seed_3" not in text


def test_bad_fraction_folders_are_clear_errors(tmp_path):
  wd = _make_workdir(tmp_path / "cmp", winner="vae", seeds=1)
  (wd / "fractions" / "half" / "arms").mkdir(parents=True)
  with pytest.raises(ReportError, match="fractions/half: expected a label fraction"):
    write_report(str(wd), figures=False)
  (wd / "fractions" / "half" / "arms").rmdir()
  (wd / "fractions" / "half").rmdir()
  (wd / "fractions" / "1").mkdir()  # all labels are arms/ and probes/, not a fraction
  with pytest.raises(ReportError, match="fractions/1: expected a label fraction"):
    write_report(str(wd), figures=False)
  (wd / "fractions" / "1").rmdir()
  (wd / "fractions" / "0.1").mkdir()
  with pytest.raises(ReportError, match="holds neither arms/ nor probes/"):
    write_report(str(wd), figures=False)
  (wd / "fractions" / "0.10" / "arms").mkdir(parents=True)
  (wd / "fractions" / "0.1" / "arms").mkdir()
  with pytest.raises(ReportError, match="are the same label fraction"):
    write_report(str(wd), figures=False)
