"""Unlabelled images as a random-access source, for predicting on images without ground
truth: a folder of image files, a list of file paths, or a list of uint8 arrays of any
size. Every image is brought to the training data's stored resolution exactly as outside
ISIC images are (centred square crop, bilinear resize: `isic.resize_like_dermamnist`).
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
    raise DataError(f"{folder}: image folder not found.")
  files = sorted(f for f in os.listdir(folder)
                 if os.path.splitext(f)[1].lower() in isic.IMAGE_EXTENSIONS)
  if not files:
    raise DataError(f"{folder}: no {'/'.join(isic.IMAGE_EXTENSIONS)} images in this folder.")
  return [os.path.join(folder, f) for f in files]


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
    for x in self.items:
      if isinstance(x, (str, os.PathLike)) and not os.path.isfile(x):
        raise DataError(f"{x}: image file not found.")

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
    arr = np.asarray(x)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1]
                                                           not in (1, 3, 4)):
      raise DataError(f"image {i}: expected a uint8 array of shape (H, W), (H, W, 3) or "
                      f"(H, W, 4), got {arr.dtype} {arr.shape}.")
    if arr.ndim == 3 and arr.shape[-1] == 1:
      arr = arr[..., 0]
    return isic.resize_like_dermamnist(Image.fromarray(arr), self.image_size)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {"image": self.load_image(int(i)), "label": 0, "id": int(i)}
