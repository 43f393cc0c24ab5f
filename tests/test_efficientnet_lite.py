"""Tests for derm_jax.models.efficientnet_lite: shapes, parameter counts, registry, jit,
depthwise-implementation equivalence."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from derm_jax.models import efficientnet_lite as el
from derm_jax.models import registry

# Parameter counts with the 1000-class head (efficientnet_lite_pytorch / the TF originals).
PARAMS_1000 = {
    "efficientnet_lite0": 4_652_008,
    "efficientnet_lite1": 5_416_680,
    "efficientnet_lite2": 6_092_072,
    "efficientnet_lite3": 8_197_096,
    "efficientnet_lite4": 13_006_568,
}
NUM_BLOCKS = {"efficientnet_lite0": 16, "efficientnet_lite1": 21, "efficientnet_lite2": 21,
              "efficientnet_lite3": 24, "efficientnet_lite4": 30}


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _shapes(model: el.EfficientNetLite, size: int, batch: int = 2):
  x = jnp.zeros((batch, size, size, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  return variables, out


@pytest.mark.parametrize("name", sorted(PARAMS_1000))
def test_param_count_and_logits_shape(name):
  model = el.create(name, num_classes=1000)
  variables, out = _shapes(model, 64)
  assert _count(variables["params"]) == PARAMS_1000[name]
  assert set(variables) == {"params", "batch_stats"}
  assert out.shape == (2, 1000) and out.dtype == jnp.float32
  assert len(el.block_configs(model.width, model.depth)) == NUM_BLOCKS[name]


@pytest.mark.parametrize("name,size,hw", [("efficientnet_lite0", 224, 7),
                                          ("efficientnet_lite1", 240, 8),
                                          ("efficientnet_lite2", 260, 9)])
def test_feature_map_mode(name, size, hw):
  model = registry.get_backbone(name)  # num_classes=None by default
  variables, out = _shapes(model, size)
  info = registry.backbone_info(name)
  assert out.shape == (2, hw, hw, info.num_features)
  assert "fc" not in variables["params"]
  assert info.default_image_size == size
  assert hw == -(-size // info.stride)


def test_bfloat16_compute():
  model = el.create("efficientnet_lite0", dtype=jnp.bfloat16)
  variables, features = _shapes(model, 64)
  assert features.dtype == jnp.bfloat16 and features.shape == (2, 2, 2, 1280)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))  # params stay fp32
  _, logits = _shapes(el.create("efficientnet_lite0", dtype=jnp.bfloat16, num_classes=7), 64)
  assert logits.dtype == jnp.float32 and logits.shape == (2, 7)


def test_registry():
  names = registry.available()
  for n in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
    assert n in names
  assert registry.backbone_info("efficientnet_lite0", num_classes=7) == registry.BackboneInfo(
      "efficientnet_lite0", num_features=1280, stride=32, default_image_size=224)
  m = registry.get_backbone("efficientnet_lite2", num_classes=5, drop_connect_rate=0.2)
  assert isinstance(m, el.EfficientNetLite)
  assert (m.width, m.depth, m.dropout_rate, m.num_classes) == (1.1, 1.2, 0.3, 5)
  assert m.drop_connect_rate == 0.2
  with pytest.raises(TypeError, match="width"):
    el.create("efficientnet_lite0", width=2.0)
  with pytest.raises(KeyError, match="efficientnet_lite9"):
    el.create("efficientnet_lite9")


def test_bad_input_shape():
  model = el.create("efficientnet_lite0")
  with pytest.raises(ValueError, match=r"\(2, 32, 32, 1\)"):
    model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 1)), train=False)


def _random_variables(model, x, seed: int = 0):
  """Random variables of the right shapes without compiling `model.init` (slow on CPU)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if name.endswith("['var']"):
      return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype)
    return jnp.asarray(rng.normal(0.0, 0.1, s.shape), s.dtype)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_jit_train_and_eval():
  model = el.create("efficientnet_lite0", num_classes=3, drop_connect_rate=0.2)
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  variables = _random_variables(model, x)

  @jax.jit
  def train_forward(variables, x, rng):
    return model.apply(variables, x, train=True, mutable=["batch_stats"],
                       rngs={"dropout": rng})

  logits, updates = train_forward(variables, x, jax.random.key(2))
  assert logits.shape == (2, 3) and np.isfinite(np.asarray(logits)).all()
  # BatchNorm running stats move (momentum 0.99) in training mode only.
  old = np.asarray(variables["batch_stats"]["bn0"]["mean"])
  new = np.asarray(updates["batch_stats"]["bn0"]["mean"])
  assert not np.allclose(old, new)
  eval_logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert eval_logits.shape == (2, 3) and np.isfinite(np.asarray(eval_logits)).all()


def test_block_grad_with_drop_connect():
  cfg = el.BlockConfig(kernel_size=3, stride=1, expand_ratio=6, in_filters=8, out_filters=8)
  block = el.MBConvBlock(cfg, drop_connect_rate=0.5)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 8))
  variables = _random_variables(block, x)

  @jax.jit
  def step(params, rng):
    def loss_fn(p):
      y, _ = block.apply({**variables, "params": p}, x, train=True, mutable=["batch_stats"],
                         rngs={"dropout": rng})
      return jnp.mean(y ** 2), y
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  (loss, y), grads = step(variables["params"], jax.random.key(3))
  assert np.isfinite(float(loss))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  # Drop connect: per sample, the residual branch is either dropped (y == x) or kept and
  # scaled by 1 / keep_prob (= 2).
  branch, _ = el.MBConvBlock(cfg).apply(variables, x, train=True, mutable=["batch_stats"])
  branch = np.asarray(branch - x)
  y, x = np.asarray(y), np.asarray(x)
  for i in range(x.shape[0]):
    dropped = np.allclose(y[i], x[i], atol=1e-5)
    kept = np.allclose(y[i], x[i] + 2.0 * branch[i], atol=1e-4)
    assert dropped != kept, f"sample {i}: neither dropped nor kept-and-rescaled"


@pytest.mark.parametrize("stride,kernel,size", [(1, 3, 15), (2, 5, 15), (2, 3, 16)])
def test_depthwise_impls_agree(stride, kernel, size):
  cfg = el.BlockConfig(kernel_size=kernel, stride=stride, expand_ratio=6, in_filters=16,
                       out_filters=16 if stride == 1 else 24)
  x = jax.random.normal(jax.random.key(0), (2, size, size, 16))
  shifted = el.MBConvBlock(cfg, depthwise_impl="shifted")
  grouped = el.MBConvBlock(cfg, depthwise_impl="grouped")
  variables = _random_variables(shifted, x)  # random weights and BN statistics
  a = jax.jit(lambda v: shifted.apply(v, x, train=False))(variables)
  b = jax.jit(lambda v: grouped.apply(v, x, train=False))(variables)
  expected_hw = -(-size // stride)
  assert a.shape == (2, expected_hw, expected_hw, cfg.out_filters)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_tf_same_padding_is_asymmetric():
  # A stride-2 3x3 conv on an even input pads one row/column at the bottom/right only (TF
  # "SAME", what the torch model's static padding does): with all-ones input and kernel the
  # top-left output sums 9 pixels and the bottom-right one 4. Symmetric padding would differ.
  from derm_jax.models import layers
  x = jnp.ones((1, 4, 4, 1))
  y = layers.depthwise_conv(x, jnp.ones((3, 3, 1, 1)), (2, 2), "SAME", impl="shifted")
  np.testing.assert_array_equal(np.asarray(y)[0, :, :, 0], [[9, 6], [6, 4]])
