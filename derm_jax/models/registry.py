"""Backbone registry: one name -> one flax.linen constructor, shared by the VAE and the classifier.

Contract of every registered backbone module:
  * input: float images in [0, 1], NHWC; the backbone applies its own input
    normalisation (ImageNet mean/std, or EfficientNet-Lite's (x*255-127)/128) first;
  * `__call__(x, train: bool)` returns the last feature map (B, h, w, C) when the
    module's `num_classes` is None, else the original classification logits
    (pooling + the original head), which is what weight-conversion parity tests use;
  * `features_stride` (total downsampling) and `num_features` (C) are known from
    `backbone_info(name, **kwargs)` without building the module.

Change the backbone of an experiment with `config.model.backbone` (and
`config.model.backbone_kwargs`); list the names with `available()`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class BackboneInfo:
  name: str
  num_features: int
  stride: int  # total spatial downsampling of the last feature map
  default_image_size: int


_REGISTRY: dict[str, tuple[Callable[..., nn.Module], Callable[..., BackboneInfo]]] = {}


def register(name: str, info: Callable[..., BackboneInfo]):
  """Decorator: registers `fn(**kwargs) -> nn.Module` under `name` with an info function."""
  def wrap(fn):
    if name in _REGISTRY:
      raise ValueError(f"Backbone {name!r} registered twice.")
    _REGISTRY[name] = (fn, info)
    return fn
  return wrap


def _ensure_loaded():
  # Importing the model modules fills the registry.
  from derm_jax.models import convnext, efficientnet_lite  # noqa: F401


def available() -> list[str]:
  _ensure_loaded()
  return sorted(_REGISTRY)


def _lookup(name: str):
  _ensure_loaded()
  if name not in _REGISTRY:
    raise KeyError(f"Unknown backbone {name!r}. Registered backbones: {', '.join(sorted(_REGISTRY))}")
  return _REGISTRY[name]


def get_backbone(name: str, /, **kwargs: Any) -> nn.Module:
  return _lookup(name)[0](**kwargs)


def backbone_info(name: str, /, **kwargs: Any) -> BackboneInfo:
  return _lookup(name)[1](**kwargs)


def check_image_size(name: str, backbone_kwargs: dict, image_size: int) -> None:
  """Raises ValueError naming the problem if backbone `name` cannot take `image_size` inputs."""
  info = backbone_info(name, **backbone_kwargs)
  if image_size < info.stride or image_size % info.stride:
    raise ValueError(
        f"config.image_size={image_size} cannot be used with backbone {name!r}: it must "
        f"be a positive multiple of the backbone's total stride {info.stride}.")
