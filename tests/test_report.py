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

from derm_jax.report import ReportError, write_report

REPO = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ["akiec", "bcc", "nv"]


def _history(epochs: int, vl0: float, vl1: float, va0: float, va1: float, gap_acc: float, gap_loss: float):
  """Linear val curves from (vl0, va0) to (vl1, va1); the gaps grow linearly from 0 to their final value."""
  rows = []
  for e in range(1, epochs + 1):
    t = (e - 1) / (epochs - 1)
    val_loss, val_acc = vl0 + t * (vl1 - vl0), va0 + t * (va1 - va0)
    ga, gl = t * gap_acc, t * gap_loss
    rows.append({
      "epoch": e, "step": 10 * e,
      "train/loss": val_loss - gl, "train/accuracy": val_acc + ga, "train/balanced_accuracy": 0.5,
      "train/macro_f1": 0.4, "train/macro_auc": 0.8,
      "val/loss": val_loss, "val/accuracy": val_acc, "val/balanced_accuracy": 0.45, "val/macro_f1": 0.35,
      "val/macro_auc": 0.75, "gap/accuracy": ga, "gap/loss": gl,
      "lr": 1e-3,  # an extra key the report must ignore
    })
  return rows


def _test_metrics(acc: float, bal: float, f1: float, auc: float, recall: list):
  return {
    "loss": 0.7, "accuracy": acc, "balanced_accuracy": bal, "macro_f1": f1, "macro_auc": auc,
    "per_class_recall": recall, "confusion_matrix": [[3, 1, 0], [1, 4, 1], [0, 2, 20]],
    "class_names": CLASSES,
    "majority_baseline": {"accuracy": 0.669, "balanced_accuracy": 1 / 3, "macro_f1": 0.267, "macro_auc": 0.5},
  }


def _write_run(root: pathlib.Path, arm: str, seed: int, history, test, backbone: str):
  d = root / "arms" / arm / f"seed_{seed}"
  d.mkdir(parents=True)
  config = {"seed": seed, "data": {"dataset": "dermamnist", "image_size": 64},
            "model": {"backbone": backbone}, "train": {"num_epochs": len(history), "batch_size": 32},
            "pretrain": {"kind": arm}}
  (d / "config.json").write_text(json.dumps(config))
  (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
  (d / "test_metrics.json").write_text(json.dumps(test))


def _make_workdir(root: pathlib.Path, winner: str, seeds: int = 2, imagenet_epochs: int = 6) -> pathlib.Path:
  """Two arms; `winner` ('vae' or 'imagenet') gets the small gap and the better test scores."""
  good = dict(gap_acc=0.01, gap_loss=0.02, test=(0.74, 0.60, 0.55, 0.90))
  bad = dict(gap_acc=0.15, gap_loss=0.30, test=(0.70, 0.45, 0.40, 0.80))
  specs = {
    # seed 0 and seed 1 curves for the vae arm: val loss 0.9 -> 0.6 and 1.0 -> 0.65,
    # val accuracy 0.40 -> 0.60 and 0.50 -> 0.65.
    "vae": ([(0.9, 0.6, 0.40, 0.60), (1.0, 0.65, 0.50, 0.65)], 8, "convnext_tiny"),
    "imagenet": ([(0.8, 0.7, 0.60, 0.70), (0.82, 0.71, 0.62, 0.72)], imagenet_epochs, "convnext_tiny_in1k"),
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
  assert "| `imagenet` | dermamnist | — | — | convnext_tiny_in1k | 64 | 6 | 32 | — | 6 | 0, 1 |" in text
  assert "different numbers of epochs" in text

  # Paper's table, vae arm. Val loss change per seed: (0.6-0.9)/0.9 = -33.333%, (0.65-1.0)/1.0 = -35%:
  # mean -34.167%, sample std 1.1785.
  assert "| val loss change, first → final epoch | -34.17 ± 1.18% | -33.33% |" in text
  # Final val loss: mean(0.6, 0.65) = 0.625, std 0.0354.
  assert "| final val loss | 0.625 ± 0.035 | 0.110 |" in text
  # Val accuracy 0.40 -> 0.60 (+50%) and 0.50 -> 0.65 (+30%): mean 45% -> 62.5%, change +40 ± 14.14%.
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
  assert "| majority class (train majority, always predicted) | — | 0.669 | 0.333 | 0.267 | 0.500 |" in text
  assert "| MedMNIST v2 ResNet-18 (28) [reference] | — | 0.735 | — | — | 0.917 |" in text
  # Best val accuracy = final (monotone curves): mean(0.60, 0.65) at epoch 8.
  assert "0.625 ± 0.035 (ep 8)" in text and "ep 8.0" not in text
  # Per-class recall, absent class -> n/a.
  assert "| bcc | n/a | n/a |" in text
  assert "| akiec | 0.502 ± 0.003 | 0.502 ± 0.003 |" in text

  # Figures.
  for name in ("loss.png", "accuracy.png", "gap.png", "confusion_vae.png", "confusion_imagenet.png"):
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
  proc = subprocess.run([sys.executable, "-m", "derm_jax.report", f"--workdir={wd}"], capture_output=True,
                        text=True, env=env, cwd=str(tmp_path), timeout=300)
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
  text = pathlib.Path(write_report(str(wd))).read_text()
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
  text = pathlib.Path(write_report(str(wd))).read_text()
  assert "**Overall: mixed.** `vae` overfits less" in text
  assert "but `imagenet` scores higher" in text


def test_missing_metrics_file_is_a_clear_error(tmp_path):
  wd = _make_workdir(tmp_path / "cmp", winner="vae")
  missing = wd / "arms" / "vae" / "seed_1" / "metrics.jsonl"
  missing.unlink()
  with pytest.raises(ReportError, match="missing file: .*seed_1/metrics.jsonl"):
    write_report(str(wd))
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-m", "derm_jax.report", f"--workdir={wd}"], capture_output=True,
                        text=True, env=env, cwd=str(tmp_path), timeout=300)
  assert proc.returncode != 0
  assert str(missing) in proc.stderr
  assert "Traceback" not in proc.stderr


def test_missing_arms_dir(tmp_path):
  with pytest.raises(ReportError, match="arms"):
    write_report(str(tmp_path))
