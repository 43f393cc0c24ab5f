"""Converts PyTorch ConvNeXt state dicts (timm or torchvision naming) to flax variables.

The target is `derm_jax.models.convnext.ConvNeXt` (ConvNeXt-Tiny by default, with its
classification head), so converted ImageNet weights reproduce the PyTorch logits; drop the
'head' / 'head_norm' entries to use the network as a feature-map backbone
(`num_classes=None`).

Supported namings (auto-detected by `arch_from_state_dict`):
  * timm `convnext_tiny.*` (e.g. `convnext_tiny.fb_in1k`): stem.0/1,
    stages.N.downsample.0/1, stages.N.blocks.M.{conv_dw, norm, mlp.fc1, mlp.fc2, gamma},
    head.norm, head.fc;
  * torchvision `convnext_tiny`: features.0.0/1, features.{1,3,5,7}.M.block.{0,2,3,5}
    and .layer_scale (C,1,1), downsample features.{2,4,6}.0/1, classifier.0 / classifier.2.

Layouts: conv OIHW -> HWIO, depthwise (C,1,kh,kw) -> (kh,kw,1,C), Linear (out,in) -> (in,out),
LayerNorm weight -> scale. Every source key must be consumed and every flax leaf filled
with the right shape, otherwise a ValueError lists the offending keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from derm_jax.models.convnext import VARIANTS, ConvNeXt

TINY_DEPTHS, TINY_DIMS = VARIANTS["convnext_tiny"]

_TIMM_SIGNATURE = re.compile(r"^stages\.\d+\.blocks\.\d+\.conv_dw\.weight$")
_TORCHVISION_SIGNATURE = re.compile(r"^features\.\d+\.\d+\.layer_scale$")
_FACEBOOK_SIGNATURE = re.compile(r"^downsample_layers\.\d+\.\d+\.weight$")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# kinds of source tensors: how to turn them into the flax layout
_CONV, _LINEAR, _VECTOR = "conv", "linear", "vector"


def _strip_wrapper_prefix(sd: Mapping[str, Any]) -> dict[str, Any]:
  """Removes a 'module.' (DataParallel) or '_orig_mod.' (torch.compile) prefix on all keys."""
  out = dict(sd)
  for prefix in _WRAPPER_PREFIXES:
    if out and all(k.startswith(prefix) for k in out):
      out = {k[len(prefix):]: v for k, v in out.items()}
  return out


def arch_from_state_dict(sd: Mapping[str, Any]) -> str:
  """Names the state dict's naming scheme: 'timm' or 'torchvision'.

  Raises ValueError for a state dict that is neither (another model, or not a state dict).
  """
  if not isinstance(sd, Mapping) or not all(isinstance(k, str) for k in sd):
    raise ValueError(f"Expected a state dict (a mapping of str -> array), got {type(sd).__name__}.")
  keys = list(_strip_wrapper_prefix(sd))
  is_timm = any(_TIMM_SIGNATURE.match(k) for k in keys)
  is_tv = any(_TORCHVISION_SIGNATURE.match(k) for k in keys)
  if is_timm and not is_tv:
    return "timm"
  if is_tv and not is_timm:
    return "torchvision"
  if is_timm and is_tv:
    raise ValueError("State dict mixes timm and torchvision ConvNeXt key names; cannot convert.")
  sample = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
  hint = ""
  if any(_FACEBOOK_SIGNATURE.match(k) for k in keys):
    hint = (" It looks like an original facebookresearch/ConvNeXt checkpoint: load it into "
            "timm's convnext_tiny (timm remaps it) and save that model's state_dict().")
  raise ValueError(
      "Not a ConvNeXt state dict in timm naming (e.g. 'stages.0.blocks.0.conv_dw.weight') or "
      f"torchvision naming (e.g. 'features.1.0.layer_scale'). {len(keys)} keys: {sample}.{hint}")


def _key_map(arch: str, depths: Sequence[int], num_classes: int | None
             ) -> list[tuple[str, tuple[str, ...], str]]:
  """(source key, flax param path, kind) for every parameter of the model."""
  entries: list[tuple[str, tuple[str, ...], str]] = []

  def conv(src: str, dst: str | tuple[str, ...]) -> None:
    dst = (dst,) if isinstance(dst, str) else dst
    entries.append((f"{src}.weight", (*dst, "kernel"), _CONV))
    entries.append((f"{src}.bias", (*dst, "bias"), _VECTOR))

  def linear(src: str, dst: str | tuple[str, ...]) -> None:
    dst = (dst,) if isinstance(dst, str) else dst
    entries.append((f"{src}.weight", (*dst, "kernel"), _LINEAR))
    entries.append((f"{src}.bias", (*dst, "bias"), _VECTOR))

  def norm(src: str, dst: str | tuple[str, ...]) -> None:
    dst = (dst,) if isinstance(dst, str) else dst
    entries.append((f"{src}.weight", (*dst, "scale"), _VECTOR))
    entries.append((f"{src}.bias", (*dst, "bias"), _VECTOR))

  if arch == "timm":
    conv("stem.0", "stem_conv")
    norm("stem.1", "stem_norm")
    for i, depth in enumerate(depths):
      if i > 0:
        norm(f"stages.{i}.downsample.0", f"downsample{i}_norm")
        conv(f"stages.{i}.downsample.1", f"downsample{i}_conv")
      for j in range(depth):
        src, dst = f"stages.{i}.blocks.{j}", f"stage{i}_block{j}"
        conv(f"{src}.conv_dw", (dst, "dwconv"))
        norm(f"{src}.norm", (dst, "norm"))
        linear(f"{src}.mlp.fc1", (dst, "pwconv1"))
        linear(f"{src}.mlp.fc2", (dst, "pwconv2"))
        entries.append((f"{src}.gamma", (dst, "gamma"), _VECTOR))
    if num_classes is not None:
      norm("head.norm", "head_norm")
      linear("head.fc", "head")
  elif arch == "torchvision":
    conv("features.0.0", "stem_conv")
    norm("features.0.1", "stem_norm")
    for i, depth in enumerate(depths):
      if i > 0:
        norm(f"features.{2 * i}.0", f"downsample{i}_norm")
        conv(f"features.{2 * i}.1", f"downsample{i}_conv")
      for j in range(depth):
        src, dst = f"features.{2 * i + 1}.{j}", f"stage{i}_block{j}"
        conv(f"{src}.block.0", (dst, "dwconv"))
        norm(f"{src}.block.2", (dst, "norm"))
        linear(f"{src}.block.3", (dst, "pwconv1"))
        linear(f"{src}.block.5", (dst, "pwconv2"))
        entries.append((f"{src}.layer_scale", (dst, "gamma"), _VECTOR))
    if num_classes is not None:
      norm("classifier.0", "head_norm")
      linear("classifier.2", "head")
  else:
    raise ValueError(f"Unknown ConvNeXt naming {arch!r}; use 'timm' or 'torchvision'.")
  return entries


def _to_flax_layout(value: np.ndarray, kind: str) -> np.ndarray | None:
  """Source tensor -> flax layout, or None if its rank does not fit the kind."""
  if kind == _CONV:
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else None
  if kind == _LINEAR:
    return value.T if value.ndim == 2 else None
  # Vectors; torchvision's layer_scale is (C, 1, 1).
  if value.ndim >= 1 and all(d == 1 for d in value.shape[1:]):
    return value.reshape(value.shape[0])
  return None


def _expected_shapes(depths: Sequence[int], dims: Sequence[int], num_classes: int | None
                     ) -> dict[tuple[str, ...], tuple[int, ...]]:
  model = ConvNeXt(depths=tuple(depths), dims=tuple(dims), num_classes=num_classes)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32), train=False))
  flat = jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
  return {tuple(p.key for p in path): tuple(leaf.shape) for path, leaf in flat}


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def convert_state_dict(sd: Mapping[str, Any], *, depths: Sequence[int] = TINY_DEPTHS,
                       dims: Sequence[int] = TINY_DIMS, num_classes: int | None = 1000
                       ) -> dict[str, Any]:
  """PyTorch ConvNeXt state dict (timm or torchvision naming) -> {'params': ...} (numpy fp32).

  Defaults describe ConvNeXt-Tiny with the 1000-class ImageNet head; the result loads into
  `ConvNeXt(depths, dims, num_classes=num_classes)`. With `num_classes=None` the head
  entries of the source ('head.*' / 'classifier.*') are ignored and the result loads into
  the feature-map backbone. Raises ValueError naming every missing, unexpected or
  wrongly shaped key.
  """
  arch = arch_from_state_dict(sd)
  src = _strip_wrapper_prefix(sd)
  if num_classes is None:
    head = ("head.",) if arch == "timm" else ("classifier.",)
    src = {k: v for k, v in src.items() if not k.startswith(head)}
  expected = _expected_shapes(depths, dims, num_classes)

  params: dict[str, Any] = {}
  filled: set[tuple[str, ...]] = set()
  missing: list[str] = []
  bad_shape: list[str] = []
  for key, path, kind in _key_map(arch, depths, num_classes):
    if key not in src:
      missing.append(key)
      continue
    value = np.asarray(src[key])
    if not np.issubdtype(value.dtype, np.floating) and value.dtype.kind != "V":
      bad_shape.append(f"{key}: dtype {value.dtype} is not floating point")
      continue
    want = expected.get(path)
    converted = _to_flax_layout(value, kind)
    if want is None or converted is None or tuple(converted.shape) != want:
      bad_shape.append(f"{key}: shape {tuple(value.shape)} does not fit "
                       f"{'/'.join(path)} {want}")
      continue
    _set(params, path, np.ascontiguousarray(converted, dtype=np.float32))
    filled.add(path)

  consumed = {key for key, _, _ in _key_map(arch, depths, num_classes)}
  unexpected = sorted(k for k in src if k not in consumed)
  unfilled = sorted("/".join(p) for p in expected if p not in filled)
  problems = []
  if missing:
    problems.append(f"missing source keys ({len(missing)}): {', '.join(missing)}")
  if unexpected:
    problems.append(f"unexpected source keys ({len(unexpected)}): {', '.join(unexpected)}")
  if bad_shape:
    problems.append(f"wrong shapes ({len(bad_shape)}): {'; '.join(bad_shape)}")
  if unfilled and not problems:
    problems.append(f"flax params left unfilled ({len(unfilled)}): {', '.join(unfilled)}")
  if problems:
    raise ValueError(
        f"Cannot convert this {arch} state dict to ConvNeXt(depths={tuple(depths)}, "
        f"dims={tuple(dims)}, num_classes={num_classes}): " + " | ".join(problems))
  return {"params": params}
