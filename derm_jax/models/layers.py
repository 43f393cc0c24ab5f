"""Shared layers. `DepthwiseConv2D` and `PointwiseConv` pick the fastest correct lowering per
backend.

XLA:CPU lowers grouped convolutions (`feature_group_count=C`) very slowly; on CPU the
same depthwise convolution written as a sum of k*k shifted (strided) slices times a
per-channel weight is 5-10x faster. Autodiff of that sum is slow in the backward pass
(the kernel gradient becomes k*k separate full-tensor reductions), so the CPU path
(`depthwise_conv_shifted`) carries a `jax.custom_vjp`:
  * input gradient: the same shifted-slice sum, applied to the output gradient dilated by
    the stride and padded, with the spatially flipped kernel (one fused pass);
  * kernel gradient: one loop over the images of the batch; each step adds the image's k*k
    per-channel sums of products (shifted padded input times output gradient) to a (k*k, C)
    accumulator, all k*k sums in one variadic reduction, which XLA fuses into one pass over
    the image.
On GPU/TPU the grouped conv is the fast path. All give the same result (tested in
tests/test_depthwise.py) and share one parameter layout: `kernel` of shape (kh, kw, 1, C),
as `nn.Conv` with `feature_group_count=C` would create, so checkpoints move freely between
backends. The shifted paths accumulate in float32 whatever the input dtype (bfloat16 inputs
give bfloat16 outputs and gradients).

1x1 convolutions (`PointwiseConv`, nn.Conv's parameters) run on CPU as a matmul over the
channel axis of the feature map flattened to 2-D (`matmul_2d`). XLA:CPU lowers the 1x1
convolution's kernel gradient (a reduction over every pixel) with transposed copies of both
activations, and a dot over the last axis of the 4-D map with a transposed single-threaded
copy of the output gradient; the 2-D matmul has neither. EfficientNet-Lite0 train step,
224 px, batch 32 (`benchmarks/cpu_compare.sh`, one run): 14.1 img/s, against 10.6 with
4-D dots and 7.4 with convolutions.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Padding = str | Sequence[tuple[int, int]]


def _explicit_padding(size: int, k: int, stride: int, padding: Padding, axis: int):
  if isinstance(padding, str):
    pads = lax.padtype_to_pads((size,), (k,), (stride,), padding)
    return tuple(int(p) for p in pads[0])
  return tuple(int(p) for p in padding[axis])


def _shifted_sum(xp, w, strides, out_hw, out_dtype):
  """sum_ij xp[:, o*sh+i, p*sw+j] * w[i, j], float32 accumulation. xp (B,Hp,Wp,C), w (kh,kw,C)."""
  kh, kw = w.shape[0], w.shape[1]
  sh, sw = strides
  ho, wo = out_hw
  w = w.astype(jnp.float32)
  out = None
  for i in range(kh):
    for j in range(kw):
      patch = lax.slice(
          xp, (0, i, j, 0),
          (xp.shape[0], i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, xp.shape[3]),
          (1, sh, sw, 1))
      term = patch.astype(jnp.float32) * w[i, j]
      out = term if out is None else out + term
  return out.astype(out_dtype)


def _out_size(size: int, k: int, stride: int, pads: tuple[int, int]) -> int:
  return (size + pads[0] + pads[1] - k) // stride + 1


def depthwise_conv_shifted_autodiff(x, kernel, strides=(1, 1), padding: Padding = "SAME"):
  """Depthwise conv as a sum of shifted slices, differentiated by JAX's autodiff.

  The previous CPU path, kept as the reference the custom VJP is benchmarked against
  (benchmarks/bench_depthwise.py). x: (B,H,W,C), kernel: (kh,kw,1,C).
  """
  kh, kw = kernel.shape[0], kernel.shape[1]
  sh, sw = strides
  ph = _explicit_padding(x.shape[1], kh, sh, padding, 0)
  pw = _explicit_padding(x.shape[2], kw, sw, padding, 1)
  xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
  out_hw = ((xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1)
  return _shifted_sum(xp, kernel[:, :, 0], strides, out_hw, jnp.result_type(x, kernel))


def _forward(x, kernel, strides, pads):
  ph, pw = pads
  xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
  out_hw = (_out_size(x.shape[1], kernel.shape[0], strides[0], ph),
            _out_size(x.shape[2], kernel.shape[1], strides[1], pw))
  return _shifted_sum(xp, kernel[:, :, 0], strides, out_hw, jnp.result_type(x, kernel))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_vjp(x, kernel, strides, pads):
  return _forward(x, kernel, strides, pads)


def _depthwise_vjp_fwd(x, kernel, strides, pads):
  return _depthwise_vjp(x, kernel, strides, pads), (x, kernel)


def _input_grad(dy, kernel, x_hw, strides, pads):
  """d(out)/dx as a stride-1 shifted sum of the dilated, padded dy with the flipped kernel."""
  kh, kw = kernel.shape[0], kernel.shape[1]
  cfg = [(0, 0, 0)]
  for size, k, s, (lo, _), n in zip(x_hw, (kh, kw), strides, pads, dy.shape[1:3], strict=True):
    # dx[h] = sum_i dyd[h + lo - i] w[i], dyd = dy dilated by s; pad so that index
    # h + lo - i + (k - 1) is in range for h in [0, size); negative pads crop.
    low = k - 1 - lo
    high = size + k - 1 - low - ((n - 1) * s + 1)
    cfg.append((low, high, s - 1))
  cfg.append((0, 0, 0))
  d = lax.pad(dy, jnp.zeros((), dy.dtype), cfg)
  return _shifted_sum(d, kernel[::-1, ::-1, 0], (1, 1), x_hw, dy.dtype)


def _kernel_grad(x, dy, kernel_hw, strides, pads):
  """sum over batch and space of shifted x times dy, as a (kh,kw,1,C) float32 array.

  One `fori_loop` over the images. Each step computes the image's k*k per-channel sums with
  a single variadic `lax.reduce`, which XLA:CPU fuses, slices included, into one kernel that
  reads the image and its output gradient once. The previous form (k*k separate reductions
  per band of 4 output rows) ran ~2k*k small kernels per step, each copying its shifted
  slice first: with this one the Lite0 224 px train step on a 2-core CPU is faster.
  """
  kh, kw = kernel_hw
  sh, sw = strides
  b, ho, wo, c = dy.shape
  ph, pw = pads
  xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))

  def body(img, acc):
    xb = lax.dynamic_slice_in_dim(xp, img, 1, axis=0)
    db = lax.dynamic_slice_in_dim(dy, img, 1, axis=0).astype(jnp.float32)
    products = []
    for i in range(kh):
      for j in range(kw):
        patch = lax.slice(xb, (0, i, j, 0), (1, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                          (1, sh, sw, 1))
        products.append(patch.astype(jnp.float32) * db)
    sums = lax.reduce(tuple(products), (np.float32(0),) * len(products),
                      lambda a, b: tuple(u + v for u, v in zip(a, b, strict=True)), (0, 1, 2))
    return acc + jnp.stack(sums)

  acc = lax.fori_loop(0, b, body, jnp.zeros((kh * kw, c), jnp.float32))
  return acc.reshape(kh, kw, 1, c)


def _depthwise_vjp_bwd(strides, pads, res, dy):
  x, kernel = res
  if strides == (1, 1):
    dx = _input_grad(dy, kernel, x.shape[1:3], strides, pads).astype(x.dtype)
  else:
    # Strided: the dilated dy would be mostly zeros; XLA's transpose of the strided slices
    # (interior-padded adds, one fusion) measured faster here.
    _, vjp = jax.vjp(lambda a: _forward(a, kernel, strides, pads), x)
    (dx,) = vjp(dy)
  dk = _kernel_grad(x, dy, kernel.shape[:2], strides, pads).astype(kernel.dtype)
  return dx, dk


_depthwise_vjp.defvjp(_depthwise_vjp_fwd, _depthwise_vjp_bwd)


def depthwise_conv_shifted(x, kernel, strides=(1, 1), padding: Padding = "SAME"):
  """Depthwise conv as a sum of shifted slices with a fast custom VJP (the CPU path).

  x: (B,H,W,C), kernel: (kh,kw,1,C); `padding` is 'SAME', 'VALID' or ((top, bottom),
  (left, right)) with non-negative entries. Output dtype: the promoted dtype of x and kernel.
  """
  kh, kw = kernel.shape[0], kernel.shape[1]
  strides = (int(strides[0]), int(strides[1]))
  pads = (_explicit_padding(x.shape[1], kh, strides[0], padding, 0),
          _explicit_padding(x.shape[2], kw, strides[1], padding, 1))
  if min(*pads[0], *pads[1]) < 0:
    raise ValueError(f"depthwise_conv_shifted needs non-negative padding, got {pads}.")
  return _depthwise_vjp(x, kernel, strides, pads)


def depthwise_conv_grouped(x, kernel, strides=(1, 1), padding: Padding = "SAME"):
  """Depthwise conv via XLA's grouped convolution (fast on GPU/TPU)."""
  if not isinstance(padding, str):
    padding = [tuple(p) for p in padding]
  return lax.conv_general_dilated(
      x, kernel, window_strides=tuple(strides), padding=padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=x.shape[-1])


_IMPLS = {
    "shifted": depthwise_conv_shifted,
    "shifted_autodiff": depthwise_conv_shifted_autodiff,
    "grouped": depthwise_conv_grouped,
}


def depthwise_conv(x, kernel, strides=(1, 1), padding: Padding = "SAME", impl: str = "auto"):
  """Dispatches to the fastest implementation for the current backend.

  impl: 'auto' ('shifted' on CPU, else 'grouped'), 'shifted' (custom VJP), 'grouped', or
  'shifted_autodiff' (the old CPU path, for benchmarks).
  """
  if impl == "auto":
    impl = "shifted" if jax.default_backend() == "cpu" else "grouped"
  if impl not in _IMPLS:
    raise ValueError(f"Unknown depthwise conv impl {impl!r}; use 'auto', "
                     f"{', '.join(repr(k) for k in _IMPLS)}.")
  return _IMPLS[impl](x, kernel, strides, padding)


class DepthwiseConv2D(nn.Module):
  """Depthwise 2D convolution, NHWC. Params: `kernel` (kh,kw,1,C) and optional `bias` (C,).

  Parameters are `param_dtype` (float32); the convolution runs in `dtype` (default: the
  input's dtype), so dtype=bfloat16 gives bfloat16 outputs from float32 parameters.
  """
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Padding = "SAME"
  use_bias: bool = True
  impl: str = "auto"
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, 1, c), self.param_dtype)
    dtype = self.dtype or x.dtype
    y = depthwise_conv(x.astype(dtype), kernel.astype(dtype), self.strides, self.padding,
                       self.impl)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (c,), self.param_dtype).astype(dtype)
    return y


def matmul_2d(x, w):
  """x (..., in) @ w (in, out), computed on x flattened to 2-D (rows, in).

  The same product as a dot over the last axis of x, but its gradient with respect to w is
  then one matmul over the rows of two 2-D arrays. Written on the 4-D arrays, that gradient
  contracts the batch and spatial axes, and XLA:CPU lowers it with a transposed copy of the
  output gradient (fused into the BatchNorm backward, one thread), the slowest op of the
  EfficientNet-Lite0 train step in a profile.
  """
  y = lax.dot_general(x.reshape(-1, x.shape[-1]), w, (((1,), (0,)), ((), ())))
  return y.reshape(*x.shape[:-1], w.shape[-1])


def pointwise_conv(x, kernel, impl: str = "auto"):
  """1x1 convolution of NHWC `x` with `kernel` (1, 1, in, out), stride 1.

  impl: 'auto' ('dot' on CPU, else 'conv'), 'dot' (`matmul_2d`: a matmul over the channel
  axis of x flattened to 2-D), 'dot_nd' (a dot over the last axis of the 4-D x: the
  previous CPU path, kept as the reference `benchmarks/cpu_compare.sh` measures 'dot'
  against) or 'conv' (XLA's convolution). All give the same result.
  """
  if impl == "auto":
    impl = "dot" if jax.default_backend() == "cpu" else "conv"
  if impl == "dot":
    return matmul_2d(x, kernel[0, 0])
  if impl == "dot_nd":
    return lax.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())))
  if impl == "conv":
    return lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
  raise ValueError(f"Unknown pointwise conv impl {impl!r}; use 'auto', 'dot', 'dot_nd' or "
                   "'conv'.")


class PointwiseConv(nn.Module):
  """1x1 convolution, NHWC, with exactly `nn.Conv(features, (1, 1))`'s parameters (`kernel`
  (1, 1, in, out) in `param_dtype`, optional `bias`) and dtype handling, so checkpoints and
  converted weights are interchangeable with it; lowered by `pointwise_conv`."""
  features: int
  use_bias: bool = True
  impl: str = "auto"
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = pointwise_conv(x, kernel, self.impl)
    return y + bias if bias is not None else y
