"""The CPU depthwise convolution (shifted-slice sum with its own VJP) against XLA's grouped
convolution and its autodiff: forward, input gradient and kernel gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
  for a, b in zip(g_new, g_ref):  # d/dx, d/dkernel
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
