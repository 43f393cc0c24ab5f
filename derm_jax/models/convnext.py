"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022) in flax.linen.

The architecture follows the published model (and the timm / torchvision ports) exactly,
so ImageNet weights convert one-to-one (see `derm_jax.convert.convnext`):

  stem:        4x4 stride-4 conv -> LayerNorm
  stage i > 0: LayerNorm -> 2x2 stride-2 conv (downsample), then depths[i] blocks
  block:       7x7 depthwise conv -> LayerNorm -> Dense(4C) -> GELU (erf) -> Dense(C)
               -> layer scale (gamma) -> drop path -> + residual
  head:        global average pool -> LayerNorm -> Dense(num_classes)

All LayerNorms use eps 1e-6. With `num_classes=None` the module returns the last stage's
feature map (B, h, w, C) without the final norm (the backbone contract of
`derm_jax.models.registry`); with an int it returns the original classification logits.

Parameter tree (what the converter fills):
  stem_conv, stem_norm, downsample{i}_norm / downsample{i}_conv for i = 1..n-1,
  stage{i}_block{j}/{dwconv, norm, pwconv1, pwconv2, gamma}, head_norm, head.

Registered backbones: 'convnext_tiny' (published), 'convnext_micro_cpu' and
'convnext_nano_cpu' (small variants for laptop/CPU runs). Every constructor accepts
`depths` / `dims` overrides and the module's other fields as keyword arguments.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from derm_jax.models import layers, registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LN_EPS = 1e-6

# The original initialisation: trunc_normal(std=0.02) for conv / linear kernels, zero bias.
_kernel_init = nn.initializers.truncated_normal(stddev=0.02)
_bias_init = nn.initializers.zeros_init()


def _layer_norm(name: str, dtype: Any) -> nn.LayerNorm:
  # Two-pass variance (as torch) rather than E[x^2] - E[x]^2, for conversion parity.
  return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, use_fast_variance=False, name=name)


class DropPath(nn.Module):
  """Stochastic depth per sample (drops the whole residual branch). Uses the 'dropout' rng."""
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.rate == 0.0 or not train:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


class ConvNeXtBlock(nn.Module):
  """One ConvNeXt block (channels-last); input and output (B, H, W, C)."""
  dim: int
  drop_path: float = 0.0
  layer_scale_init: float | None = 1e-6
  dtype: Any = jnp.float32
  depthwise_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    shortcut = x
    y = layers.DepthwiseConv2D(
        kernel_size=(7, 7), padding=((3, 3), (3, 3)), kernel_init=_kernel_init,
        bias_init=_bias_init, impl=self.depthwise_impl, dtype=self.dtype, name="dwconv")(x)
    y = _layer_norm("norm", self.dtype)(y)
    y = nn.Dense(4 * self.dim, dtype=self.dtype, kernel_init=_kernel_init,
                 bias_init=_bias_init, name="pwconv1")(y)
    y = nn.gelu(y, approximate=False)
    y = nn.Dense(self.dim, dtype=self.dtype, kernel_init=_kernel_init,
                 bias_init=_bias_init, name="pwconv2")(y)
    if self.layer_scale_init is not None and self.layer_scale_init > 0:
      gamma = self.param("gamma", nn.initializers.constant(self.layer_scale_init), (self.dim,))
      y = y * gamma.astype(y.dtype)
    y = DropPath(self.drop_path, name="drop_path")(y, train)
    return shortcut + y


class ConvNeXt(nn.Module):
  """ConvNeXt. Input: float images in [0, 1], NHWC; ImageNet mean/std applied inside.

  Returns the last stage's feature map (B, H/32, W/32, dims[-1]) when `num_classes` is
  None, else logits (B, num_classes) in float32. `depthwise_impl` is passed to
  `layers.DepthwiseConv2D` ('auto' picks the fastest lowering for the backend).
  """
  depths: Sequence[int] = (3, 3, 9, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  num_classes: int | None = None
  drop_path_rate: float = 0.0
  layer_scale_init: float | None = 1e-6
  dtype: Any = jnp.float32
  depthwise_impl: str = "auto"

  def _check(self) -> None:
    if len(self.depths) != len(self.dims) or not self.depths:
      raise ValueError(f"ConvNeXt needs one dim per stage: got depths={tuple(self.depths)} "
                       f"and dims={tuple(self.dims)}.")
    if any(d < 1 for d in self.depths) or any(c < 1 for c in self.dims):
      raise ValueError(f"ConvNeXt depths and dims must be positive: depths={tuple(self.depths)}, "
                       f"dims={tuple(self.dims)}.")
    if not 0.0 <= self.drop_path_rate < 1.0:
      raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}.")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    self._check()
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"ConvNeXt expects NHWC RGB images (B, H, W, 3), got shape {x.shape}.")
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    x = ((x.astype(jnp.float32) - mean) / std).astype(self.dtype)

    # Linearly increasing drop-path rate over all blocks, as in the paper.
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
    block_id = 0
    for i, (depth, dim) in enumerate(zip(self.depths, self.dims, strict=True)):
      if i == 0:
        x = nn.Conv(dim, (4, 4), strides=(4, 4), padding="VALID", dtype=self.dtype,
                    kernel_init=_kernel_init, bias_init=_bias_init, name="stem_conv")(x)
        x = _layer_norm("stem_norm", self.dtype)(x)
      else:
        x = _layer_norm(f"downsample{i}_norm", self.dtype)(x)
        x = nn.Conv(dim, (2, 2), strides=(2, 2), padding="VALID", dtype=self.dtype,
                    kernel_init=_kernel_init, bias_init=_bias_init, name=f"downsample{i}_conv")(x)
      for j in range(depth):
        x = ConvNeXtBlock(dim, drop_path=rates[block_id], layer_scale_init=self.layer_scale_init,
                          dtype=self.dtype, depthwise_impl=self.depthwise_impl,
                          name=f"stage{i}_block{j}")(x, train)
        block_id += 1

    if self.num_classes is None:
      return x
    x = jnp.mean(x, axis=(1, 2))
    x = _layer_norm("head_norm", self.dtype)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_kernel_init,
                 bias_init=_bias_init, name="head")(x)
    return x.astype(jnp.float32)


# --- registry ------------------------------------------------------------------------------

VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_micro_cpu": ((2, 2, 4, 2), (48, 96, 192, 384)),
    "convnext_nano_cpu": ((1, 1, 2, 1), (32, 64, 128, 256)),
}


def _build(name: str, **kwargs: Any) -> ConvNeXt:
  depths, dims = VARIANTS[name]
  kwargs.setdefault("depths", depths)
  kwargs.setdefault("dims", dims)
  kwargs["depths"] = tuple(kwargs["depths"])
  kwargs["dims"] = tuple(kwargs["dims"])
  return ConvNeXt(**kwargs)


def _info(name: str, **kwargs: Any) -> registry.BackboneInfo:
  """BackboneInfo without building the module; other kwargs (num_classes, ...) are ignored."""
  dims = tuple(kwargs.get("dims", VARIANTS[name][1]))
  if not dims:
    raise ValueError(f"{name}: dims must name at least one stage.")
  return registry.BackboneInfo(name=name, num_features=dims[-1], stride=4 * 2 ** (len(dims) - 1),
                               default_image_size=224)


@registry.register("convnext_tiny", info=functools.partial(_info, "convnext_tiny"))
def convnext_tiny(**kwargs: Any) -> ConvNeXt:
  """ConvNeXt-Tiny as published: depths (3, 3, 9, 3), dims (96, 192, 384, 768), 28.6M params."""
  return _build("convnext_tiny", **kwargs)


@registry.register("convnext_micro_cpu", info=functools.partial(_info, "convnext_micro_cpu"))
def convnext_micro_cpu(**kwargs: Any) -> ConvNeXt:
  """Small CPU variant: depths (2, 2, 4, 2), dims (48, 96, 192, 384)."""
  return _build("convnext_micro_cpu", **kwargs)


@registry.register("convnext_nano_cpu", info=functools.partial(_info, "convnext_nano_cpu"))
def convnext_nano_cpu(**kwargs: Any) -> ConvNeXt:
  """Tiny CPU variant for smoke tests: depths (1, 1, 2, 1), dims (32, 64, 128, 256)."""
  return _build("convnext_nano_cpu", **kwargs)
