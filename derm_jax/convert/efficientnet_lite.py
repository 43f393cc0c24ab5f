"""Converts `efficientnet-lite-pytorch` state dicts to flax variables of `EfficientNetLite`.

Torch names map one-to-one onto the flax tree of `derm_jax.models.efficientnet_lite`:
`_conv_stem.weight` -> params/conv_stem/kernel, `_blocks.3._bn1.running_var` ->
batch_stats/blocks_3/bn1/var, `_fc.weight` -> params/fc/kernel, ... Layouts: conv OIHW ->
HWIO, depthwise (C, 1, k, k) -> (k, k, 1, C) (the same transpose), Linear (out, in) -> (in,
out); BatchNorm weight/bias/running_mean/running_var -> scale/bias/mean/var;
`num_batches_tracked` is dropped. Every torch key must be consumed and every flax leaf
filled with the right shape, else `ConversionError` lists what does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from derm_jax.errors import DermJaxError
from derm_jax.models import efficientnet_lite

NUM_CLASSES = 1000
ARCHS = tuple(efficientnet_lite.VARIANTS)

_LEAF_TO_TORCH = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


class ConversionError(DermJaxError, ValueError):
  """The state dict does not fit the flax model (missing / unexpected keys, wrong shapes)."""


def normalize_arch(arch: str) -> str:
  """'efficientnet-lite0' / 'efficientnet_lite0' -> 'efficientnet_lite0'."""
  name = arch.strip().lower().replace("-", "_")
  if name not in efficientnet_lite.VARIANTS:
    raise ConversionError(f"Unknown EfficientNet-Lite arch {arch!r}; known: {', '.join(ARCHS)}")
  return name


def _torch_key(collection: str, path: tuple[str, ...]) -> str:
  modules, leaf = path[:-1], path[-1]
  parts = []
  for m in modules:
    if m.startswith("blocks_"):
      parts += ["_blocks", m[len("blocks_"):]]
    else:
      parts.append("_" + m)
  return ".".join(parts + [_LEAF_TO_TORCH[(collection, leaf)]])


def _to_flax_layout(w: np.ndarray, target_ndim: int) -> np.ndarray:
  if w.ndim == 4:  # conv OIHW / depthwise (C,1,kh,kw) -> HWIO / (kh,kw,1,C)
    return np.transpose(w, (2, 3, 1, 0))
  if w.ndim == 2 and target_ndim == 2:  # Linear (out, in) -> (in, out)
    return w.T
  return w


def expected_shapes(arch: str, num_classes: int = NUM_CLASSES) -> dict[str, Any]:
  """The flax variable tree of `arch` as jax.ShapeDtypeStruct leaves (nothing computed)."""
  model = efficientnet_lite.create(normalize_arch(arch), num_classes=num_classes)
  x = jnp.zeros((1, 32, 32, 3), jnp.float32)
  return dict(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False)))


def _flatten(tree: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(dict(v), prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _summarise(items: list[str], limit: int = 10) -> str:
  shown = ", ".join(items[:limit])
  return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def convert_state_dict(sd: dict[str, np.ndarray], arch: str) -> dict[str, dict]:
  """Torch state dict of `efficientnet_lite_pytorch.EfficientNet` -> flax variables.

  Returns {'params': ..., 'batch_stats': ...} (nested dicts of float32 numpy arrays) for
  `efficientnet_lite.create(arch, num_classes=1000)`. Raises ConversionError listing the
  missing, unexpected and wrongly shaped keys if `sd` does not match `arch`.
  """
  arch = normalize_arch(arch)
  num_classes = NUM_CLASSES
  if "_fc.weight" in sd and np.ndim(sd["_fc.weight"]) == 2:
    num_classes = int(np.shape(sd["_fc.weight"])[0])
  targets = _flatten(expected_shapes(arch, num_classes))
  remaining = {k for k in sd if not k.endswith("num_batches_tracked")}
  variables: dict[str, dict] = {}
  missing, mismatched = [], []
  for path, target in targets.items():
    key = _torch_key(path[0], path[1:])
    if key not in sd:
      missing.append(f"{key} (for {'/'.join(path)} {tuple(target.shape)})")
      continue
    remaining.discard(key)
    value = _to_flax_layout(np.asarray(sd[key]), len(target.shape))
    if tuple(value.shape) != tuple(target.shape):
      mismatched.append(f"{key}: torch {tuple(np.shape(sd[key]))} -> {tuple(value.shape)}, "
                        f"{'/'.join(path)} needs {tuple(target.shape)}")
      continue
    _set(variables, path, np.ascontiguousarray(value, dtype=np.float32))
  if missing or remaining or mismatched:
    problems = []
    n_src = len({k.split(".")[1] for k in sd if k.startswith("_blocks.")})
    n_dst = len(efficientnet_lite.block_configs(efficientnet_lite.VARIANTS[arch].width,
                                                efficientnet_lite.VARIANTS[arch].depth))
    if n_src != n_dst:
      problems.append(f"the state dict has {n_src} MBConv blocks, {arch} has {n_dst} "
                      "(wrong arch?)")
    if missing:
      problems.append(f"missing keys: {_summarise(missing)}")
    if remaining:
      problems.append(f"unexpected keys: {_summarise(sorted(remaining))}")
    if mismatched:
      problems.append(f"shape mismatches: {_summarise(mismatched)}")
    raise ConversionError(
        f"State dict does not match {arch} ({len(sd)} tensors): " + "; ".join(problems))
  return variables
