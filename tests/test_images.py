"""Tests for derm_jax.data.images: unlabelled images are checked when the source is built."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from derm_jax.data import images
from derm_jax.data.errors import DataError

SIZE = 8


def _png(path, shape=(5, 7, 3)):
  Image.fromarray(np.full(shape, 200, np.uint8)).save(path)
  return str(path)


def test_valid_files_and_arrays_are_prepared(tmp_path):
  items = [_png(tmp_path / "a.png"), np.zeros((3, 4), np.uint8),
           np.zeros((1, 1, 1), np.uint8), np.zeros((6, 2, 4), np.uint8)]
  source = images.ImageSource(items, SIZE)
  assert source.image_ids == ("a", "1", "2", "3")
  for i in range(len(items)):
    assert source[i]["image"].shape == (SIZE, SIZE, 3) and source[i]["id"] == i


def test_directory_is_reported_as_a_directory(tmp_path):
  good = _png(tmp_path / "good.png")
  folder = tmp_path / "lesion.jpg"  # a folder with an image-like name
  folder.mkdir()
  with pytest.raises(DataError, match=r"lesion\.jpg: is a directory, not an image file") as e:
    images.ImageSource([good, str(folder)], SIZE)
  assert "not found" not in str(e.value)
  # A folder listed by --isic_images hits the same check, before any work.
  with pytest.raises(DataError, match=r"lesion\.jpg: is a directory"):
    images.ImageSource(images.list_image_files(str(tmp_path)), SIZE)
  with pytest.raises(DataError, match=r"missing\.png: image file not found"):
    images.ImageSource([str(tmp_path / "missing.png")], SIZE)
  with pytest.raises(DataError, match=r"good\.png: is not a folder"):
    images.list_image_files(good)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((0, 0), np.uint8), r"image 1: empty image of shape \(0, 0\)"),
    (np.zeros((0, 5, 3), np.uint8), r"image 1: empty image of shape \(0, 5, 3\)"),
    (np.zeros((5, 0), np.uint8), r"image 1: empty image"),
    (np.zeros((4, 4, 2), np.uint8), r"image 1: expected a uint8 array .* got uint8 \(4, 4, 2\)"),
    (np.zeros((4, 4, 0), np.uint8), r"image 1: expected a uint8 array"),
    (np.zeros((4, 4, 3), np.float32), r"image 1: expected a uint8 array .* got float32"),
    (np.zeros((2, 4, 4, 3), np.uint8), r"image 1: expected a uint8 array"),
    ([[1, 2], [3]], r"image 1: not an image array"),
], ids=["0x0", "zero_height", "zero_width", "two_channels", "no_channels", "float",
        "4d", "ragged"])
def test_degenerate_arrays_are_refused_with_their_index(bad, match):
  with pytest.raises(DataError, match=match) as e:
    images.ImageSource([np.zeros((4, 4, 3), np.uint8), bad], SIZE)
  assert "\n" not in str(e.value)


def test_zero_size_image_alone_is_refused():
  """What `derm_jax.load(workdir).predict(np.zeros((0, 0), np.uint8))` builds."""
  with pytest.raises(DataError, match=r"image 0: empty image"):
    images.ImageSource([np.zeros((0, 0), np.uint8)], SIZE)
