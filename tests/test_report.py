"""Tests of derm_jax.report on fake compare workdirs (2 arms x 2 seeds of synthetic histories)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from derm_jax import stats
from derm_jax.evaluation import metrics
from derm_jax.evaluation.predictions import read_predictions_csv, write_predictions_csv
from derm_jax.report import ReportError, write_report

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
  assert "4 of 4 of these differences exceed" in text
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
  """'good': informative probabilities; 'weak': barely informative; 'nv': always nv."""
  rng = np.random.default_rng(seed)
  n = labels.shape[0]
  if kind == "nv":
    p = np.full((n, 7), 0.05)
    p[:, NV] = 0.7
    return p + rng.random((n, 7)) * 1e-3
  logits = rng.normal(size=(n, 7))
  logits[np.arange(n), labels] += {"good": 3.0, "weak": 0.4}[kind]
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
  root, kinds, frozen, data_name="dermamnist", source="embedded", seeds=2, external=False
):
  """kinds: arm -> probability kind per seed ('good' / 'weak' / 'nv'); frozen: arm -> "
  "freeze_backbone."""
  train_labels = _labels(1000, list(range(7)), 1)
  test_labels = _labels(300, list(range(7)), 2)
  test_ids = [f"{1000 + i}" for i in range(300)]
  ext_labels = _labels(120, [1, 4, 5], 3)  # an outside set with bcc, mel, nv only
  ext_ids = [f"ISIC_{i:07d}" for i in range(120)]
  (root / "config.json").parent.mkdir(parents=True, exist_ok=True)
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
      d = root / "arms" / arm / f"seed_{s}"
      d.mkdir(parents=True)
      config = {
        "seed": s,
        "data": {"name": data_name, "source": source, "image_size": 28},
        "freeze_backbone": frozen[arm],
        "init": {"source": arm},
        "model": {"backbone": "convnext_tiny"},
        "train": {"num_epochs": 5, "batch_size": 32},
      }
      (d / "config.json").write_text(json.dumps(config))
      hist = _history(5, 1.0, 0.7, 0.5, 0.6 + 0.01 * a, 0.02 + 0.1 * a, 0.03 + 0.1 * a)
      (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hist))
      probs = _arm_probs(test_labels, kind, 100 * a + s)
      _eval_files(
        d, test_ids, test_labels, probs, train_labels, "test_metrics.json", "test_predictions.csv"
      )
      if external:
        probs = _arm_probs(ext_labels, kind, 200 + 100 * a + s)
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
  assert "Data: **isic2019** (`data.name` = `isic2019`), source `download`" in text
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
  wd = _make_new_workdir(
    tmp_path / "n", {"vae": "good", "imagenet": "weak"}, {"vae": True, "imagenet": True}
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
  assert (
    f"| balanced accuracy | `vae` − `imagenet` = {d.estimate:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}] |"
  ) in text
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
  assert "| balanced accuracy | `vae` − `imagenet` = +0.000 [+0.000, +0.000] |" in text
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
    {"vae": "good", "imagenet": "weak"},
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
  d = stats.paired_bootstrap_diff(
    labels, preds["vae"], preds["imagenet"], "balanced_accuracy", n_boot=N_BOOT
  )
  assert (
    f"| balanced accuracy | `vae` − `imagenet` = {d.estimate:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}] |"
    in part
  )
  assert (
    "Verdict (`isic_subset` (shifted), balanced accuracy): **`vae` generalised better**" in shift
  )
  assert (
    "Verdict (test split (in distribution), balanced accuracy): **`vae` generalised better**"
    in shift
  )
  assert "- `isic_subset`: the answer is the same as in distribution." in shift
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
  assert "- `isic_subset`: **the answer changes** between in-distribution and shifted data." in text
