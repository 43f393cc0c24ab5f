"""Figures for training runs and the VAE-vs-ImageNet comparison (matplotlib 'Agg', PIL).

  * `save_confusion_matrix`: row-normalised (or raw) confusion matrix, counts annotated;
  * `save_curves`: metric histories of several arms on shared axes, mean line and a
    +-1 std band (sample std, ddof=1) across seeds when an arm has several seeds;
  * `save_image_grid`: rows of images (e.g. inputs above VAE reconstructions, prior
    samples) tiled into one PNG with PIL.
No display is ever opened; every function creates the parent folder of `path`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

__all__ = ["aggregate_histories", "save_confusion_matrix", "save_curves", "save_image_grid"]

_LINESTYLES = ["-", "--", ":", "-."]


def _ensure_parent(path: str | os.PathLike) -> str:
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  return path


def save_confusion_matrix(cm: Any, class_names: Sequence[str], path: str | os.PathLike, title: str,
                          normalize: bool = True) -> str:
  """Saves a confusion matrix (rows = true, cols = predicted) as a PNG.

  With `normalize`, colours show each row divided by its total (recall on the diagonal;
  an empty row stays 0) and every cell is annotated "count\\n(fraction)"; otherwise
  colours and annotations are raw counts. Returns `path`.
  """
  cm = np.asarray(cm, dtype=np.float64)
  k = cm.shape[0]
  if cm.shape != (k, k) or len(class_names) != k:
    raise ValueError(f"cm must be (K, K) with K = len(class_names) = {len(class_names)}, got {cm.shape}")
  path = _ensure_parent(path)
  if normalize:
    rows = cm.sum(axis=1, keepdims=True)
    shown = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    vmax = 1.0
  else:
    shown = cm
    vmax = max(float(cm.max()), 1.0)
  size = max(4.0, 0.8 * k + 2.0)
  fig, ax = plt.subplots(figsize=(size + 1.0, size))
  im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class" if normalize else "count")
  ax.set_xticks(range(k))
  ax.set_yticks(range(k))
  ax.set_xticklabels(class_names, rotation=45, ha="right")
  ax.set_yticklabels(class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title)
  fontsize = 8 if k <= 10 else 6
  for i in range(k):
    for j in range(k):
      text = f"{int(round(cm[i, j]))}"
      if normalize:
        text += f"\n({shown[i, j]:.2f})"
      colour = "white" if shown[i, j] > 0.6 * vmax else "black"
      ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=fontsize)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _as_float(v: Any) -> float:
  if v is None:
    return math.nan
  try:
    return float(v)
  except (TypeError, ValueError):
    return math.nan


def aggregate_histories(histories: Sequence[Sequence[dict[str, Any]]], key: str
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Aligns per-seed histories on their 'epoch' (1-based list position if absent).

  Returns (epochs, mean, std, n): for each epoch any seed recorded a finite `key` at,
  the mean, the sample std (ddof=1; NaN with a single value) and the number of seeds.
  Seeds with fewer epochs simply stop contributing.
  """
  by_epoch: dict[int, list[float]] = {}
  for hist in histories:
    for i, row in enumerate(hist):
      v = _as_float(row.get(key))
      if not math.isfinite(v):
        continue
      epoch = int(row.get("epoch", i + 1))
      by_epoch.setdefault(epoch, []).append(v)
  epochs = np.array(sorted(by_epoch), dtype=np.int64)
  mean = np.array([np.mean(by_epoch[e]) for e in epochs], dtype=np.float64)
  std = np.array([np.std(by_epoch[e], ddof=1) if len(by_epoch[e]) > 1 else math.nan for e in epochs],
                 dtype=np.float64)
  n = np.array([len(by_epoch[e]) for e in epochs], dtype=np.int64)
  return epochs, mean, std, n


def _draw_curves(ax: Any, runs: dict[str, list[list[dict[str, Any]]]], keys: Sequence[str],
                 hline: float | None) -> None:
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for a, (arm, histories) in enumerate(runs.items()):
    colour = colours[a % len(colours)]
    for j, key in enumerate(keys):
      epochs, mean, std, n = aggregate_histories(histories, key)
      if epochs.size == 0:
        continue
      label = f"{arm} {key}"
      if len(histories) > 1:
        label += f" (mean ± std, {len(histories)} seeds)"
      style = _LINESTYLES[j % len(_LINESTYLES)]
      ax.plot(epochs, mean, linestyle=style, color=colour, marker="o" if epochs.size < 15 else None,
              markersize=3, label=label)
      band = np.isfinite(std)
      if band.any():
        ax.fill_between(epochs[band], (mean - std)[band], (mean + std)[band], color=colour, alpha=0.2,
                        linewidth=0)
  if hline is not None:
    ax.axhline(hline, color="grey", linewidth=0.8, linestyle="-")
  ax.set_xlabel("epoch")
  ax.grid(True, alpha=0.3)
  handles, _ = ax.get_legend_handles_labels()
  if handles:
    ax.legend(fontsize=8)


def save_curves(runs: dict[str, list[list[dict[str, Any]]]], keys: list[str], path: str | os.PathLike,
                title: str, separate_panels: bool = False, hline: float | None = None,
                ylabel: str | None = None) -> str:
  """Plots metric histories of several arms on shared axes.

  runs: arm name -> list of per-seed histories, each a list of per-epoch dicts (with an
  'epoch' key, else the list position + 1 is the epoch). Every (arm, key) pair is one
  line: colour = arm, line style = key; with several seeds the line is the mean over
  seeds and the band is +-1 sample std. `separate_panels` draws one panel per key
  (sharing the epoch axis) instead of all keys on one axes; `hline` draws a reference
  horizontal line (e.g. 0 for gaps). Returns `path`.
  """
  path = _ensure_parent(path)
  if separate_panels and len(keys) > 1:
    fig, axes = plt.subplots(1, len(keys), figsize=(6.0 * len(keys), 4.5), sharex=True)
    for ax, key in zip(axes, keys):
      _draw_curves(ax, runs, [key], hline)
      ax.set_title(key)
      ax.set_ylabel(ylabel or key)
    fig.suptitle(title)
  else:
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    _draw_curves(ax, runs, keys, hline)
    ax.set_title(title)
    ax.set_ylabel(ylabel or (keys[0].split("/")[-1] if keys else ""))
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _to_uint8_images(x: Any) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim == 3:  # (N, H, W) grey
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"each row must be (N, H, W, 3) (or (N, H, W[, 1]) grey), got shape {x.shape}")
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  if x.dtype == np.uint8:
    return x
  x = np.nan_to_num(x.astype(np.float64), nan=0.0)
  return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_image_grid(rows: list[Any], path: str | os.PathLike, pad: int = 2,
                    pad_value: int = 255) -> str:
  """Tiles rows of images into one PNG.

  rows: list of arrays, each (N_r, H, W, 3) float in [0, 1] (clipped) or uint8; entry r
  is row r of the grid. All images share H and W; rows may hold different counts (short
  rows are left blank on the right). The image is
  (R*H + (R+1)*pad) pixels high and (C*W + (C+1)*pad) wide, C = max N_r, with `pad`
  pixels of `pad_value` (white) between and around the tiles. Returns `path`.
  """
  if not rows:
    raise ValueError("save_image_grid needs at least one row")
  imgs = [_to_uint8_images(r) for r in rows]
  h, w = imgs[0].shape[1:3]
  for r in imgs:
    if r.shape[1:3] != (h, w):
      raise ValueError(f"all images must share H, W = {(h, w)}, got {r.shape[1:3]}")
  n_rows = len(imgs)
  n_cols = max(max(r.shape[0] for r in imgs), 1)
  canvas = np.full((n_rows * h + (n_rows + 1) * pad, n_cols * w + (n_cols + 1) * pad, 3), pad_value,
                   dtype=np.uint8)
  for i, r in enumerate(imgs):
    y = pad + i * (h + pad)
    for j in range(r.shape[0]):
      x = pad + j * (w + pad)
      canvas[y:y + h, x:x + w] = r[j]
  path = _ensure_parent(path)
  Image.fromarray(canvas).save(path, format="PNG")
  return path
