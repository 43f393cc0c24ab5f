"""Tests of derm_jax.plots: image grid pixel size, and that every figure writes a valid PNG."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from derm_jax import plots


def test_image_grid_pixel_size_and_content(tmp_path):
  rng = np.random.default_rng(0)
  top = rng.random((3, 8, 10, 3))  # float in [0, 1]
  bottom = (rng.random((3, 8, 10, 3)) * 255).astype(np.uint8)  # uint8
  path = plots.save_image_grid([top, bottom], tmp_path / "sub" / "grid.png", pad=2)
  img = Image.open(path)
  assert img.format == "PNG"
  # width = 3*10 + 4*2 = 38, height = 2*8 + 3*2 = 22
  assert img.size == (38, 22)
  arr = np.asarray(img.convert("RGB"))
  np.testing.assert_array_equal(arr[2 + 8 + 2 : 2 + 8 + 2 + 8, 2:12], bottom[0])
  np.testing.assert_array_equal(arr[2:10, 14:24], np.round(top[1] * 255).astype(np.uint8))
  assert (arr[0] == 255).all() and (arr[:, 0] == 255).all()


def test_image_grid_ragged_rows_and_no_pad(tmp_path):
  rows = [np.zeros((5, 4, 6, 3)), np.ones((2, 4, 6, 3))]
  img = Image.open(plots.save_image_grid(rows, tmp_path / "g.png", pad=0))
  assert img.size == (5 * 6, 2 * 4)


def _is_png(path) -> bool:
  with open(path, "rb") as f:
    if f.read(8) != b"\x89PNG\r\n\x1a\n":
      return False
  Image.open(path).verify()
  return True


def test_confusion_and_curves_write_png(tmp_path):
  cm = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
  assert _is_png(plots.save_confusion_matrix(cm, ["a", "b", "c"], tmp_path / "cm.png", "cm"))
  assert _is_png(
    plots.save_confusion_matrix(cm, ["a", "b", "c"], tmp_path / "cm_raw.png", "cm", normalize=False)
  )

  def hist(n, off):
    return [
      {"epoch": e, "train/loss": 1.0 / e + off, "val/loss": 1.2 / e + off} for e in range(1, n + 1)
    ]

  runs = {"vae": [hist(5, 0.0), hist(5, 0.1)], "imagenet": [hist(3, 0.05)]}
  assert _is_png(plots.save_curves(runs, ["train/loss", "val/loss"], tmp_path / "c.png", "loss"))
  assert _is_png(
    plots.save_curves(
      runs, ["train/loss", "val/loss"], tmp_path / "c2.png", "loss", separate_panels=True, hline=0.0
    )
  )
  epochs, mean, std, _ = plots.aggregate_histories(runs["vae"], "val/loss")
  np.testing.assert_array_equal(epochs, [1, 2, 3, 4, 5])
  np.testing.assert_allclose(mean, 1.2 / epochs + 0.05)
  np.testing.assert_allclose(std, np.full(5, np.std([0.0, 0.1], ddof=1)))


def _capture_figures(monkeypatch):
  """Keeps the figures the plotting functions close, to inspect their texts."""
  figs = []
  monkeypatch.setattr(plots.plt, "close", lambda fig: figs.append(fig))
  return figs


def test_confusion_matrix_readable_with_class_names(tmp_path, monkeypatch):
  figs = _capture_figures(monkeypatch)
  names = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
  cm = np.arange(49).reshape(7, 7)
  assert _is_png(
    plots.save_confusion_matrix(cm, names, tmp_path / "cm.png", "test confusion matrix")
  )
  fig = figs[-1]
  cells = fig.axes[0].texts
  assert len(cells) == 49 and min(t.get_fontsize() for t in cells) >= 10
  caption = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
  assert "akiec = actinic keratoses / intraepithelial carcinoma" in caption
  assert "vasc = vascular lesions" in caption and "nv = melanocytic nevi" in caption
  assert plots.describe_class("mel") == "melanoma" and plots.describe_class("xyz") == "xyz"
  assert plots.class_caption(["a", "df"]) == "df = dermatofibroma"


def test_gap_curves_use_plain_language(tmp_path, monkeypatch):
  figs = _capture_figures(monkeypatch)
  hist = [{"epoch": e, "gap/accuracy": 0.1 * e, "gap/loss": 0.2 * e} for e in range(1, 4)]
  plots.save_curves(
    {"vae": [hist, hist]},
    ["gap/accuracy", "gap/loss"],
    tmp_path / "gap.png",
    "gap",
    separate_panels=True,
    hline=0.0,
  )
  fig = figs[-1]
  words = [ax.get_title() for ax in fig.axes] + [ax.get_ylabel() for ax in fig.axes]
  words += [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
  assert not any("gap/" in w for w in words), words
  assert "Training − validation accuracy" in words
  assert any("vae: validation − training loss" in w for w in words)
  assert all(ax.get_xlabel() == "epoch" for ax in fig.axes)


def test_image_grid_row_labels_title_and_scale(tmp_path):
  rows = [np.zeros((4, 8, 8, 3)), np.ones((4, 8, 8, 3))]
  plain = Image.open(plots.save_image_grid(rows, tmp_path / "plain.png", pad=2))
  assert plain.size == (4 * 8 + 5 * 2, 2 * 8 + 3 * 2)  # unchanged without labels
  labelled = Image.open(
    plots.save_image_grid(
      rows,
      tmp_path / "l.png",
      pad=2,
      row_labels=["input", "recon"],
      title="step 312, val ELBO 13,693",
    )
  )
  assert labelled.size[0] > plain.size[0] and labelled.size[1] > plain.size[1]
  arr = np.asarray(labelled.convert("RGB"))
  assert (arr[: labelled.size[1] - plain.size[1]] < 128).any()  # the title is drawn in the top band
  scaled = Image.open(plots.save_image_grid(rows, tmp_path / "s.png", pad=2, scale=3))
  assert scaled.size == (4 * 24 + 5 * 2, 2 * 24 + 3 * 2)
  with pytest.raises(ValueError, match="one label per row"):
    plots.save_image_grid(rows, tmp_path / "bad.png", row_labels=["only one"])


def test_latent_map_reliability_and_interval_figures(tmp_path):
  rng = np.random.default_rng(0)
  z = rng.normal(size=(50, 2))
  y = rng.integers(0, 3, size=50)
  assert _is_png(
    plots.save_latent_map(z, y, ["bcc", "mel", "nv"], tmp_path / "lat.png", "VAE latents (PCA)")
  )
  with pytest.raises(ValueError, match="latents_2d"):
    plots.save_latent_map(z[:, :1], y, ["bcc", "mel", "nv"], tmp_path / "bad.png", "x")
  conf = np.array([np.nan, 0.5, 0.9])
  acc = np.array([np.nan, 0.4, 0.95])
  assert _is_png(
    plots.save_reliability_diagram(
      conf, acc, [0, 10, 20], tmp_path / "rel.png", "calibration", ece=0.05
    )
  )
  series = {
    "vae": [(0.5, 0.4, 0.6), (0.3, None, None)],
    "imagenet": [(0.6, 0.55, 0.65), (None, None, None)],
  }
  assert _is_png(
    plots.save_interval_groups(
      ["test", "isic"],
      series,
      tmp_path / "iv.png",
      "balanced accuracy",
      "balanced accuracy",
      baseline=[0.14, None],
    )
  )


def test_label_efficiency_figure(tmp_path, monkeypatch):
  figs = _capture_figures(monkeypatch)
  panels = {
    "test balanced accuracy": {
      ("vae", "identical classifier"): [
        (0.01, 0.3, 0.25, 0.35),
        (0.1, 0.4, None, None),
        (1.0, 0.5, 0.45, 0.55),
      ],
      ("vae", "linear probe"): [(0.01, 0.2, 0.15, 0.25), (1.0, 0.45, 0.4, 0.5)],
      ("imagenet", "identical classifier"): [
        (0.01, 0.35, 0.3, 0.4),
        (0.1, None, None, None),
        (1.0, 0.6, 0.55, 0.65),
      ],
    },
    "test macro AUC": {("vae", "identical classifier"): [(0.01, 0.7, 0.65, 0.75)]},
  }
  assert _is_png(plots.save_label_efficiency(panels, tmp_path / "le.png", "label efficiency"))
  fig = figs[-1]
  ax, ax_auc = fig.axes[:2]
  assert ax.get_xscale() == "log" and ax_auc.get_xscale() == "log"
  assert [t.get_text() for t in ax.get_xticklabels()] == ["1%", "10%", "100%"]
  assert "fraction of the training labels" in ax.get_xlabel()
  assert ax.get_ylabel() == "test balanced accuracy"
  lines = {
    line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")
  }
  assert set(lines) == {
    "vae (identical classifier)",
    "vae (linear probe)",
    "imagenet (identical classifier)",
  }
  # colour = arm, line style = protocol
  assert lines["vae (identical classifier)"].get_color() == lines["vae (linear probe)"].get_color()
  assert lines["vae (identical classifier)"].get_color() != (
    lines["imagenet (identical classifier)"].get_color()
  )
  assert lines["vae (identical classifier)"].get_linestyle() == "-"
  assert lines["vae (linear probe)"].get_linestyle() == "--"
  # points at the fractions (nudged by under 5%), a missing estimate left out
  x = lines["imagenet (identical classifier)"].get_xdata()
  np.testing.assert_allclose(x, [0.01, 1.0], rtol=0.05)
  np.testing.assert_allclose(lines["vae (identical classifier)"].get_ydata(), [0.3, 0.4, 0.5])
  # interval bars: one per point with lo and hi (2 + 2 + 2 in the first panel)
  bars = [c for c in ax.collections if len(c.get_segments())]
  assert sum(len(c.get_segments()) for c in bars) == 6
  with pytest.raises(ValueError, match="fractions must be > 0"):
    plots.save_label_efficiency(
      {"m": {("a", "p"): [(0.0, 0.5, None, None)]}}, tmp_path / "bad.png", "x"
    )
