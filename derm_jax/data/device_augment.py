"""Augmentation on the accelerator: resize, crop, flips, rot90 and colour jitter in the train step.

The device-side twin of derm_jax/data/augment.py. The host pipeline only reads, decodes and
batches uint8 images at their stored resolution; `augment_batch` (inside the jitted train
step) and `eval_images` (inside the eval step) do the rest:

  random resized crop (if aug.random_resized_crop) -> bilinear resize to image_size ->
  horizontal / vertical flips (if aug.flip) -> rot90 by k ~ U{0..3} (if aug.rot90) ->
  float32 in [0, 1] -> colour jitter (if aug.color_jitter > 0)

in the same order and with the same distributions as `augment.train_transform`.

Randomness: example i of a batch uses only `jax.random.fold_in(key, i)` (then one fold_in
per kind of draw), so its augmentation is a pure function of (step key, example index,
image). Resuming is exact and the result does not depend on how the batch is sharded over
devices; everything is vmapped over examples, so a batch sharded over the 'data' mesh axis
stays sharded. Derive the step key from the step's rng with its own stream, e.g.
`jax.random.fold_in(jax.random.fold_in(base_rng, step), AUG_STREAM)`.

Resize: PIL's bilinear resampling (`Image.resize(..., BILINEAR, box=...)`, which
`augment._resize` uses) reproduced bit for bit: a triangle filter widened by the downscale
factor (antialiasing), renormalised at the image border, weights rounded to PIL's 22-bit
fixed point, a width pass then a height pass, each rounded to uint8 values. Each pass
gathers the few input pixels an output pixel draws on and sums them in int32, so the result
is exact and the same on every backend (and ~15x faster on a CPU than a dense resize
matmul). Without a crop the weights are numpy constants computed in float64 like PIL's,
and `eval_images` equals the host eval path exactly (bit for bit in float32). With a crop
the per-example weights are computed on the device in float32, not float64, so where PIL's
rounding meets an exact tie a uint8 value can differ by one (at most two after both passes)
from PIL's on the same box.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# Stream for the augmentation key inside a train step's rng (see the module docstring).
AUG_STREAM = 0x617567  # "aug"

# Per-example sub-streams: fold_in(fold_in(key, i), stream).
_CROP, _FLIP, _ROT, _JITTER = 0, 1, 2, 3
_CROP_TRIES = 10
_PRECISION_BITS = 22  # PIL's fixed-point weights (Resample.c: 32 - 8 - 2)
_GRAY = (0.299, 0.587, 0.114)


def _example_keys(key, batch: int, stream: int):
  """(batch,) keys: fold_in(fold_in(key, i), stream) for example i."""
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, i), stream))(
      jnp.arange(batch, dtype=jnp.uint32))


# ------------------------------------------------------------------------------- sampling


def _crop_box(key, height: int, width: int, scale, ratio):
  """Inception-style box (x0, y0, x1, y1) for one example: first valid of 10 candidates."""
  k_area, k_ratio, k_x, k_y = jax.random.split(key, 4)
  area = float(height * width)
  frac = jax.random.uniform(k_area, (_CROP_TRIES,), minval=scale[0], maxval=scale[1])
  log_r = jax.random.uniform(k_ratio, (_CROP_TRIES,), minval=math.log(ratio[0]),
                             maxval=math.log(ratio[1]))
  ar = jnp.exp(log_r)
  cw = jnp.sqrt(area * frac * ar)
  ch = jnp.sqrt(area * frac / ar)
  valid = (cw <= width) & (ch <= height)
  first = jnp.argmax(valid)
  ok = valid[first]
  cw = jnp.where(ok, cw[first], float(width))
  ch = jnp.where(ok, ch[first], float(height))
  x0 = jax.random.uniform(k_x, ()) * (width - cw)
  y0 = jax.random.uniform(k_y, ()) * (height - ch)
  return jnp.stack([x0, y0, x0 + cw, y0 + ch])


def sample_crop_boxes(key, batch: int, height: int, width: int, scale, ratio) -> jax.Array:
  """The random-resized-crop boxes `augment_batch` uses for a batch of `batch` images.

  Returns float32 (batch, 4) boxes (x0, y0, x1, y1) in pixel coordinates (PIL's box order):
  area fraction ~ U(scale), log aspect (width / height) ~ U(log ratio), the first of 10
  candidates that fits, else the whole image; the offset is uniform over the positions
  that fit.
  """
  scale, ratio = tuple(float(v) for v in scale), tuple(float(v) for v in ratio)
  keys = _example_keys(key, batch, _CROP)
  return jax.vmap(lambda k: _crop_box(k, height, width, scale, ratio))(keys)


def sample_flips_and_rotations(key, batch: int):
  """(flip_h, flip_v, k): bool (batch,) flips (p = 0.5 each) and int32 (batch,) rot90 counts.

  Applied in the order of `augment.train_transform`: horizontal flip, vertical flip, then
  `np.rot90(image, k)`.
  """
  flips = jax.vmap(lambda k: jax.random.bernoulli(k, 0.5, (2,)))(
      _example_keys(key, batch, _FLIP))
  rots = jax.vmap(lambda k: jax.random.randint(k, (), 0, 4, dtype=jnp.int32))(
      _example_keys(key, batch, _ROT))
  return flips[:, 0], flips[:, 1], rots


def sample_color_factors(key, batch: int, strength: float) -> jax.Array:
  """float32 (batch, 3): brightness, contrast and saturation factors ~ U(1 - s, 1 + s)."""
  s = float(strength)
  return jax.vmap(lambda k: jax.random.uniform(k, (3,), minval=1 - s, maxval=1 + s))(
      _example_keys(key, batch, _JITTER))


# --------------------------------------------------------------------------------- resize


def _num_taps(in_size: int, out_size: int) -> int:
  """Input pixels an output pixel can draw on: the triangle's width when the whole axis
  (the largest possible box) is resized, plus one for the alignment."""
  return min(in_size, math.ceil(2 * max(in_size / out_size, 1.0)) + 1)


def _taps(xp, start, stop, in_size: int, out_size: int, taps: int, dtype):
  """PIL's bilinear weights for resizing the span [start, stop) of an axis to `out_size`.

  Returns (index, weight), int32 (out_size, taps) each: output pixel o is
  sum_t weight[o, t] * input[index[o, t]] / 2**22. `xp` is numpy (float64, the host's
  arithmetic: static whole-axis resizes) or jax.numpy (float32: per-example boxes).
  Resample.c: a triangle of half-width max(scale, 1) centred at start + (o + 0.5) * scale,
  normalised over the pixels inside the image, rounded to 22-bit fixed point.
  """
  scale = (stop - start) / out_size
  fs = xp.maximum(scale, 1.0)
  center = start + (xp.arange(out_size, dtype=dtype) + 0.5) * scale
  first = xp.clip(xp.floor(center - fs + 0.5), 0, in_size - taps)
  index = first[:, None] + xp.arange(taps, dtype=dtype)[None, :]
  w = xp.maximum(0.0, 1.0 - xp.abs(index + 0.5 - center[:, None]) / fs)
  total = xp.cumsum(w, axis=1)[:, -1:]  # summed left to right, like PIL
  w = w / xp.where(total == 0, 1.0, total)
  return index.astype(np.int32), xp.floor(w * (1 << _PRECISION_BITS) + 0.5).astype(np.int32)


def _pass(x, index, weight, axis: int):
  """One PIL pass along `axis` (1: width, 0: height) of an int32 (H, W, C) image in 0..255.

  Integer arithmetic throughout (at most 255 * 2**22 * (1 + 1e-6) < 2**31): exact on every
  backend. Rounds half up to uint8 values, as PIL does after each pass.
  """
  # axis 1: (H, out, taps, C); axis 0: (out, taps, W, C)
  g = jnp.take(x, index, axis=axis, mode="clip")
  if axis == 1:
    total = (g * weight[None, :, :, None]).sum(axis=2)
  else:
    total = (g * weight[:, :, None, None]).sum(axis=1)
  return jnp.clip((total + (1 << (_PRECISION_BITS - 1))) >> _PRECISION_BITS, 0, 255)


def resize_images(images_u8, image_size: int, boxes=None) -> jax.Array:
  """PIL-exact bilinear resize of uint8 (B, H, W, C) images to uint8 (B, size, size, C).

  With `boxes` (float (B, 4), (x0, y0, x1, y1) as from `sample_crop_boxes`) the box of each
  image is resized, like `Image.resize(..., box=box)`; without, the whole image (returned
  unchanged when it already has the size).
  """
  if images_u8.dtype != jnp.uint8:
    raise TypeError(f"Expected uint8 images (the host no longer scales them), got "
                    f"{images_u8.dtype}.")
  _, h, w, _ = images_u8.shape
  tx, ty = _num_taps(w, image_size), _num_taps(h, image_size)
  if boxes is None:
    if h == image_size and w == image_size:
      return images_u8
    ix, wx = _taps(np, 0.0, float(w), w, image_size, tx, np.float64)
    iy, wy = _taps(np, 0.0, float(h), h, image_size, ty, np.float64)

    def one(img):
      return _pass(_pass(img.astype(jnp.int32), ix, wx, 1), iy, wy, 0)

    return jax.vmap(one)(images_u8).astype(jnp.uint8)

  def one_box(img, box):
    box = box.astype(jnp.float32)
    ix, wx = _taps(jnp, box[0], box[2], w, image_size, tx, jnp.float32)
    iy, wy = _taps(jnp, box[1], box[3], h, image_size, ty, jnp.float32)
    return _pass(_pass(img.astype(jnp.int32), ix, wx, 1), iy, wy, 0)

  return jax.vmap(one_box)(images_u8, boxes).astype(jnp.uint8)


# ------------------------------------------------------------------------- the transforms


def _flip_rotate_grid(grid, flip_h, flip_v, k):
  """Optional flips, then np.rot90(grid, k), of one square (S, S) array."""
  grid = jnp.where(flip_h, grid[:, ::-1], grid)
  grid = jnp.where(flip_v, grid[::-1], grid)
  return jax.lax.switch(k, [lambda g, r=r: jnp.rot90(g, r) for r in range(4)], grid)


def _flip_rotate(img, flip_h, flip_v, k):
  """One square (S, S, C) image: optional flips, then np.rot90(img, k), as a single gather.

  The selects run on an (S, S) grid of pixel indices; the image is read once. (Selecting
  among flipped views of the image itself makes XLA recompute the resize for every view.)
  """
  s = img.shape[0]
  src = _flip_rotate_grid(jnp.arange(s * s, dtype=jnp.int32).reshape(s, s), flip_h, flip_v, k)
  return jnp.take(img.reshape(s * s, -1), src, axis=0, mode="clip")


def _color_jitter(x, factors):
  """One float (S, S, 3) image in [0, 1]; factors (brightness, contrast, saturation).

  The arithmetic of `augment._color_jitter`: x*b; (x - mean)*c + mean with the mean over
  the image; (x - gray)*s + gray with gray = 0.299 R + 0.587 G + 0.114 B; clip to [0, 1].
  """
  b, c, s = factors[0], factors[1], factors[2]
  x = x * b
  mean = x.mean()
  x = (x - mean) * c + mean
  gray = (x[..., 0] * _GRAY[0] + x[..., 1] * _GRAY[1] + x[..., 2] * _GRAY[2])[..., None]
  x = (x - gray) * s + gray
  return jnp.clip(x, 0.0, 1.0)


def _to_float(images_u8) -> jax.Array:
  return images_u8.astype(jnp.float32) * jnp.float32(1.0 / 255.0)


def eval_images(images_u8, image_size: int) -> jax.Array:
  """Evaluation: the deterministic resize of `augment.eval_transform`, float32 in [0, 1]."""
  return _to_float(resize_images(images_u8, image_size))


def augment_batch(images_u8, key, *, image_size: int, aug, train: bool = True) -> jax.Array:
  """Augments a uint8 (B, S, S, 3) batch into float32 (B, image_size, image_size, 3) in [0, 1].

  `aug` is `config.aug` (flip, rot90, color_jitter, random_resized_crop, crop_scale,
  crop_ratio), read at trace time. `key` is this step's augmentation key; example i uses
  only fold_in(key, i). With `train=False` this is `eval_images` (the key is unused).
  """
  if not train:
    return eval_images(images_u8, image_size)
  batch, h, w, _ = images_u8.shape
  boxes = None
  if aug.random_resized_crop:
    boxes = sample_crop_boxes(key, batch, h, w, tuple(aug.crop_scale), tuple(aug.crop_ratio))
  x = resize_images(images_u8, image_size, boxes)
  if aug.flip or aug.rot90:
    flip_h, flip_v, k = sample_flips_and_rotations(key, batch)
    if not aug.flip:
      flip_h, flip_v = jnp.zeros_like(flip_h), jnp.zeros_like(flip_v)
    if not aug.rot90:
      k = jnp.zeros_like(k)
    x = jax.vmap(_flip_rotate)(x, flip_h, flip_v, k)
  x = _to_float(x)
  if aug.color_jitter > 0:
    x = jax.vmap(_color_jitter)(x, sample_color_factors(key, batch, aug.color_jitter))
  return x


def train_images(images, step_rng, *, image_size: int, aug) -> jax.Array:
  """A train step's input images in [0, 1]: augmented here from uint8 (the default,
  `aug.on_device`), or passed through when the host pipeline already augmented them."""
  if images.dtype != jnp.uint8:
    return images
  return augment_batch(images, jax.random.fold_in(step_rng, AUG_STREAM),
                       image_size=image_size, aug=aug)


def model_images(images, *, image_size: int) -> jax.Array:
  """An eval step's input images in [0, 1]: resized here from uint8, or passed through."""
  if images.dtype != jnp.uint8:
    return images
  return eval_images(images, image_size)
