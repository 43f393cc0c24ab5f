"""Tests for the contrastive building blocks (derm_jax/tasks/contrastive.py): NT-Xent against
an independent NumPy reference, the projection head and the two augmented views."""

import os
import subprocess
import sys
import textwrap

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from derm_jax import config_lib
from derm_jax.data import device_augment
from derm_jax.tasks import contrastive

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_loss = jax.jit(contrastive.nt_xent_loss)


def _reference(z1, z2, t, mask=None):
  """NT-Xent written out anchor by anchor in float64: (mean loss, per-anchor losses,
  accuracy) over the kept pairs only."""
  keep = np.ones(len(z1), bool) if mask is None else np.asarray(mask, bool)
  a, b = np.asarray(z1, np.float64)[keep], np.asarray(z2, np.float64)[keep]
  z = np.concatenate([a, b])
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  m = len(a)
  losses, hits = [], []
  for i in range(2 * m):
    p = (i + m) % (2 * m)
    others = [j for j in range(2 * m) if j != i]
    s = {j: z[i] @ z[j] / t for j in others}
    losses.append(-s[p] + np.log(sum(np.exp(s[j]) for j in others)))
    hits.append(max(others, key=lambda j: s[j]) == p)
  return np.mean(losses), np.array(losses), np.mean(hits)


def _embeddings(n, d, seed):
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(n, d)).astype(np.float32)
  z2 = (z1 + 0.8 * rng.normal(size=(n, d))).astype(np.float32)  # noisy positives
  return z1, z2


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_nt_xent_matches_numpy_reference(t):
  z1, z2 = _embeddings(6, 5, seed=int(t * 10))
  loss, aux = _loss(z1, z2, t)
  ref_loss, ref_per, ref_acc = _reference(z1, z2, t)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(aux["per_anchor"]), ref_per, rtol=1e-5, atol=1e-6)
  assert 0 < ref_acc < 1  # the planted noise makes some anchors wrong: accuracy is tested
  np.testing.assert_allclose(float(aux["accuracy"]), ref_acc)


def test_nt_xent_closed_form_identical_positives_orthogonal_negatives():
  n, t = 4, 0.2
  z = np.eye(n, 6, dtype=np.float32) * 3.0  # orthogonal, any length
  loss, aux = _loss(z, z, t)
  # Positive similarity 1, 2N-2 negatives at similarity 0, self excluded.
  expected = np.log1p((2 * n - 2) * np.exp(-1.0 / t))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(aux["per_anchor"]), np.full(2 * n, expected), rtol=1e-6)
  assert float(aux["accuracy"]) == 1.0


def test_nt_xent_is_invariant_to_embedding_scale():
  z1, z2 = _embeddings(5, 4, seed=1)
  base = float(_loss(z1, z2, 0.3)[0])
  scale = np.array([[7.0], [0.01], [1e3], [2.0], [0.5]], np.float32)
  np.testing.assert_allclose(float(_loss(z1 * scale, z2 * 100.0, 0.3)[0]), base, rtol=1e-5)


def test_nt_xent_gradient_is_finite_and_a_descent_direction():
  z1, z2 = _embeddings(4, 3, seed=2)
  grad = jax.jit(jax.grad(lambda a, b: contrastive.nt_xent_loss(a, b, 0.1)[0], argnums=(0, 1)))
  g1, g2 = grad(z1, z2)
  assert np.isfinite(g1).all() and np.isfinite(g2).all() and np.abs(g1).max() > 0
  # A small step down the gradient lowers the loss.
  lower = _loss(z1 - 1e-2 * np.asarray(g1), z2 - 1e-2 * np.asarray(g2), 0.1)[0]
  assert float(lower) < float(_loss(z1, z2, 0.1)[0])
  # A zero embedding (e.g. a dead projection) gives finite values and gradients.
  z0 = z1.copy()
  z0[0] = 0
  g0 = grad(z0, z2)[0]
  assert np.isfinite(np.asarray(g0)).all()


def test_masked_pairs_are_neither_anchors_nor_negatives():
  z1, z2 = _embeddings(6, 5, seed=3)
  mask = np.array([1, 0, 1, 1, 0, 1], np.float32)
  z1[1], z2[4] = 1e4, -1e4  # padding holds anything
  loss, aux = _loss(z1, z2, 0.5, mask)
  ref_loss, ref_per, ref_acc = _reference(z1, z2, 0.5, mask)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
  keep = np.concatenate([mask, mask]) > 0
  np.testing.assert_allclose(np.asarray(aux["per_anchor"])[keep], ref_per, rtol=1e-5)
  assert (np.asarray(aux["per_anchor"])[~keep] == 0).all()
  np.testing.assert_allclose(float(aux["accuracy"]), ref_acc)
  g = jax.jit(jax.grad(lambda a: contrastive.nt_xent_loss(a, z2, 0.5, mask)[0]))(z1)
  assert np.isfinite(np.asarray(g)).all() and (np.asarray(g)[mask == 0] == 0).all()


def test_nt_xent_vmaps_over_a_population_axis():
  pop = [_embeddings(4, 3, seed=10 + p) for p in range(3)]
  z1, z2 = (np.stack([p[j] for p in pop]) for j in range(2))
  temps = np.array([0.1, 0.5, 1.0], np.float32)
  loss, aux = jax.jit(jax.vmap(contrastive.nt_xent_loss))(z1, z2, temps)
  assert loss.shape == (3,) and aux["per_anchor"].shape == (3, 8) and aux["accuracy"].shape == (3,)
  for p in range(3):
    np.testing.assert_allclose(float(loss[p]), _reference(z1[p], z2[p], temps[p])[0], rtol=1e-5)


_SHARDED = textwrap.dedent("""
  import jax, numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P
  from derm_jax.tasks import contrastive
  assert jax.device_count() == 4, jax.devices()
  mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  data, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  rng = np.random.default_rng(0)
  z1, z2 = (rng.normal(size=(8, 6)).astype(np.float32) for _ in range(2))
  fn = lambda a, b: contrastive.nt_xent_loss(a, b, 0.2)
  single = jax.jit(fn)(*(jax.device_put(z, jax.devices()[0]) for z in (z1, z2)))
  sharded = jax.jit(fn, in_shardings=(data, data))(*(jax.device_put(z, data) for z in (z1, z2)))
  np.testing.assert_allclose(float(sharded[0]), float(single[0]), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(sharded[1]["per_anchor"]),
                             np.asarray(single[1]["per_anchor"]), rtol=1e-5)
  print("OK")
""")


def test_nt_xent_over_a_batch_sharded_on_four_devices_equals_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", _SHARDED], cwd=REPO, env=env, capture_output=True,
                     text=True, timeout=120, check=False)
  assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


# ------------------------------------------------------------------------ projection head


def test_projection_head_pools_then_mlp():
  head = contrastive.ProjectionHead(hidden=8, out_dim=4)
  fmap = jax.random.normal(jax.random.key(0), (3, 2, 2, 5), jnp.bfloat16)
  v = jax.jit(head.init)(jax.random.key(1), fmap)
  p = v["params"]
  assert set(p) == {"hidden_0", "out"}
  assert p["hidden_0"]["kernel"].shape == (5, 8) and p["out"]["kernel"].shape == (8, 4)
  apply = jax.jit(head.apply)
  out = apply(v, fmap)
  assert out.shape == (3, 4) and out.dtype == jnp.float32
  pooled = np.asarray(fmap, np.float32).mean(axis=(1, 2))
  h = np.maximum(pooled @ np.asarray(p["hidden_0"]["kernel"]) + np.asarray(p["hidden_0"]["bias"]),
                 0)
  manual = h @ np.asarray(p["out"]["kernel"]) + np.asarray(p["out"]["bias"])
  np.testing.assert_allclose(np.asarray(out), manual, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(apply(v, pooled)), manual, rtol=1e-5, atol=1e-5)


def _param_shapes(head, feats):
  v = jax.eval_shape(head.init, jax.random.key(0), feats)
  return {"/".join(k): x.shape for k, x in flax.traverse_util.flatten_dict(v["params"]).items()}


def test_projection_head_sizes_depth_and_activation():
  fmap = jnp.ones((2, 3, 3, 16))
  assert _param_shapes(contrastive.ProjectionHead(), fmap) == {  # SimCLR's sizes by default
      "hidden_0/kernel": (16, 512), "hidden_0/bias": (512,), "out/kernel": (512, 128),
      "out/bias": (128,)}
  deep = contrastive.ProjectionHead(hidden=6, out_dim=3, num_layers=3, activation="gelu")
  assert _param_shapes(deep, fmap) == {
      "hidden_0/kernel": (16, 6), "hidden_0/bias": (6,), "hidden_1/kernel": (6, 6),
      "hidden_1/bias": (6,), "out/kernel": (6, 3), "out/bias": (3,)}
  with pytest.raises(ValueError, match="activation"):
    _param_shapes(contrastive.ProjectionHead(activation="tanh"), fmap)


# ------------------------------------------------------------------------------- the views


def _aug(flip=False, rot90=False, color_jitter=0.0, crop=False):
  c = config_lib.augmentation()
  c.flip, c.rot90, c.color_jitter, c.random_resized_crop = flip, rot90, color_jitter, crop
  return c


_JITTED = {}


def _views(images, key, aug, size=8, partners=None, grayscale=0.0):
  """two_views, jitted once per (aug, size, grayscale) in this test session."""
  cache_key = (str(aug.to_dict()), size, grayscale)
  if cache_key not in _JITTED:
    _JITTED[cache_key] = jax.jit(lambda x, k, p: contrastive.two_views(
        x, k, image_size=size, aug=aug, partners_u8=p, grayscale=grayscale))
  a, b = _JITTED[cache_key](images, key, partners)
  return np.asarray(a), np.asarray(b)


IMAGES = np.random.default_rng(0).integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
KEY = jax.random.key(42)


def test_views_without_augmentation_are_the_deterministic_resize():
  a, b = _views(IMAGES, KEY, _aug())
  resized = np.asarray(device_augment.eval_images(IMAGES, 8))
  np.testing.assert_array_equal(a, resized)
  np.testing.assert_array_equal(b, resized)


def test_views_with_only_flips_are_flips_of_the_resize_and_follow_augment_batch():
  aug = _aug(flip=True)
  a, b = _views(IMAGES, KEY, aug)
  resized = np.asarray(device_augment.eval_images(IMAGES, 8))
  for view in (a, b):
    for x, r in zip(view, resized, strict=True):
      flips = [r, r[:, ::-1], r[::-1], r[::-1, ::-1]]
      assert any(np.array_equal(x, f) for f in flips)
  assert not np.array_equal(a, b)  # 6 independent flip pairs: they differ somewhere
  one = jax.jit(lambda k: device_augment.augment_batch(IMAGES, k, image_size=8, aug=aug))
  for v, k in enumerate(contrastive.view_keys(KEY)):
    np.testing.assert_array_equal((a, b)[v], np.asarray(one(k)))


def test_colour_jitter_changes_values_not_geometry():
  gray = np.repeat(IMAGES[..., :1], 3, axis=-1)  # saturation is a no-op on gray images
  a, b = _views(gray, KEY, _aug(color_jitter=0.4))
  resized = np.asarray(device_augment.eval_images(gray, 8))
  for view in (a, b):
    assert np.abs(view - resized).max() > 0.01
    for x, r in zip(view, resized, strict=True):
      # Per image an increasing affine map of the same pixel: the geometry is untouched.
      free = (x[..., 0] > 0) & (x[..., 0] < 1)
      slope, icpt = np.polyfit(r[..., 0][free], x[..., 0][free], 1)
      assert slope > 0
      np.testing.assert_allclose(x[..., 0][free], slope * r[..., 0][free] + icpt, atol=1e-5)


def test_views_differ_and_the_same_key_gives_the_same_views():
  aug = _aug(flip=True, rot90=True, color_jitter=0.2, crop=True)
  a, b = _views(IMAGES, KEY, aug)
  assert all(not np.allclose(x, y) for x, y in zip(a, b, strict=True))
  a2, b2 = _views(IMAGES, KEY, aug)
  np.testing.assert_array_equal(a, a2)
  np.testing.assert_array_equal(b, b2)
  a3, _ = _views(IMAGES, jax.random.key(7), aug)
  assert not np.allclose(a, a3)


def test_partner_view_and_grayscale():
  partners = IMAGES[::-1].copy()
  a, b = _views(IMAGES, KEY, _aug(), partners=partners)
  np.testing.assert_array_equal(a, np.asarray(device_augment.eval_images(IMAGES, 8)))
  np.testing.assert_array_equal(b, np.asarray(device_augment.eval_images(partners, 8)))
  a, b = _views(IMAGES, KEY, _aug(), grayscale=1.0)
  resized = np.asarray(device_augment.eval_images(IMAGES, 8))
  luma = resized @ np.array([0.299, 0.587, 0.114], np.float32)
  for view in (a, b):
    np.testing.assert_allclose(view, np.repeat(luma[..., None], 3, -1), atol=1e-6)
  g = np.asarray(contrastive.random_grayscale(jnp.asarray(np.tile(resized, (20, 1, 1, 1))),
                                              KEY, 0.5))
  is_gray = np.all(g[..., 0] == g[..., 1], axis=(1, 2))
  assert 0 < is_gray.sum() < len(g)  # about half of 120 images
