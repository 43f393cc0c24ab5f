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
from PIL import Image

from derm_jax import config_lib
from derm_jax.data import augment
from derm_jax.data import device_augment as da

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = jax.random.key(1234)
_boxes = jax.jit(da.sample_crop_boxes, static_argnums=(1, 2, 3, 4, 5))


def _aug(flip=False, rot90=False, color_jitter=0.0, crop=False, scale=(0.7, 1.0),
         ratio=(0.75, 1.333)):
  c = config_lib.augmentation()
  c.flip, c.rot90, c.color_jitter = flip, rot90, color_jitter
  c.random_resized_crop, c.crop_scale, c.crop_ratio = crop, scale, ratio
  return c


_JITTED = {}


def _run(images, key, image_size, aug, train=True):
  """augment_batch, jitted once per (image_size, aug, train) in this test session."""
  fields = tuple(str(aug[f]) for f in ("flip", "rot90", "color_jitter", "random_resized_crop",
                                       "crop_scale", "crop_ratio"))
  cache_key = (image_size, train, fields)
  if cache_key not in _JITTED:
    _JITTED[cache_key] = jax.jit(
        lambda x, k: da.augment_batch(x, k, image_size=image_size, aug=aug, train=train))
  return np.asarray(_JITTED[cache_key](images, key))


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
  ref = np.stack([_pil(im, 48, tuple(float(v) for v in b))
                  for im, b in zip(images, boxes, strict=True)])
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
  for im, fh, fv, r in zip(images, flip_h, flip_v, k, strict=True):
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


def test_crop_boxes_have_the_sampled_area_and_aspect():
  scale, ratio = (0.3, 0.6), (0.5, 2.0)
  boxes = np.asarray(_boxes(KEY, 512, 40, 60, scale, ratio), np.float64)
  x0, y0, x1, y1 = boxes.T
  w, h = x1 - x0, y1 - y0
  assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 60 + 1e-4).all()
  assert (y1 <= 40 + 1e-4).all()
  frac, aspect = w * h / (40 * 60), w / h
  assert (frac >= scale[0] - 1e-5).all() and (frac <= scale[1] + 1e-5).all()
  assert (aspect >= ratio[0] - 1e-4).all() and (aspect <= ratio[1] + 1e-4).all()
  assert frac.std() > 0.05 and np.log(aspect).std() > 0.2  # spread, not a constant
  # Offsets are uniform over the positions that fit: both ends are reached.
  rel = x0 / np.maximum(60 - w, 1e-6)
  assert rel.min() < 0.05 and rel.max() > 0.95
  # No candidate fits (an aspect of 3 to 4 at >= 90% of the area): the whole image.
  full = np.asarray(_boxes(KEY, 16, 40, 60, (0.9, 1.0), (3.0, 4.0)))
  np.testing.assert_array_equal(full, np.tile([0, 0, 60, 40], (16, 1)))


def test_crop_takes_the_planted_box():
  """Pixel (y, x) of a coordinate image holds (y, x): each output shows where it came from."""
  s, size, n = 200, 50, 16
  yy, xx = np.mgrid[:s, :s]
  coords = np.stack([yy, xx, np.zeros_like(xx)], -1).astype(np.uint8)
  images = np.repeat(coords[None], n, 0)
  aug = _aug(crop=True, scale=(0.1, 0.5), ratio=(0.5, 2.0))
  raw = _run(images, KEY, size, aug)
  out = raw * 255
  boxes = np.asarray(_boxes(KEY, n, s, s, aug.crop_scale, aug.crop_ratio))
  centers = (np.arange(size) + 0.5) / size
  inner = slice(3, size - 3)  # away from the box edges, where the filter is one-sided
  for i, (x0, y0, x1, y1) in enumerate(boxes):
    want_x = x0 + centers * (x1 - x0) - 0.5  # pixel j (centre j + 0.5) holds the value j
    want_y = y0 + centers * (y1 - y0) - 0.5
    np.testing.assert_allclose(out[i, 25, inner, 1], want_x[inner], atol=0.6)
    np.testing.assert_allclose(out[i, inner, 25, 0], want_y[inner], atol=0.6)
  np.testing.assert_array_equal(
      raw, np.asarray(da.resize_images(images, size, boxes)).astype(np.float32) * np.float32(1 / 255))


def test_color_jitter_scales_a_gray_image_by_the_brightness_factor():
  s = 0.3
  images = np.full((32, 8, 8, 3), 128, np.uint8)
  out = _run(images, KEY, 8, _aug(color_jitter=s))
  ratio = out / (128 / 255)
  factors = np.asarray(da.sample_color_factors(KEY, 32, s))
  assert (factors >= 1 - s).all() and (factors <= 1 + s).all()
  # A constant gray image has no contrast or saturation: only brightness changes it.
  np.testing.assert_allclose(ratio, np.broadcast_to(factors[:, 0, None, None, None], ratio.shape),
                             rtol=1e-5)
  assert ratio.min() < 0.9 and ratio.max() > 1.1
  strong = _run(_images(32, 8), KEY, 8, _aug(color_jitter=0.9))
  assert strong.min() >= 0.0 and strong.max() <= 1.0
  assert (strong == 1.0).any() and (strong == 0.0).any()  # clipped


class _Replay:
  """A numpy Generator stand-in that hands augment.train_transform given draws in order."""

  def __init__(self, values):
    self._values = list(values)

  def _next(self):
    return self._values.pop(0)

  def uniform(self, low=0.0, high=1.0, size=None):
    return self._next()

  def random(self):
    return self._next()

  def integers(self, n):
    return self._next()


def test_matches_host_train_transform_given_the_same_draws():
  """augment_batch == augment.train_transform when the host replays the device's draws."""
  n, s, size, strength = 12, 64, 40, 0.2
  aug = _aug(flip=True, rot90=True, color_jitter=strength, crop=True)
  images = _images(n, s, seed=3)
  out = _run(images, KEY, size, aug)
  boxes = np.asarray(_boxes(KEY, n, s, s, aug.crop_scale, aug.crop_ratio),
                     np.float64)
  flip_h, flip_v, k = (np.asarray(a) for a in da.sample_flips_and_rotations(KEY, n))
  factors = np.asarray(da.sample_color_factors(KEY, n, strength), np.float64)
  for i in range(n):
    x0, y0, x1, y1 = boxes[i]
    w, h = x1 - x0, y1 - y0
    draws = [w * h / (s * s), np.log(w / h), x0, y0]
    draws += [0.0 if flip_h[i] else 0.9, 0.0 if flip_v[i] else 0.9, int(k[i]), factors[i]]
    host = augment.train_transform({"image": images[i], "label": 0}, _Replay(draws),
                                   image_size=size, aug=aug)["image"]
    diff = np.abs(out[i] - host)
    assert diff.max() < 4 / 255 and diff.mean() < 0.2 / 255, (i, diff.max() * 255)


def test_deterministic_in_the_key():
  aug = _aug(flip=True, rot90=True, color_jitter=0.1, crop=True)
  images = _images(8, 32)
  a, b = _run(images, KEY, 24, aug), _run(images, KEY, 24, aug)
  np.testing.assert_array_equal(a, b)
  c = _run(images, jax.random.fold_in(KEY, 1), 24, aug)
  assert np.abs(a - c).reshape(8, -1).max(1).min() > 0  # every example changes


def test_example_depends_only_on_key_index_and_image():
  aug = _aug(flip=True, rot90=True, color_jitter=0.1, crop=True)
  images = _images(8, 32, seed=4)
  out = _run(images, KEY, 24, aug)
  # Replace and shuffle every other example: example 2 is unchanged.
  others = _images(8, 32, seed=5)
  mixed = others[np.random.default_rng(0).permutation(8)]
  mixed[2] = images[2]
  np.testing.assert_array_equal(_run(mixed, KEY, 24, aug)[2], out[2])
  # A smaller batch: the first examples are the same (no dependence on the batch size).
  np.testing.assert_array_equal(_run(images[:4], KEY, 24, aug), out[:4])


def test_raw_uint32_keys_and_a_traced_step_key():
  aug = _aug(flip=True, rot90=True, color_jitter=0.1, crop=True)
  images = _images(4, 16)

  @jax.jit
  def step(x, base, step):
    key = jax.random.fold_in(jax.random.fold_in(base, step), da.AUG_STREAM)
    return da.augment_batch(x, key, image_size=16, aug=aug)

  a = np.asarray(step(images, KEY, jnp.int32(3)))
  b = _run(images, jax.random.fold_in(jax.random.fold_in(KEY, 3), da.AUG_STREAM), 16, aug)
  np.testing.assert_array_equal(a, b)
  raw = _run(images, jax.random.PRNGKey(0), 16, aug)
  assert raw.shape == (4, 16, 16, 3) and np.isfinite(raw).all()


_SHARDED = textwrap.dedent("""
  import jax, numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P
  from derm_jax import config_lib
  from derm_jax.data import device_augment as da
  assert jax.device_count() == 8, jax.devices()
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  data, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
  key = jax.random.key(7)
  for jitter in (0.0, 0.1):
    aug = config_lib.augmentation()
    aug.random_resized_crop, aug.color_jitter = True, jitter
    fn = lambda x, k: da.augment_batch(x, k, image_size=24, aug=aug)
    single = np.asarray(jax.jit(fn)(jax.device_put(images, jax.devices()[0]), key))
    sharded = jax.jit(fn, in_shardings=(data, repl), out_shardings=data)
    hlo = sharded.lower(images, key).compile().as_text()
    for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute"):
      assert op not in hlo, op  # each device augments its own examples
    out = sharded(jax.device_put(images, data), key)
    assert len(out.addressable_shards) == 8
    if jitter == 0:  # integer resize, flips and rotations: bit for bit
      np.testing.assert_array_equal(np.asarray(out), single)
    else:  # the jitter's per-image mean may be summed in another order
      np.testing.assert_allclose(np.asarray(out), single, rtol=0, atol=1e-6)
  print("OK")
""")


def test_sharded_batch_equals_single_device():
  """8 virtual CPU devices: no communication, same images as on one device."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", _SHARDED], cwd=REPO, env=env, capture_output=True,
                     text=True, timeout=300, check=False)
  assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def test_refuses_float_images():
  with pytest.raises(TypeError, match="uint8"):
    da.eval_images(np.zeros((1, 8, 8, 3), np.float32), 4)


def test_vmaps_over_keys():
  aug = _aug(flip=True, rot90=True, color_jitter=0.1, crop=True)
  images = _images(4, 16, seed=6)
  keys = jax.random.split(KEY, 2)
  both = jax.jit(jax.vmap(lambda k: da.augment_batch(images, k, image_size=12, aug=aug)))(keys)
  for j in range(2):
    np.testing.assert_allclose(np.asarray(both[j]), _run(images, keys[j], 12, aug), atol=1e-6)
