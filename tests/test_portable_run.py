"""A trained run travels: copied to a new folder with its training data unreachable, it
predicts (API) and evaluates outside images (CLI) with the same probabilities as before
the move, from what it keeps of its data (dataset.json, data_fingerprint.npz)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from derm_jax.evaluation.predictions import read_predictions_csv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_DEV = os.path.join(REPO, "tests", "data", "isic2018_test_dev")


def _evaluate(run_dir, out, *extra):
  return subprocess.run(
      [sys.executable, "-m", "derm_jax.evaluate", f"--workdir={run_dir}",
       f"--isic_images={TEST_DEV}/ISIC2018_Task3_Test_Input",
       f"--isic_csv={TEST_DEV}/ISIC2018_Task3_Test_GroundTruth_35.csv", f"--out={out}", *extra],
      cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_run_copied_without_its_data_predicts_and_evaluates_the_same(study, tmp_path):
  import derm_jax
  original = next(d for d in sorted((study / "arms").iterdir()) if d.is_dir()) / "seed_0"
  assert (original / "dataset.json").is_file() and (original / "data_fingerprint.npz").is_file()
  moved = tmp_path / "elsewhere" / "run"
  shutil.copytree(original, moved, ignore=shutil.ignore_patterns("external", "eval"))
  # Its training data are gone: config.json points at files that do not exist.
  cfg = json.loads((moved / "config.json").read_text())
  cfg["data"].update(source="npz", npz_path=str(tmp_path / "gone.npz"),
                     data_dir=str(tmp_path / "no_tfds"))
  (moved / "config.json").write_text(json.dumps(cfg))

  files = [os.path.join(TEST_DEV, "ISIC2018_Task3_Test_Input", f)
           for f in sorted(os.listdir(os.path.join(TEST_DEV, "ISIC2018_Task3_Test_Input")))[:6]]
  before = derm_jax.load(str(original)).predict(files)
  after_model = derm_jax.load(str(moved))
  np.testing.assert_allclose(after_model.predict(files), before, atol=1e-6)
  assert after_model.class_names == derm_jax.load(str(original)).class_names

  r = _evaluate(moved, tmp_path / "out")
  assert r.returncode == 0, r.stderr[-3000:]
  assert not (tmp_path / "no_tfds").exists()  # nothing was prepared
  got = read_predictions_csv(tmp_path / "out" / "predictions.csv")
  want = read_predictions_csv(original / "external" / "isic2018_test" / "predictions.csv")
  assert got.image_ids == want.image_ids
  np.testing.assert_allclose(got.probs, want.probs, atol=1e-5)
  m = json.loads((tmp_path / "out" / "metrics.json").read_text())
  assert m["outside_check"]["overlapping"] == 0
  # A project split needs the data: one clear line.
  r = subprocess.run([sys.executable, "-m", "derm_jax.evaluate", f"--workdir={moved}",
                      "--split=test", f"--out={tmp_path / 'split'}"], cwd=REPO,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 1 and "gone.npz" in r.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_bad_images_through_load_predict_are_one_clear_error(study, tmp_path):
  import pytest

  import derm_jax
  from derm_jax.data.errors import DataError
  run = next(d for d in sorted((study / "arms").iterdir()) if d.is_dir()) / "seed_0"
  model = derm_jax.load(str(run))
  good = np.zeros((20, 30, 3), np.uint8)
  for images, needle in (
      ([good, np.zeros((8, 8, 3), np.float32)], "image 1: expected a uint8 array"),
      ([np.zeros((0, 5, 3), np.uint8)], "image 0: empty image of shape (0, 5, 3)"),
      ([good, good, np.zeros((4, 4, 2), np.uint8)], "image 2: expected a uint8 array"),
      ([good, 7], "image 1: expected a uint8 array"),
      ([str(tmp_path / "missing.jpg")], "missing.jpg: image file not found"),
      ([], "no images to predict on")):
    with pytest.raises(DataError) as e:
      model.predict(images)
    assert needle in str(e.value) and "\n" not in str(e.value)
  assert model.predict([good]).shape == (1, len(model.class_names))
