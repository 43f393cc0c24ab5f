"""Per-image preprocessing and augmentation for dermoscopy (numpy + PIL, run in Grain workers).

Change the augmentation of an experiment with `config.aug.*`:
  flip            random horizontal and vertical flips (lesions have no canonical orientation)
  rot90           random multiples of 90 degrees
  color_jitter    strength s of a mild brightness/contrast/saturation jitter (0 disables);
                  factors are drawn from [1-s, 1+s]; dermoscope colour varies between devices
  random_resized_crop, crop_scale, crop_ratio
                  crop a random area fraction / aspect ratio before the resize
Every image is then resized to `config.image_size` and scaled to float32 in [0, 1]; each
backbone applies its own normalisation (ImageNet mean/std, EfficientNet's 127/128).
All randomness comes from the numpy Generator Grain hands to `random_map`, so the
pipeline is deterministic given the seed and the element index.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def _resize(image: np.ndarray, size: int, box: tuple[float, float, float, float] | None = None):
  """Resizes a uint8 HxWx3 image (optionally a sub-box of it) to size x size, bilinear."""
  if box is None and image.shape[0] == size and image.shape[1] == size:
    return image
  pil = Image.fromarray(image)
  return np.asarray(pil.resize((size, size), Image.BILINEAR, box=box))


def _random_box(rng: np.random.Generator, h: int, w: int, scale, ratio):
  """Inception-style random crop box (left, upper, right, lower) in pixel coordinates."""
  area = h * w
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    log_r = rng.uniform(np.log(ratio[0]), np.log(ratio[1]))
    ar = np.exp(log_r)
    cw = np.sqrt(target * ar)
    ch = np.sqrt(target / ar)
    if cw <= w and ch <= h:
      x0 = rng.uniform(0, w - cw)
      y0 = rng.uniform(0, h - ch)
      return (x0, y0, x0 + cw, y0 + ch)
  return (0.0, 0.0, float(w), float(h))


def _color_jitter(x: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
  """Mild brightness, contrast and saturation jitter on a float image in [0, 1]."""
  b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
  x = x * b
  mean = x.mean()
  x = (x - mean) * c + mean
  gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
  x = (x - gray[..., None]) * s + gray[..., None]
  return np.clip(x, 0.0, 1.0)


def train_transform(example: dict, rng: np.random.Generator, *, image_size: int, aug) -> dict:
  """Augments and resizes one example; returns {'image': float32 (S,S,3) in [0,1], 'label'}."""
  image = example["image"]
  box = None
  if aug.random_resized_crop:
    box = _random_box(rng, image.shape[0], image.shape[1], tuple(aug.crop_scale),
                      tuple(aug.crop_ratio))
  image = _resize(image, image_size, box)
  if aug.flip:
    if rng.random() < 0.5:
      image = image[:, ::-1]
    if rng.random() < 0.5:
      image = image[::-1]
  if aug.rot90:
    image = np.rot90(image, k=int(rng.integers(4)))
  x = image.astype(np.float32) * (1.0 / 255.0)
  if aug.color_jitter > 0:
    x = _color_jitter(x, rng, float(aug.color_jitter))
  return {"image": np.ascontiguousarray(x, np.float32), "label": np.int32(example["label"])}


def eval_transform(example: dict, *, image_size: int) -> dict:
  """Deterministic resize + scaling for evaluation."""
  x = _resize(example["image"], image_size).astype(np.float32) * (1.0 / 255.0)
  return {"image": x, "label": np.int32(example["label"])}
