"""Tests for the on-device augmentation (derm_jax/data/device_augment.py): it has the intended
effect, matches the host transforms (augment.py, PIL) and is a pure function of (key, index)."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image

from derm_jax import config_lib
from derm_jax.data import augment
from derm_jax.data import device_augment as da

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = jax.random.key(1234)


def _aug(flip=False, rot90=False, color_jitter=0.0, crop=False, scale=(0.7, 1.0),
         ratio=(0.75, 1.333)):
  c = config_lib.augmentation()
  c.flip, c.rot90, c.color_jitter = flip, rot90, color_jitter
  c.random_resized_crop, c.crop_scale, c.crop_ratio = crop, scale, ratio
  return c


def _run(images, key, image_size, aug, train=True):
  fn = jax.jit(lambda x, k: da.augment_batch(x, k, image_size=image_size, aug=aug, train=train))
  return np.asarray(fn(images, key))


def _images(n, s, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, s, s, 3), dtype=np.uint8)


def _pil(image, size, box=None):
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, box=box))


@pytest.mark.parametrize("s,size", [(28, 64), (256, 224), (100, 37), (28, 28)])
def test_eval_path_equals_host_pil_resize_exactly(s, size):
  images = _images(3, s)
  out = np.asarray(jax.jit(da.eval_images, static_argnums=1)(images, size))
  host = np.stack([augment.eval_transform({"image": im, "label": 0}, image_size=size)["image"]
                   for im in images])
  np.testing.assert_array_equal(out, host)
  assert out.dtype == np.float32 and out.shape == (3, size, size, 3)
  # train=False is the eval path, and it is the no-crop training resize (no aug enabled).
  np.testing.assert_array_equal(_run(images, KEY, size, _aug(), train=False), out)
  np.testing.assert_array_equal(_run(images, KEY, size, _aug(), train=True), out)
  np.testing.assert_array_equal(
      np.asarray(da.resize_images(images, size)).astype(np.float32) * np.float32(1 / 255), out)


def test_resize_is_standard_antialiased_bilinear():
  """Up to uint8 rounding, the resize is jax.image's antialiased bilinear resize."""
  yy, xx = np.mgrid[:90, :90]
  smooth = np.stack([128 + 100 * np.sin(xx / 9 + c) * np.cos(yy / 7) for c in range(3)], -1)
  smooth = smooth.astype(np.uint8)[None]
  for size in (40, 150):
    ours = np.asarray(da.resize_images(smooth, size)).astype(np.float32)
    ref = np.asarray(jax.image.resize(smooth.astype(np.float32), (1, size, size, 3), "linear",
                                      antialias=True))
    assert np.abs(ours - ref).max() <= 1.01


def test_crop_resize_matches_pil_on_the_same_box():
  images = _images(4, 64, seed=1)
  boxes = np.array([[6.4, 12.8, 54.4, 57.6], [0, 0, 32, 64], [3.3, 1.7, 61.8, 63.5],
                    [0, 0, 64, 64]], np.float32)
  out = np.asarray(da.resize_images(images, 48, boxes)).astype(int)
  ref = np.stack([_pil(im, 48, tuple(float(v) for v in b)) for im, b in zip(images, boxes)])
  diff = np.abs(out - ref)
  assert diff.max() <= 2 and (diff > 0).mean() < 0.1


def test_left_half_box_of_two_colour_image_is_one_colour():
  image = np.zeros((1, 32, 32, 3), np.uint8)
  image[:, :, :16] = (255, 0, 0)
  image[:, :, 16:] = (0, 0, 255)
  out = np.asarray(da.resize_images(image, 16, np.array([[0, 0, 16, 32]], np.float32)))
  assert (out[..., 0] == 255).all() and (out[..., 1:] == 0).all()


def _geometric_reference(images, flip_h, flip_v, k):
  out = []
  for im, fh, fv, r in zip(images, flip_h, flip_v, k):
    im = np.flip(im, 1) if fh else im
    im = np.flip(im, 0) if fv else im
    out.append(np.rot90(im, r))
  return np.stack(out).astype(np.float32) * np.float32(1 / 255)


def test_flips_and_rot90_are_exact_and_all_occur():
  images = _images(64, 16, seed=2)
  flip_h, flip_v, k = (np.asarray(a) for a in da.sample_flips_and_rotations(KEY, 64))
  assert set(k.tolist()) == {0, 1, 2, 3}
  assert set(flip_h.tolist()) == {False, True} and set(flip_v.tolist()) == {False, True}
  np.testing.assert_array_equal(_run(images, KEY, 16, _aug(flip=True, rot90=True)),
                                _geometric_reference(images, flip_h, flip_v, k))
  # Each flag alone applies only its own transform.
  no, zero = np.zeros(64, bool), np.zeros(64, int)
  np.testing.assert_array_equal(_run(images, KEY, 16, _aug(flip=True)),
                                _geometric_reference(images, flip_h, flip_v, zero))
  np.testing.assert_array_equal(_run(images, KEY, 16, _aug(rot90=True)),
                                _geometric_reference(images, no, no, k))
  np.testing.assert_array_equal(_run(images, KEY, 16, _aug()),
                                _geometric_reference(images, no, no, zero))
