"""Figures for training runs and the VAE-vs-ImageNet comparison (matplotlib 'Agg', PIL).

  * `save_confusion_matrix`: row-normalised (or raw) confusion matrix, counts annotated,
    the full class names in a caption;
  * `save_curves`: metric histories of several arms on shared axes, mean line and a
    +-1 std band (sample std, ddof=1) across seeds when an arm has several seeds; raw
    metric keys ('gap/accuracy') are shown in plain language (`METRIC_LABELS`);
  * `save_image_grid`: rows of images (e.g. inputs above VAE reconstructions, prior
    samples) tiled into one PNG with PIL, optionally with row labels and a title;
  * `save_latent_map`: 2-D projection of VAE latents (e.g. `stats.pca_2d`) coloured by class;
  * `save_reliability_diagram`: calibration (accuracy vs confidence per bin);
  * `save_interval_groups`: estimates with interval bars, grouped (e.g. per evaluation set);
  * `save_label_efficiency`: metrics against the fraction of training labels (log x axis),
    a line per arm and protocol, with interval bars.
Inside `with banner(text):` every figure saved carries `text` above it in red (the report
marks each figure of a smoke run this way).
Figures are meant to be read without the code: plain-language titles and axis labels,
class codes explained (`CLASS_DESCRIPTIONS`). No display is ever opened; every function
creates the parent folder of `path`, which may be a `gs://` URL (`derm_jax.fileio`).
"""

from __future__ import annotations

import contextlib
import math
import os
import textwrap
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker
from PIL import Image

from derm_jax import fileio
from derm_jax.data import registry

__all__ = [
  "CLASS_DESCRIPTIONS",
  "METRIC_LABELS",
  "aggregate_histories",
  "class_caption",
  "describe_class",
  "save_confusion_matrix",
  "save_curves",
  "save_image_grid",
  "save_interval_groups",
  "save_label_efficiency",
  "save_latent_map",
  "save_reliability_diagram",
]

_LINESTYLES = ["-", "--", ":", "-."]

# Plain-language names of the diagnosis codes (one table, in the dataset registry).
CLASS_DESCRIPTIONS = registry.CLASS_DESCRIPTIONS

# Plain-language names of the per-epoch history keys.
METRIC_LABELS = {
  "train/loss": "training loss",
  "val/loss": "validation loss",
  "train/accuracy": "training accuracy",
  "val/accuracy": "validation accuracy",
  "train/balanced_accuracy": "training balanced accuracy",
  "val/balanced_accuracy": "validation balanced accuracy",
  "train/macro_f1": "training macro-F1",
  "val/macro_f1": "validation macro-F1",
  "train/macro_auc": "training macro AUC",
  "val/macro_auc": "validation macro AUC",
  "gap/accuracy": "training − validation accuracy",
  "gap/loss": "validation − training loss",
}


def describe_class(code: str) -> str:
  """'mel' -> 'melanoma'; an unknown code is returned unchanged."""
  return CLASS_DESCRIPTIONS.get(str(code).lower(), str(code))


def class_caption(class_names: Sequence[str]) -> str:
  """'akiec = actinic keratoses / intraepithelial carcinoma; bcc = ...' for the known codes."""
  return "; ".join(f"{c} = {describe_class(c)}" for c in class_names if describe_class(c) != c)


def _metric_label(key: str) -> str:
  return METRIC_LABELS.get(key, key.replace("/", " ").replace("_", " "))


def _ensure_parent(path: str | os.PathLike) -> str:
  path = os.fspath(path)
  parent = fileio.dirname(path)
  if parent:
    fileio.makedirs(parent)
  return path


_BANNER: list[str] = []  # the text of the innermost `banner` in effect


@contextlib.contextmanager
def banner(text: str | None):
  """Within the block, every figure this module saves carries `text` (e.g. '⚠ SMOKE RUN: no
  conclusions') above it in red; None or '' adds nothing."""
  _BANNER.append(text or "")
  try:
    yield
  finally:
    _BANNER.pop()


def _add_banner(fig: Any, kwargs: dict[str, Any]) -> None:
  text = _BANNER[-1] if _BANNER else ""
  if not text:
    return
  wrapped = "\n".join(textwrap.wrap(text, width=max(40, int(fig.get_figwidth() * 14))))
  fig.text(0.5, 1.0, wrapped, ha="center", va="bottom", color="#b00000", fontsize=10,
           fontweight="bold")
  kwargs["bbox_inches"] = "tight"  # keeps the banner above the figure in the file


def _savefig(fig: Any, path: str, **kwargs: Any) -> None:
  """fig.savefig to a local path, or to a URL (in the format its extension names, PNG if
  none); with the text of `banner` above the figure when one is in effect."""
  _add_banner(fig, kwargs)
  if not fileio.is_remote(path):
    fig.savefig(path, **kwargs)
    return
  fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
  fileio.save_with(path, lambda buf: fig.savefig(buf, format=fmt, **kwargs))


def save_confusion_matrix(
  cm: Any,
  class_names: Sequence[str],
  path: str | os.PathLike,
  title: str,
  normalize: bool = True,
  caption: str | None = None,
) -> str:
  """Saves a confusion matrix (rows = true, cols = predicted) as a PNG.

  With `normalize`, colours show each row divided by its total (recall on the diagonal;
  an empty row stays 0) and every cell is annotated "count\\n(fraction)"; otherwise
  colours and annotations are raw counts. Annotations are at least 10 pt. `caption`
  (default: the full names of the known class codes, `class_caption`) is printed under
  the axes. Returns `path`.
  """
  cm = np.asarray(cm, dtype=np.float64)
  k = cm.shape[0]
  if cm.shape != (k, k) or len(class_names) != k:
    raise ValueError(
      f"cm must be (K, K) with K = len(class_names) = {len(class_names)}, got {cm.shape}"
    )
  path = _ensure_parent(path)
  if normalize:
    rows = cm.sum(axis=1, keepdims=True)
    shown = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    vmax = 1.0
  else:
    shown = cm
    vmax = max(float(cm.max()), 1.0)
  caption = class_caption(class_names) if caption is None else caption
  size = max(5.0, 1.0 * k + 2.5)
  fig, ax = plt.subplots(figsize=(size + 1.5, size))
  im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax)
  fig.colorbar(
    im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class" if normalize else "count"
  )
  ax.set_xticks(range(k))
  ax.set_yticks(range(k))
  ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=11)
  ax.set_yticklabels(class_names, fontsize=11)
  ax.set_xlabel("predicted class", fontsize=11)
  ax.set_ylabel("true class", fontsize=11)
  ax.set_title(title, fontsize=12)
  fontsize = 11 if k <= 8 else 10
  for i in range(k):
    for j in range(k):
      text = f"{round(cm[i, j]):.0f}"
      if normalize:
        text += f"\n({shown[i, j]:.2f})"
      colour = "white" if shown[i, j] > 0.6 * vmax else "black"
      ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=fontsize)
  fig.tight_layout()
  if caption:
    fig.text(0.02, 0.0, _wrap(caption, int(12 * (size + 1.5))), fontsize=10, va="top", ha="left")
  _savefig(fig, path, dpi=100, bbox_inches="tight", pad_inches=0.2)
  plt.close(fig)
  return path


def _wrap(text: str, width: int) -> str:
  return "\n".join(textwrap.wrap(text, width=max(width, 20)))


def _as_float(v: Any) -> float:
  if v is None:
    return math.nan
  try:
    return float(v)
  except (TypeError, ValueError):
    return math.nan


def aggregate_histories(
  histories: Sequence[Sequence[dict[str, Any]]], key: str
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
  std = np.array(
    [np.std(by_epoch[e], ddof=1) if len(by_epoch[e]) > 1 else math.nan for e in epochs],
    dtype=np.float64,
  )
  n = np.array([len(by_epoch[e]) for e in epochs], dtype=np.int64)
  return epochs, mean, std, n


def _draw_curves(
  ax: Any,
  runs: dict[str, list[list[dict[str, Any]]]],
  keys: Sequence[str],
  hline: float | None,
  labels: dict[str, str],
) -> None:
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for a, (arm, histories) in enumerate(runs.items()):
    colour = colours[a % len(colours)]
    for j, key in enumerate(keys):
      epochs, mean, std, _ = aggregate_histories(histories, key)
      if epochs.size == 0:
        continue
      label = f"{arm}: {labels.get(key) or _metric_label(key)}"
      if len(histories) > 1:
        label += f" (mean ± std, {len(histories)} seeds)"
      style = _LINESTYLES[j % len(_LINESTYLES)]
      ax.plot(
        epochs,
        mean,
        linestyle=style,
        color=colour,
        marker="o" if epochs.size < 15 else None,
        markersize=3,
        label=label,
      )
      band = np.isfinite(std)
      if band.any():
        ax.fill_between(
          epochs[band], (mean - std)[band], (mean + std)[band], color=colour, alpha=0.2, linewidth=0
        )
  if hline is not None:
    ax.axhline(hline, color="grey", linewidth=0.8, linestyle="-")
  ax.set_xlabel("epoch")
  ax.xaxis.get_major_locator().set_params(integer=True)
  ax.grid(True, alpha=0.3)
  handles, _ = ax.get_legend_handles_labels()
  if handles:
    ax.legend(fontsize=8)


def save_curves(
  runs: dict[str, list[list[dict[str, Any]]]],
  keys: list[str],
  path: str | os.PathLike,
  title: str,
  separate_panels: bool = False,
  hline: float | None = None,
  ylabel: str | None = None,
  key_labels: dict[str, str] | None = None,
  panel_titles: dict[str, str] | None = None,
) -> str:
  """Plots metric histories of several arms on shared axes.

  runs: arm name -> list of per-seed histories, each a list of per-epoch dicts (with an
  'epoch' key, else the list position + 1 is the epoch). Every (arm, key) pair is one
  line: colour = arm, line style = key; with several seeds the line is the mean over
  seeds and the band is +-1 sample std. `separate_panels` draws one panel per key
  (sharing the epoch axis) instead of all keys on one axes; `hline` draws a reference
  horizontal line (e.g. 0 for gaps). Keys are named in plain language in legends and panel
  titles: `key_labels` (key -> text) first, then `METRIC_LABELS`; `panel_titles` (key ->
  text) overrides a panel's title. Returns `path`.
  """
  path = _ensure_parent(path)
  labels = dict(key_labels or {})
  if separate_panels and len(keys) > 1:
    fig, axes = plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 4.8), sharex=True)
    for ax, key in zip(axes, keys, strict=True):
      _draw_curves(ax, runs, [key], hline, labels)
      name = labels.get(key) or _metric_label(key)
      ax.set_title((panel_titles or {}).get(key) or name[:1].upper() + name[1:])
      ax.set_ylabel(ylabel or name)
    fig.suptitle(title)
  else:
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    _draw_curves(ax, runs, keys, hline, labels)
    ax.set_title(title)
    ax.set_ylabel(ylabel or (keys[0].split("/")[-1].replace("_", " ") if keys else ""))
  fig.tight_layout()
  _savefig(fig, path, dpi=100)
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


def save_image_grid(
  rows: list[Any],
  path: str | os.PathLike,
  pad: int = 2,
  pad_value: int = 255,
  row_labels: Sequence[str] | None = None,
  title: str | None = None,
  scale: int = 1,
) -> str:
  """Tiles rows of images into one PNG.

  rows: list of arrays, each (N_r, H, W, 3) float in [0, 1] (clipped) or uint8; entry r
  is row r of the grid. All images share H and W; rows may hold different counts (short
  rows are left blank on the right). The image is
  (R*H + (R+1)*pad) pixels high and (C*W + (C+1)*pad) wide, C = max N_r, with `pad`
  pixels of `pad_value` (white) between and around the tiles. `scale` > 1 enlarges every
  tile by pixel repetition first (H, W become scale*H, scale*W). `row_labels` (one text
  per row, e.g. "input", "reconstruction") adds a white margin on the left with each
  row's label; `title` (e.g. "step 312, val ELBO 13,693") adds a band on top. Without
  labels and title the size is exactly as above. Returns `path`.
  """
  if not rows:
    raise ValueError("save_image_grid needs at least one row")
  imgs = [_to_uint8_images(r) for r in rows]
  if scale < 1:
    raise ValueError(f"scale must be >= 1, got {scale}")
  if scale > 1:
    imgs = [np.repeat(np.repeat(r, scale, axis=1), scale, axis=2) for r in imgs]
  if row_labels is not None and len(row_labels) != len(imgs):
    raise ValueError(f"row_labels needs one label per row ({len(imgs)}), got {len(row_labels)}")
  h, w = imgs[0].shape[1:3]
  for r in imgs:
    if r.shape[1:3] != (h, w):
      raise ValueError(f"all images must share H, W = {(h, w)}, got {r.shape[1:3]}")
  n_rows = len(imgs)
  n_cols = max(max(r.shape[0] for r in imgs), 1)
  canvas = np.full(
    (n_rows * h + (n_rows + 1) * pad, n_cols * w + (n_cols + 1) * pad, 3), pad_value, dtype=np.uint8
  )
  for i, r in enumerate(imgs):
    y = pad + i * (h + pad)
    for j in range(r.shape[0]):
      x = pad + j * (w + pad)
      canvas[y : y + h, x : x + w] = r[j]
  image = Image.fromarray(canvas)
  if row_labels is not None or title:
    image = _annotate_grid(image, [str(t) for t in row_labels or []], title, h, pad, pad_value)
  path = _ensure_parent(path)
  fileio.save_with(path, lambda target: image.save(target, format="PNG"))
  return path


def _font(size: int) -> Any:
  from PIL import ImageFont

  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1: fixed-size bitmap font
    return ImageFont.load_default()


def _annotate_grid(
  grid: Image.Image, row_labels: list[str], title: str | None, h: int, pad: int, pad_value: int
) -> Image.Image:
  """Adds a left margin with one label per row and a title band on top."""
  from PIL import ImageDraw

  font = _font(14)
  probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

  def size(text: str) -> tuple[int, int]:
    box = probe.textbbox((0, 0), text, font=font)
    return box[2] - box[0], box[3] - box[1]

  left = (max(size(t)[0] for t in row_labels) + 12) if row_labels else 0
  top = (size(title)[1] + 14) if title else 0
  width = max(grid.width + left, (size(title)[0] + 12) if title else 0)
  out = Image.new("RGB", (width, grid.height + top), (pad_value,) * 3)
  out.paste(grid, (left, top))
  draw = ImageDraw.Draw(out)
  if title:
    draw.text((6, 6), title, fill=(0, 0, 0), font=font)
  for i, text in enumerate(row_labels):
    tw, th = size(text)
    y = top + pad + i * (h + pad) + max(0, (h - th) // 2)
    draw.text((left - 6 - tw, y), text, fill=(0, 0, 0), font=font)
  return out


def save_latent_map(
  latents_2d: Any,
  labels: Any,
  class_names: Sequence[str],
  path: str | os.PathLike,
  title: str,
  axis_labels: tuple[str, str] = ("principal component 1", "principal component 2"),
) -> str:
  """Scatter of 2-D latent coordinates (e.g. `stats.pca_2d` of VAE means), one colour per class.

  latents_2d: (N, 2); labels: (N,) integer classes indexing `class_names`. The legend gives
  each class code, its full name and its number of points. Returns `path`.
  """
  z = np.asarray(latents_2d, dtype=np.float64)
  y = np.asarray(labels).astype(np.int64).reshape(-1)
  if z.ndim != 2 or z.shape[1] != 2 or z.shape[0] != y.shape[0]:
    raise ValueError(
      f"latents_2d must be (N, 2) with N = len(labels) = {y.shape[0]}, got {z.shape}"
    )
  if y.size and (y.min() < 0 or y.max() >= len(class_names)):
    raise ValueError(f"labels must index class_names (K = {len(class_names)})")
  path = _ensure_parent(path)
  fig, ax = plt.subplots(figsize=(11.0, 6.0))
  cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
  for k, name in enumerate(class_names):
    sel = y == k
    if not sel.any():
      continue
    desc = describe_class(name)
    label = (
      f"{name} ({desc}), n={int(sel.sum())}" if desc != name else f"{name}, n={int(sel.sum())}"
    )
    ax.scatter(
      z[sel, 0], z[sel, 1], s=10, alpha=0.7, color=cmap(k % cmap.N), label=label, linewidths=0
    )
  ax.set_xlabel(axis_labels[0])
  ax.set_ylabel(axis_labels[1])
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(
      fontsize=9, loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=2, title="class"
    )
  fig.tight_layout()
  _savefig(fig, path, dpi=100)
  plt.close(fig)
  return path


def save_reliability_diagram(
  confidence: Any,
  accuracy: Any,
  count: Any,
  path: str | os.PathLike,
  title: str,
  edges: Any | None = None,
  ece: float | None = None,
) -> str:
  """Reliability diagram: per confidence bin, the accuracy (bars) against the mean confidence
  (a perfectly calibrated model lies on the diagonal), with the number of images per bin
  below. Arrays are per bin (NaN for empty bins); `edges` defaults to equal-width bins
  on [0, 1]. Returns `path`.
  """
  conf = np.asarray(confidence, dtype=np.float64)
  acc = np.asarray(accuracy, dtype=np.float64)
  cnt = np.asarray(count, dtype=np.float64)
  m = conf.shape[0]
  edges = np.linspace(0.0, 1.0, m + 1) if edges is None else np.asarray(edges, dtype=np.float64)
  centres, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
  path = _ensure_parent(path)
  fig, (ax, axc) = plt.subplots(
    2, 1, figsize=(6.0, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
  )
  used = cnt > 0
  ax.bar(
    centres[used],
    acc[used],
    width=widths[used],
    edgecolor="black",
    color="tab:blue",
    alpha=0.8,
    label="accuracy of the images in the bin",
  )
  ax.plot(
    conf[used],
    acc[used],
    "o",
    color="tab:orange",
    markersize=4,
    label="(mean confidence, accuracy)",
  )
  ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_ylabel("accuracy")
  ax.set_title(
    title + (f"\nexpected calibration error (ECE) = {ece:.3f}" if ece is not None else "")
  )
  ax.legend(fontsize=9, loc="upper left")
  ax.grid(True, alpha=0.3)
  axc.bar(centres, cnt, width=widths, edgecolor="black", color="grey")
  axc.set_xlabel("confidence (predicted probability of the predicted class)")
  axc.set_ylabel("images")
  fig.tight_layout()
  _savefig(fig, path, dpi=100)
  plt.close(fig)
  return path


def save_interval_groups(
  groups: Sequence[str],
  series: dict[str, Sequence[tuple[Any, Any, Any]]],
  path: str | os.PathLike,
  title: str,
  ylabel: str,
  baseline: Sequence[Any] | None = None,
  baseline_label: str = "baseline",
  xlabel: str = "",
) -> str:
  """Estimates with interval bars, side by side per group.

  groups: G group names (x axis, e.g. evaluation sets); series: name -> G tuples
  (estimate, lo, hi), any of them None (not drawn / no bar); baseline: G values drawn as
  a short black line per group (None skips a group). Returns `path`.
  """
  path = _ensure_parent(path)
  g = len(groups)
  fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * g + 2.5), 4.8))
  n = max(len(series), 1)
  width = 0.7 / n
  for i, (name, vals) in enumerate(series.items()):
    if len(vals) != g:
      raise ValueError(f"series {name!r} needs {g} values, got {len(vals)}")
    xs = np.arange(g) - 0.35 + width * (i + 0.5)
    labelled = False
    for x, (est, lo, hi) in zip(xs, vals, strict=True):
      if est is None:
        continue
      yerr = None
      if lo is not None and hi is not None:
        yerr = [[max(est - lo, 0.0)], [max(hi - est, 0.0)]]
      ax.errorbar(
        [x],
        [est],
        yerr=yerr,
        fmt="o",
        capsize=5,
        color=f"C{i}",
        markersize=7,
        label=None if labelled else name,
      )
      labelled = True
  if baseline is not None:
    first = True
    for j, b in enumerate(baseline):
      if b is None:
        continue
      ax.hlines(
        b, j - 0.4, j + 0.4, colors="black", linestyles=":", label=baseline_label if first else None
      )
      first = False
  ax.set_xticks(range(g))
  ax.set_xticklabels(groups)
  ax.set_xlim(-0.6, g - 0.4)
  ax.set_ylabel(ylabel)
  if xlabel:
    ax.set_xlabel(xlabel)
  ax.set_title(title)
  ax.grid(True, axis="y", alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=9)
  fig.tight_layout()
  _savefig(fig, path, dpi=100)
  plt.close(fig)
  return path


def _percent(fraction: float) -> str:
  return f"{format(100 * fraction, '.3g')}%"


def save_label_efficiency(
  panels: dict[str, dict[tuple[str, str], Sequence[tuple[float, Any, Any, Any]]]],
  path: str | os.PathLike,
  title: str,
  xlabel: str = "fraction of the training labels (log scale)",
) -> str:
  """A metric against the fraction of training labels the model was trained on, log x axis.

  panels: panel title (also its y label, e.g. 'test balanced accuracy') -> (arm, protocol)
  -> points (fraction, estimate, lo, hi), any of estimate / lo / hi None (no point / no
  bar). One line per (arm, protocol): colour = arm, line style = protocol (solid, dashed,
  dotted, dash-dot in order of first appearance), with interval bars; lines are nudged
  sideways a little so their bars do not hide each other. The x ticks are the fractions
  present, written as percentages. Returns `path`.
  """
  if not panels:
    raise ValueError("save_label_efficiency needs at least one panel")
  path = _ensure_parent(path)
  keys = list(dict.fromkeys(k for lines in panels.values() for k in lines))
  arms = list(dict.fromkeys(a for a, _ in keys))
  protocols = list(dict.fromkeys(p for _, p in keys))
  fractions = sorted(
    {float(pt[0]) for lines in panels.values() for pts in lines.values() for pt in pts}
  )
  if any(not f > 0 for f in fractions):
    raise ValueError(f"fractions must be > 0 for a log axis, got {fractions}")
  fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.8), squeeze=False)
  for ax, (name, lines) in zip(axes[0], panels.items(), strict=True):
    for i, key in enumerate(keys):
      pts = [pt for pt in lines.get(key, []) if pt[1] is not None]
      if not pts:
        continue
      arm, protocol = key
      nudge = 10 ** (0.015 * (i - (len(keys) - 1) / 2))
      xs = np.array([float(pt[0]) for pt in pts]) * nudge
      est = np.array([float(pt[1]) for pt in pts])
      lo = np.array([_as_float(pt[2]) for pt in pts])
      hi = np.array([_as_float(pt[3]) for pt in pts])
      colour = f"C{arms.index(arm) % 10}"
      style = _LINESTYLES[protocols.index(protocol) % len(_LINESTYLES)]
      ax.plot(
        xs,
        est,
        linestyle=style,
        marker="o",
        markersize=5,
        color=colour,
        label=f"{arm} ({protocol})",
      )
      bars = np.isfinite(lo) & np.isfinite(hi)
      if bars.any():
        ax.errorbar(
          xs[bars],
          est[bars],
          yerr=[np.maximum(est - lo, 0.0)[bars], np.maximum(hi - est, 0.0)[bars]],
          fmt="none",
          ecolor=colour,
          capsize=4,
          linewidth=1,
        )
    ax.set_xscale("log")
    ax.set_xticks(fractions)
    ax.set_xticklabels([_percent(f) for f in fractions])
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(name)
    ax.set_title(name[:1].upper() + name[1:])
    ax.grid(True, alpha=0.3)
  handles, labels = axes[0][0].get_legend_handles_labels()
  if handles:
    axes[0][-1].legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
  fig.suptitle(title)
  fig.tight_layout()
  _savefig(fig, path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path
