"""Unlabelled images as a random-access source, for predicting on images without ground
truth: a folder of image files, a list of file paths, or a list of uint8 arrays of any
size. Every image is brought to the training data's stored resolution exactly as outside
ISIC images are (centred square crop, bilinear resize: `isic.resize_like_dermamnist`).

Every item is checked when the source is built, before any model work: a path must name a
regular file (a folder or a missing path is refused as such), an array must be uint8 of
shape (H, W) or (H, W, 1|3|4) with H, W >= 1. Each refusal is one `DataError` naming the
item (its path, or `image <index>` for an array).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from derm_jax.data import isic
from derm_jax.data.errors import DataError


def list_image_files(folder: str) -> list[str]:
  """The image files (ISIC extensions) of `folder`, sorted by name."""
  if not os.path.isdir(folder):
    what = "is not a folder" if os.path.lexists(folder) else "image folder not found"
    raise DataError(f"{folder}: {what}.")
  files = sorted(f for f in os.listdir(folder)
                 if os.path.splitext(f)[1].lower() in isic.IMAGE_EXTENSIONS)
  if not files:
    raise DataError(f"{folder}: no {'/'.join(isic.IMAGE_EXTENSIONS)} images in this folder.")
  return [os.path.join(folder, f) for f in files]


def _check_image_file(path: str | os.PathLike) -> None:
  """DataError unless `path` is a regular file (says whether it is missing or a folder)."""
  if os.path.isfile(path):
    return
  if os.path.isdir(path):
    raise DataError(f"{path}: is a directory, not an image file.")
  if os.path.lexists(path) and not os.path.exists(path):
    raise DataError(f"{path}: broken symbolic link, not an image file.")
  if os.path.exists(path):
    raise DataError(f"{path}: not a regular file (a device, FIFO or socket), not an image "
                    "file.")
  raise DataError(f"{path}: image file not found.")


def _image_array(i: int, x: Any) -> np.ndarray:
  """Item `i` as an array if it is a usable image (uint8, (H, W) or (H, W, 1|3|4), H and W
  >= 1); DataError naming the item otherwise."""
  try:
    arr = np.asarray(x)
  except (ValueError, TypeError) as e:
    raise DataError(f"image {i}: not an image array or file path ({e}).") from e
  if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1]
                                                         not in (1, 3, 4)):
    raise DataError(f"image {i}: expected a uint8 array of shape (H, W), (H, W, 1), "
                    f"(H, W, 3) or (H, W, 4), got {arr.dtype} {arr.shape}.")
  if arr.shape[0] == 0 or arr.shape[1] == 0:
    raise DataError(f"image {i}: empty image of shape {arr.shape} (height and width must "
                    "be at least 1 pixel).")
  return arr


class ImageSource:
  """`source[i]` -> {'image': uint8 (image_size, image_size, 3), 'label': 0, 'id': i}.

  `items` are file paths or HxWx3 / HxW uint8 arrays; `image_ids[i]` names item i (the file
  name without extension for paths)."""

  def __init__(self, items: Sequence[Any], image_size: int):
    if not len(items):
      raise DataError("no images to predict on.")
    self.items = list(items)
    self.image_size = int(image_size)
    self.image_ids = tuple(
        os.path.splitext(os.path.basename(x))[0] if isinstance(x, (str, os.PathLike))
        else str(i) for i, x in enumerate(self.items))
    for i, x in enumerate(self.items):
      if isinstance(x, (str, os.PathLike)):
        _check_image_file(x)
      else:
        _image_array(i, x)

  def __len__(self) -> int:
    return len(self.items)

  def load_image(self, i: int) -> np.ndarray:
    x = self.items[i]
    if isinstance(x, (str, os.PathLike)):
      try:
        with Image.open(x) as im:
          return isic.resize_like_dermamnist(im, self.image_size, name=str(x))
      except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{x}: unreadable image: {e}") from e
    arr = _image_array(i, x)
    if arr.ndim == 3 and arr.shape[-1] == 1:
      arr = arr[..., 0]
    return isic.resize_like_dermamnist(Image.fromarray(arr), self.image_size)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {"image": self.load_image(int(i)), "label": 0, "id": int(i)}
