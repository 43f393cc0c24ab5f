"""Tests of derm_jax.plots: image grid pixel size, and that every figure writes a valid PNG."""

from __future__ import annotations

import numpy as np
from PIL import Image

from derm_jax import plots


def test_image_grid_pixel_size_and_content(tmp_path):
  rng = np.random.default_rng(0)
  top = rng.random((3, 8, 10, 3))                                    # float in [0, 1]
  bottom = (rng.random((3, 8, 10, 3)) * 255).astype(np.uint8)        # uint8
  path = plots.save_image_grid([top, bottom], tmp_path / "sub" / "grid.png", pad=2)
  img = Image.open(path)
  assert img.format == "PNG"
  # width = 3*10 + 4*2 = 38, height = 2*8 + 3*2 = 22
  assert img.size == (38, 22)
  arr = np.asarray(img.convert("RGB"))
  np.testing.assert_array_equal(arr[2 + 8 + 2:2 + 8 + 2 + 8, 2:12], bottom[0])
  np.testing.assert_array_equal(arr[2:10, 14:24], np.round(top[1] * 255).astype(np.uint8))
  assert (arr[0] == 255).all() and (arr[:, 0] == 255).all()


def test_image_grid_ragged_rows_and_no_pad(tmp_path):
  rows = [np.zeros((5, 4, 6, 3)), np.ones((2, 4, 6, 3))]
  img = Image.open(plots.save_image_grid(rows, tmp_path / "g.png", pad=0))
  assert img.size == (5 * 6, 2 * 4)


def _is_png(path) -> bool:
  with open(path, "rb") as f:
    if f.read(8) != b"\x89PNG\r\n\x1a\n":
      return False
  Image.open(path).verify()
  return True


def test_confusion_and_curves_write_png(tmp_path):
  cm = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
  assert _is_png(plots.save_confusion_matrix(cm, ["a", "b", "c"], tmp_path / "cm.png", "cm"))
  assert _is_png(plots.save_confusion_matrix(cm, ["a", "b", "c"], tmp_path / "cm_raw.png", "cm", normalize=False))
  hist = lambda n, off: [{"epoch": e, "train/loss": 1.0 / e + off, "val/loss": 1.2 / e + off} for e in range(1, n + 1)]
  runs = {"vae": [hist(5, 0.0), hist(5, 0.1)], "imagenet": [hist(3, 0.05)]}
  assert _is_png(plots.save_curves(runs, ["train/loss", "val/loss"], tmp_path / "c.png", "loss"))
  assert _is_png(plots.save_curves(runs, ["train/loss", "val/loss"], tmp_path / "c2.png", "loss",
                                   separate_panels=True, hline=0.0))
  epochs, mean, std, n = plots.aggregate_histories(runs["vae"], "val/loss")
  np.testing.assert_array_equal(epochs, [1, 2, 3, 4, 5])
  np.testing.assert_allclose(mean, 1.2 / epochs + 0.05)
  np.testing.assert_allclose(std, np.full(5, np.std([0.0, 0.1], ddof=1)))
