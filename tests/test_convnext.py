"""Tests for derm_jax.models.convnext: shapes, parameter count, drop path, jit, registry."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from derm_jax.models import convnext
from derm_jax.models.convnext import ConvNeXt

# torchvision.models.convnext_tiny() / timm convnext_tiny: 28,589,128 parameters.
TINY_PARAMS_1000 = 28_589_128


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _init_shapes(model: ConvNeXt, size: int = 224, batch: int = 2):
  x = jnp.zeros((batch, size, size, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  return variables, out


def _random_variables(model: ConvNeXt, x: jax.Array, seed: int = 0):
  """Variables of the right structure filled with numpy noise (no XLA RNG compile: fast)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "gamma":  # not the 1e-6 init, so every residual branch matters
      return jnp.asarray(rng.uniform(0.2, 0.8, leaf.shape), jnp.float32)
    if name == "scale":
      return jnp.asarray(1.0 + 0.1 * rng.standard_normal(leaf.shape), jnp.float32)
    std = 0.02 if name == "kernel" else 0.01
    return jnp.asarray(std * rng.standard_normal(leaf.shape), jnp.float32)

  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _apply(model: ConvNeXt, variables, x: jax.Array, train: bool = False, **kwargs):
  return jax.jit(model.apply, static_argnames="train")(variables, x, train=train, **kwargs)


def _images(batch: int = 2, size: int = 64, seed: int = 0) -> jax.Array:
  return jax.random.uniform(jax.random.key(seed), (batch, size, size, 3), jnp.float32)


# Small enough that eager mode and several compilations stay cheap on a 2-core CPU.
def _toy(**kwargs) -> ConvNeXt:
  return convnext.convnext_nano_cpu(depths=(1, 2), dims=(8, 16), **kwargs)


def test_tiny_param_count_matches_torchvision():
  variables, out = _init_shapes(convnext.convnext_tiny(num_classes=1000))
  assert _count(variables["params"]) == TINY_PARAMS_1000
  assert out.shape == (2, 1000)
  assert set(variables) == {"params"}


@pytest.mark.parametrize("name,dims", [("convnext_tiny", (96, 192, 384, 768)),
                                       ("convnext_nano_cpu", (32, 64, 128, 256)),
                                       ("convnext_micro_cpu", (48, 96, 192, 384))])
def test_output_shapes(name: str, dims: tuple[int, ...]):
  variables, out = _init_shapes(getattr(convnext, name)(), size=224)
  assert out.shape == (2, 7, 7, dims[-1]) and out.dtype == jnp.float32
  assert "head" not in variables["params"] and "head_norm" not in variables["params"]
  _, out = _init_shapes(getattr(convnext, name)(), size=96)
  assert out.shape == (2, 3, 3, dims[-1])
  _, logits = _init_shapes(getattr(convnext, name)(num_classes=7), size=96)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32


def test_nano_init_and_forward():
  x = _images(size=64)
  classifier = convnext.convnext_nano_cpu(num_classes=7)
  variables = jax.jit(classifier.init, static_argnames="train")(jax.random.key(0), x, train=False)
  gammas = [v for p, v in jax.tree_util.tree_leaves_with_path(variables) if p[-1].key == "gamma"]
  assert len(gammas) == 5 and all(bool(jnp.all(g == 1e-6)) for g in gammas)
  logits = _apply(classifier, variables, x)
  assert logits.shape == (2, 7) and bool(jnp.all(jnp.isfinite(logits)))
  # The feature-map model uses the same parameters minus the head.
  body = {"params": {k: v for k, v in variables["params"].items()
                     if k not in ("head", "head_norm")}}
  features = _apply(convnext.convnext_nano_cpu(), body, x)
  assert features.shape == (2, 2, 2, 256) and bool(jnp.all(jnp.isfinite(features)))


def test_depths_dims_override():
  model = convnext.convnext_nano_cpu(depths=(1, 1), dims=(8, 16))
  _, out = _init_shapes(model, size=32)
  assert out.shape == (2, 4, 4, 16)
  with pytest.raises(ValueError, match="one dim per stage"):
    _init_shapes(convnext.convnext_nano_cpu(depths=(1, 1, 1), dims=(8, 16)), size=32)


def test_registry_info_and_constructors():
  pytest.importorskip("derm_jax.models.efficientnet_lite")  # the registry imports it too
  from derm_jax.models import registry
  names = registry.available()
  for name, (depths, dims) in convnext.VARIANTS.items():
    assert name in names
    info = registry.backbone_info(name)
    assert info == registry.BackboneInfo(name, num_features=dims[-1], stride=32,
                                         default_image_size=224)
    model = registry.get_backbone(name)
    assert isinstance(model, ConvNeXt) and tuple(model.depths) == depths
  assert registry.backbone_info("convnext_tiny", dims=(8, 16, 32, 64)).num_features == 64
  model = registry.get_backbone("convnext_nano_cpu", dims=(8, 16, 32, 64), num_classes=3)
  assert model.dims == (8, 16, 32, 64) and model.num_classes == 3


def test_drop_path_is_identity_in_eval_and_random_in_train():
  x = _images(batch=8, size=16)
  plain = _toy(num_classes=5)
  dropped = _toy(num_classes=5, drop_path_rate=0.5)
  variables = _random_variables(plain, x)
  ref = _apply(plain, variables, x, train=False)
  np.testing.assert_array_equal(_apply(dropped, variables, x, train=False), ref)
  # train=True without drop path is deterministic and needs no rng.
  np.testing.assert_array_equal(_apply(plain, variables, x, train=True), ref)

  train = jax.jit(lambda v, key: dropped.apply(v, x, train=True, rngs={"dropout": key}))
  train_a = train(variables, jax.random.key(1))
  train_a2 = train(variables, jax.random.key(1))
  train_b = train(variables, jax.random.key(2))
  np.testing.assert_array_equal(train_a, train_a2)
  assert float(jnp.max(jnp.abs(train_a - ref))) > 1e-3
  assert float(jnp.max(jnp.abs(train_a - train_b))) > 1e-3
  with pytest.raises(Exception, match="dropout"):
    _apply(dropped, variables, x, train=True)


def test_jit_matches_eager():
  x = _images(size=16)
  model = _toy(num_classes=10)
  variables = _random_variables(model, x)
  np.testing.assert_allclose(_apply(model, variables, x), model.apply(variables, x, train=False),
                             atol=1e-5, rtol=1e-5)
  grouped = _apply(_toy(num_classes=10, depthwise_impl="grouped"), variables, x)
  np.testing.assert_allclose(grouped, model.apply(variables, x, train=False), atol=1e-5, rtol=1e-5)
  # (A jitted gradient is not checked here: compiling the backward pass of the CPU
  # shifted-slice depthwise conv takes ~25 s even for this toy on a loaded 2-core CPU.)


def test_bfloat16_compute_keeps_fp32_params():
  x = _images(size=16)
  model = _toy(dtype=jnp.bfloat16)
  variables = _random_variables(model, x)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
  out = _apply(model, variables, x)
  assert out.dtype == jnp.bfloat16
  ref = _apply(_toy(), variables, x)
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=0.1, rtol=0.1)


def test_bad_inputs_raise():
  model = convnext.convnext_nano_cpu()
  with pytest.raises(ValueError, match="NHWC"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, 32, 32)), train=False))
  with pytest.raises(ValueError, match="drop_path_rate"):
    _init_shapes(convnext.convnext_nano_cpu(drop_path_rate=1.0), size=32)
