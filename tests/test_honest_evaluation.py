"""Honest evaluation on the session study (tests/configs/tiny_compare.py on the packaged
DermaMNIST subset): test metrics by lesion seen / not seen in training and per subgroup
equal a NumPy recomputation from the predictions file; an "outside" set made of training
images is caught (left out and reported) by the study and by `derm_jax.evaluate`, and one
made mostly of them is refused; the pixel check finds renamed copies."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from derm_jax.data import dermamnist_lesions, outside
from derm_jax.evaluation.predictions import read_predictions_csv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "tests", "data", "isic2018_sample")
TEST_DEV = os.path.join(REPO, "tests", "data", "isic2018_test_dev")
ARMS = ("vae", "imagenet")


def embedded_identity(split: str) -> dict[str, np.ndarray]:
  """The packaged subset's identities straight from the table and the index file."""
  rows = json.load(open(dermamnist_lesions.MINI_INDEX))[split]
  return {k: v[rows] for k, v in dermamnist_lesions.table()[split].items()}


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
  return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def arm_dirs(study):
  return [d for d in (study / "arms").iterdir() if d.is_dir()]


@pytest.mark.slow
def test_seen_unseen_lesion_and_subgroup_metrics_equal_numpy_from_predictions(study):
  train, test = embedded_identity("train"), embedded_identity("test")
  seen = np.isin(test["lesion_id"], train["lesion_id"])
  assert 0 < seen.sum() < len(seen)
  for arm in arm_dirs(study):
    d = arm / "seed_0"
    m = json.load(open(d / "test_metrics.json"))
    p = read_predictions_csv(d / "test_predictions.csv")
    ids = np.array([int(i) for i in p.image_ids])  # the test split's indices
    y, pred = p.labels, p.preds
    assert sorted(m["lesion_overlap"]["seen_ids"]) == sorted(np.flatnonzero(seen).tolist())
    mask = seen[ids]
    for group, keep in (("all", np.ones_like(mask)), ("seen_lesion", mask),
                        ("unseen_lesion", ~mask)):
      g = m["lesion_overlap"][group]
      assert g["count"] == int(keep.sum())
      assert g["metrics"]["accuracy"] == pytest.approx(np.mean(y[keep] == pred[keep]))
      assert g["metrics"]["balanced_accuracy"] == pytest.approx(
          balanced_accuracy(y[keep], pred[keep]))
      lo, hi = g["intervals"]["balanced_accuracy"]
      assert lo <= g["metrics"]["balanced_accuracy"] <= hi
    dx_type = test["dx_type"][ids]
    for t, groups in m["lesion_overlap"]["by_dx_type"].items():
      assert groups["unseen_lesion"]["count"] == int(((dx_type == t) & ~mask).sum())
    # Subgroups, from the table's metadata.
    for attr, values in (("sex", test["sex"][ids]), ("dx_type", dx_type),
                         ("localization", test["localization"][ids])):
      for name, g in m["subgroups"]["by"][attr].items():
        keep = values == name
        assert g["count"] == int(keep.sum()), (attr, name)
        if g["metrics"] is not None:
          assert g["metrics"]["balanced_accuracy"] == pytest.approx(
              balanced_accuracy(y[keep], pred[keep]))
          assert g["intervals"]["accuracy"][0] <= g["metrics"]["accuracy"]
  report = (study / "report.md").read_text()
  assert "## Seen vs unseen lesions (test split)" in report
  assert f"{int(seen.sum())} belong to a lesion that also has an image in the training" in report
  assert "## Subgroups (test split)" in report and "### dx_type" in report


def training_images_of_the_sample() -> list[str]:
  ids = set(embedded_identity("train")["image_id"]) | set(embedded_identity("val")["image_id"])
  rows = [r[0] for r in csv.reader(open(f"{SAMPLE}/ISIC2018_Task3_Training_GroundTruth.csv"))]
  return [r for r in rows[1:] if r in ids]


@pytest.mark.slow
def test_the_study_leaves_out_training_images_of_an_outside_set(study):
  own = training_images_of_the_sample()
  assert len(own) == 5
  for arm in arm_dirs(study):
    d = arm / "seed_0" / "external" / "isic2018_train_sample"
    m = json.load(open(d / "metrics.json"))
    check = m["outside_check"]
    assert (check["images"], check["overlapping"], check["kept"]) == (14, 5, 9)
    assert check["found_by"]["image_id"] == 5
    assert sorted(e["image"] for e in check["examples"]) == sorted(own)
    assert all(e["is"].startswith("train id ") for e in check["examples"])
    p = read_predictions_csv(d / "predictions.csv")
    assert len(p.image_ids) == 9 and not set(p.image_ids) & set(own)
    assert sum(map(sum, m["confusion_matrix"])) == 9
    # The genuine outside set: nothing left out.
    m = json.load(open(arm / "seed_0" / "external" / "isic2018_test" / "metrics.json"))
    assert m["outside_check"]["overlapping"] == 0 and m["num_examples"] == 35
  report = (study / "report.md").read_text()
  assert "5 of its 14 images are the runs' own training or validation images" in report


def _evaluate(run_dir, csv_path, out):
  return subprocess.run(
      [sys.executable, "-m", "derm_jax.evaluate", f"--workdir={run_dir}",
       f"--isic_images={SAMPLE}/ISIC2018_Task3_Training_Input", f"--isic_csv={csv_path}",
       f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_evaluate_leaves_out_training_images_and_refuses_a_set_made_of_them(study, tmp_path):
  run_dir = study / "arms" / "imagenet" / "seed_0"
  if not run_dir.exists():
    run_dir = arm_dirs(study)[-1] / "seed_0"
  r = _evaluate(run_dir, f"{SAMPLE}/ISIC2018_Task3_Training_GroundTruth.csv", tmp_path / "a")
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.load(open(tmp_path / "a" / "metrics.json"))
  assert m["outside_check"]["overlapping"] == 5 and m["num_examples"] == 9
  assert "5 of 14 images are this run's training or validation images" in r.stderr
  # Mostly training images: refused in one line, nothing written.
  own = training_images_of_the_sample()
  rows = list(csv.reader(open(f"{SAMPLE}/ISIC2018_Task3_Training_GroundTruth.csv")))
  mostly = tmp_path / "mostly.csv"
  keep = [rows[0]] + [r for r in rows[1:] if r[0] in own] + [
      next(r for r in rows[1:] if r[0] not in own)]
  mostly.write_text("".join(",".join(r) + "\n" for r in keep))
  r = _evaluate(run_dir, mostly, tmp_path / "b")
  assert r.returncode == 1
  err = r.stderr.strip().splitlines()[-1]
  assert err.startswith("error: outside set 'mostly': 5 of its 6 images are this run's "
                        "training or validation images") and "not an outside set" in err
  assert not (tmp_path / "b").exists()


def test_the_pixel_check_finds_renamed_copies_and_nothing_in_the_isic_test_images(data_dir):
  from derm_jax import config_lib
  from derm_jax.data import isic, registry
  c = config_lib.data()
  c.data_dir = data_dir
  ds = registry.get(c)
  fp = outside.fingerprint_of(ds)
  assert len(fp) == len(ds.source("train")) + len(ds.source("val"))
  train = ds.source("train")

  def reencoded(i: int) -> np.ndarray:  # a resized, JPEG re-encoded copy
    im = Image.fromarray(np.asarray(train[i]["image"])).resize((56, 56),
                                                              Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.resize((28, 28), Image.Resampling.BILINEAR).save(buf, "JPEG", quality=85)
    return np.asarray(Image.open(buf).convert("RGB"))

  dev = isic.IsicSource(f"{TEST_DEV}/ISIC2018_Task3_Test_Input",
                        f"{TEST_DEV}/ISIC2018_Task3_Test_GroundTruth_35.csv", image_size=28,
                        class_names=ds.meta.class_names)
  images = [{"image": reencoded(i), "label": 0, "id": i} for i in (3, 50, 400)]
  images += [dev[i] for i in range(len(dev))]
  found = outside.check(fp, images, [f"copy_{i}" for i in range(len(images))])
  assert found.how[:3] == ("pixels",) * 3
  assert found.partner[:3] == ("train id 3", "train id 50", "train id 400")
  assert not found.overlapping[3:].any()


def test_the_honest_preset_scores_the_isic_test_images():
  sys.path.insert(0, os.path.join(REPO, "configs"))
  import compare
  c = compare.get_config("honest")
  assert c.arms == ("imagenet", "vae", "imagenet_simclr", "micle")
  (entry,) = c.external
  name, paths = entry.split("=", 1)
  images, csv_path = paths.split(",")
  assert name == "isic2018_test" and os.path.isdir(images) and os.path.isfile(csv_path)
  assert sum(1 for _ in open(csv_path)) == 502  # 501 images and the header
  assert c.data.split == "official"  # the lesion split: --config.data.split=lesion
