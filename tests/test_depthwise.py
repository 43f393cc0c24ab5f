"""The CPU depthwise convolution (shifted-slice sum with its own VJP) against XLA's grouped
convolution and its autodiff: forward, input gradient and kernel gradient; the 1x1
convolution as a matmul against nn.Conv."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from derm_jax.models import layers


@pytest.mark.parametrize("k,stride,h", [(3, 1, 9), (3, 2, 10), (5, 1, 10), (5, 2, 9),
                                        (7, 1, 9), (7, 2, 12)])
def test_custom_vjp_matches_grouped_convolution(k, stride, h):
  rng = np.random.default_rng(k * 10 + stride)
  x = jnp.asarray(rng.normal(size=(2, h, h + 1, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 1, 6)), jnp.float32)
  dy_seed = jnp.asarray(rng.normal(size=(2, -(-h // stride), -(-(h + 1) // stride), 6)),
                        jnp.float32)

  def loss(impl):
    def f(x, w):
      y = layers.depthwise_conv(x, w, (stride, stride), "SAME", impl=impl)
      return jnp.sum(y * dy_seed), y
    return f

  (_, y_ref), g_ref = jax.value_and_grad(loss("grouped"), argnums=(0, 1), has_aux=True)(x, w)
  (_, y_new), g_new = jax.jit(jax.value_and_grad(loss("shifted"), argnums=(0, 1),
                                                 has_aux=True))(x, w)
  np.testing.assert_allclose(y_new, y_ref, rtol=1e-5, atol=1e-5)
  for a, b in zip(g_new, g_ref, strict=True):  # d/dx, d/dkernel
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bfloat16_inputs_give_bfloat16_outputs_close_to_float32():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 1, 4)), jnp.float32)
  y32 = layers.depthwise_conv(x, w, (1, 1), "SAME", impl="shifted")
  y16 = layers.depthwise_conv(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), (1, 1), "SAME",
                              impl="shifted")
  assert y16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y16, np.float32), y32, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("use_bias,dtype", [(False, None), (True, None), (False, jnp.bfloat16)])
def test_pointwise_conv_is_nn_conv_1x1(use_bias, dtype):
  """PointwiseConv has nn.Conv's parameters (same tree, shapes, values from the same key),
  and its matmul lowerings ('dot', the CPU path, on x flattened to 2-D; 'dot_nd', on the 4-D
  x) and convolution lowering give nn.Conv's outputs and gradients."""
  x = jax.random.normal(jax.random.key(0), (2, 7, 6, 5))
  kw = dict(use_bias=use_bias, dtype=dtype, bias_init=nn.initializers.normal(1.0))
  ref = nn.Conv(9, (1, 1), **kw)
  params = ref.init(jax.random.key(1), x)
  mine = {impl: layers.PointwiseConv(9, impl=impl, **kw) for impl in ("dot", "dot_nd", "conv")}
  for impl, module in mine.items():
    jax.tree.map(np.testing.assert_array_equal, module.init(jax.random.key(1), x), params)

  def loss(module):
    return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x).astype(jnp.float32)))

  tol = 1e-5 if dtype is None else 2e-2
  want = jax.grad(loss(ref), argnums=(0, 1))(params, x)
  for impl, module in mine.items():
    y = jax.jit(module.apply)(params, x)
    assert y.dtype == ref.apply(params, x).dtype
    np.testing.assert_allclose(np.asarray(y, np.float32),
                               np.asarray(ref.apply(params, x), np.float32), rtol=tol, atol=tol)
    got = jax.jit(jax.grad(loss(module), argnums=(0, 1)))(params, x)
    # bfloat16 gradients sum many products in another order: the bound scales with them.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max()))), got, want)
  with pytest.raises(ValueError, match="Unknown pointwise conv impl"):
    layers.PointwiseConv(9, impl="fft").init(jax.random.key(1), x)
