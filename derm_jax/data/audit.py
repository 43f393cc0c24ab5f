"""Leakage audit: near-duplicate images and shared lesions across train/val/test splits.

  python -m derm_jax.data.audit --config=configs/vae.py \\
      [--config.data.name=ham10000 --config.data.manual_dir=...] --out=DIR

Two images in different splits form a pair when they are near-duplicates, or when the
dataset's metadata gives them the same `lesion_id`. Near-duplicate, on the stored images:

1. a 64-bit perceptual hash (`phash`: DCT-II of a 32x32 grayscale, signs of the 8x8
   lowest frequencies against their median) differs in at most `tolerance` bits, and
2. the 32x32 RGB thumbnails correlate (`thumbnail_correlation`: cosine of the pixel
   values after removing each channel's mean, so brightness, contrast and colour-cast
   changes do not matter) at `min_correlation` or more.

Both thresholds were measured on the full DermaMNIST (28 px; see the README section):

* a resized and re-encoded copy (28 -> 56 bicubic -> 28 bilinear, JPEG quality 60-89)
  of 2,000 images lies within 6 bits for 99.9% and 8 bits for all (balanced codes:
  distances are even), and correlates with its original at >= 0.976 for 99%
  (minimum 0.952);
* the hash alone is not enough at this size: of the 326 train-test pairs within 6 bits,
  most are *different* lesions (a dark blob centred on skin has the same low
  frequencies; their labels agree 72% of the time, chance is 48%). Looking at the
  candidate pairs ordered by correlation, those >= 0.97 are the same picture, those
  below it are mostly look-alike lesions. Of the 3,308 different-lesion pairs of the
  82-image HAM10000 sample the closest hash distance is 8 bits.

Hence `DEFAULT_TOLERANCE` = 10 bits (every copy, with margin) and
`DEFAULT_MIN_CORRELATION` = 0.97 (>= 99% of copies, rejects the look-alikes). Other
images of one lesion (other shots) are mostly 12-38 bits apart: those are found through
`lesion_id` where the metadata has one, not by the hash.

Writes to DIR:

* ``pairs.csv``: split_a,id_a,split_b,id_b,distance,same_lesion,correlation (same_lesion
  is '' when the dataset has no lesion ids);
* ``pairs.png``: the closest pairs side by side;
* ``leak_free_test_ids.txt``: ids of test images with no pair in train or val;
* ``summary.json``: counts per split pair (images and lesions shared), test images with a
  near-duplicate / shared lesion in train or val and which check found them
  (`test_images_found_by`: pixels only, lesion id only, both), the thresholds.

Lesion ids come from the dataset's metadata: HAM10000, ISIC 2019, a folder with a `group`
column, and DermaMNIST through the packaged lesion table (derm_jax/data/dermamnist_lesions.py;
on the official split: 693 of the 2,005 test images, from 641 lesions, have a lesion with an
image in train; the pixel check alone finds 32 of them).

For evaluation: `find_leaks(dataset, tolerance)` -> `AuditResult`, and
`leak_free_test_ids(result)` -> the test ids to score without leaking images.

The CLI checks its settings before any work (`--tolerance` in 0..64, `--min_correlation` a
finite number in [-1, 1], `--out` a folder or a path one can be made at) and reports any
problem the user can fix (those, a missing or damaged dataset, an unknown dataset name) as
one line ``error: ...`` on stderr with exit status 1.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from derm_jax import console, errors

SPLITS = ("train", "val", "test")
SPLIT_PAIRS = (("train", "val"), ("train", "test"), ("val", "test"))
DEFAULT_TOLERANCE = 10
DEFAULT_MIN_CORRELATION = 0.97
THUMB_SIZE = 32
HASH_SIZE = 32  # grayscale side the DCT is taken of
LOW_FREQ = 8  # 8x8 lowest frequencies -> 64 bits
_BATCH = 256
_BLOCK = 1024


def _dct_matrix(n: int) -> np.ndarray:
  k = np.arange(n)
  c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))
  c[0] /= np.sqrt(2.0)
  return c  # orthonormal DCT-II: y = C x


_DCT = _dct_matrix(HASH_SIZE)
_BIT_WEIGHTS = (np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64))


def grayscale_32(image: np.ndarray) -> np.ndarray:
  """(32, 32) float64 luma of an RGB or grayscale uint8 image (PIL bilinear, antialiased)."""
  im = Image.fromarray(np.asarray(image, dtype=np.uint8).squeeze()).convert("L")
  return np.asarray(im.resize((HASH_SIZE, HASH_SIZE), Image.Resampling.BILINEAR),
                    dtype=np.float64)


def thumbnail(image: np.ndarray) -> np.ndarray:
  """(32, 32, 3) uint8 RGB thumbnail (PIL bilinear, antialiased)."""
  im = Image.fromarray(np.asarray(image, dtype=np.uint8).squeeze()).convert("RGB")
  return np.asarray(im.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BILINEAR),
                    dtype=np.uint8)


def thumbnail_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Correlation of paired thumbnails (..., 32, 32, 3): the cosine of the pixel values
  after removing each channel's mean (a brightness or colour-cast change does not lower
  it; a different picture does)."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  a = (a - a.mean(axis=(-3, -2), keepdims=True)).reshape(*a.shape[:-3], -1)
  b = (b - b.mean(axis=(-3, -2), keepdims=True)).reshape(*b.shape[:-3], -1)
  den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
  return np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1.0), 0.0)


def phash_gray(gray: np.ndarray) -> np.ndarray:
  """uint64 pHash of each (..., 32, 32) grayscale array (numpy DCT-II)."""
  gray = np.asarray(gray, dtype=np.float64)
  coeffs = np.einsum("ij,...jk,lk->...il", _DCT, gray, _DCT)[..., :LOW_FREQ, :LOW_FREQ]
  low = coeffs.reshape(*coeffs.shape[:-2], LOW_FREQ * LOW_FREQ)
  bits = low > np.median(low, axis=-1, keepdims=True)
  return (bits.astype(np.uint64) * _BIT_WEIGHTS).sum(axis=-1, dtype=np.uint64)


def phash(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
  """(N,) uint64 perceptual hashes of N uint8 images (any size; RGB or gray)."""
  if len(images) == 0:
    return np.zeros((0,), dtype=np.uint64)
  return phash_gray(np.stack([grayscale_32(im) for im in images]))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(len(a), len(b)) uint8 Hamming distances between two arrays of uint64 hashes."""
  return np.bitwise_count(np.asarray(a, np.uint64)[:, None] ^ np.asarray(b, np.uint64)[None, :])


def close_pairs(a: np.ndarray, b: np.ndarray, tolerance: int) -> tuple[np.ndarray, ...]:
  """(index_a, index_b, distance) of all pairs within `tolerance` bits (blockwise)."""
  ia, ib, dist = [], [], []
  for start in range(0, len(a), _BLOCK):
    d = hamming(a[start:start + _BLOCK], b)
    r, c = np.nonzero(d <= tolerance)
    ia.append(r + start)
    ib.append(c)
    dist.append(d[r, c])
  if not ia:
    return (np.zeros(0, np.int64),) * 2 + (np.zeros(0, np.uint8),)
  return (np.concatenate(ia).astype(np.int64), np.concatenate(ib).astype(np.int64),
          np.concatenate(dist).astype(np.uint8))


# ----------------------------------------------------------------------------- the audit


@dataclasses.dataclass(frozen=True)
class Pair:
  """Two images in different splits that are near-duplicates or share a lesion."""

  split_a: str
  index_a: int  # position in source(split_a)
  id_a: int
  split_b: str
  index_b: int
  id_b: int
  distance: int  # pHash Hamming distance (bits of 64)
  same_lesion: bool | None  # None: the dataset has no lesion ids
  correlation: float  # thumbnail correlation
  near_duplicate: bool  # distance <= tolerance and correlation >= min_correlation


@dataclasses.dataclass
class AuditResult:
  """Hashes, ids and lesion ids per split, and the cross-split pairs found."""

  tolerance: int
  min_correlation: float
  ids: dict[str, np.ndarray]
  hashes: dict[str, np.ndarray]
  thumbnails: dict[str, np.ndarray]
  lesion_ids: dict[str, np.ndarray] | None
  pairs: list[Pair]
  dataset: dict[str, Any] = dataclasses.field(default_factory=dict)  # describe()
  # Pairs within `tolerance` bits per split pair, before the correlation check.
  candidates: dict[str, int] = dataclasses.field(default_factory=dict)

  def leaking_test_ids(self, other_splits: Iterable[str] = ("train", "val")) -> np.ndarray:
    """Sorted ids of test images with a pair in `other_splits`."""
    other = set(other_splits)
    ids = {p.id_b for p in self.pairs if p.split_b == "test" and p.split_a in other}
    return np.array(sorted(ids), dtype=np.int64)

  def summary(self) -> dict[str, Any]:
    by_pair: dict[str, Any] = {}
    for a, b in SPLIT_PAIRS:
      ps = [p for p in self.pairs if (p.split_a, p.split_b) == (a, b)]
      near = [p for p in ps if p.near_duplicate]
      by_pair[f"{a}-{b}"] = {
          "pairs": len(ps), "near_duplicate_pairs": len(near),
          "same_lesion_pairs": sum(bool(p.same_lesion) for p in ps),
          f"{b}_images_with_near_duplicate": len({p.index_b for p in near}),
          f"{b}_images_sharing_a_lesion": len({p.index_b for p in ps if p.same_lesion}),
          f"{b}_lesions_shared": (len({str(self.lesion_ids[b][p.index_b]) for p in ps
                                       if p.same_lesion}) if self.lesion_ids else None),
          "near_duplicate_distance_histogram": np.bincount(
              [p.distance for p in near], minlength=self.tolerance + 1).tolist(),
          "hash_candidates": self.candidates.get(f"{a}-{b}", 0)}
    test_near = {p.index_b for p in self.pairs if p.split_b == "test" and p.near_duplicate}
    test_lesion = {p.index_b for p in self.pairs if p.split_b == "test" and p.same_lesion}
    n_test = len(self.ids.get("test", ()))
    # Which check found each leaking test image: the pixel check (near-copies of one
    # picture) and the lesion ids (every image of a lesion, whatever it looks like).
    found_by = {"pixels_only": len(test_near - test_lesion),
                "lesion_id_only": len(test_lesion - test_near),
                "both": len(test_near & test_lesion)}
    return {
        "dataset": self.dataset, "tolerance_bits": self.tolerance,
        "min_correlation": self.min_correlation, "hash": "pHash 64-bit",
        "has_lesion_ids": self.lesion_ids is not None,
        "images": {s: int(len(v)) for s, v in self.ids.items()},
        "split_pairs": by_pair,
        "test_images_with_near_duplicate_in_train_or_val": len(test_near),
        "test_images_sharing_a_lesion_with_train_or_val": len(test_lesion),
        "test_images_found_by": found_by,
        "test_images_leaking": len(self.leaking_test_ids()),
        "leak_free_test_images": n_test - len(self.leaking_test_ids()),
        # Duplicates inside one split are not leaks but inflate its effective size.
        "within_split_near_duplicate_pairs": {
            s: len(_near_duplicates(self.hashes[s], self.thumbnails[s], self.hashes[s],
                                    self.thumbnails[s], self.tolerance,
                                    self.min_correlation, distinct=True)[0])
            for s in self.hashes},
    }


def _near_duplicates(ha, ta, hb, tb, tolerance, min_correlation, distinct=False):
  """(index_a, index_b, distance, correlation, candidates): pairs passing both checks."""
  ia, ib, dist = close_pairs(ha, hb, tolerance)
  if distinct:
    keep = ia < ib
    ia, ib, dist = ia[keep], ib[keep], dist[keep]
  corr = thumbnail_correlation(ta[ia], tb[ib]) if len(ia) else np.zeros(0)
  ok = corr >= min_correlation
  return ia[ok], ib[ok], dist[ok], corr[ok], len(ia)


def read_hashes(source: Any, thumbnails: Any = None, thumb_size: int = THUMB_SIZE
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(ids, pHashes, thumbnails) of every image of a random-access source, read in batches.

  `thumbnails(images) -> (n, thumb_size, thumb_size, 3) uint8` (default: the audit's 32x32
  `thumbnail` of each image); an item without an 'id' gets its position."""
  n = len(source)
  ids = np.zeros(n, dtype=np.int64)
  hashes = np.zeros(n, dtype=np.uint64)
  thumbs = np.zeros((n, thumb_size, thumb_size, 3), dtype=np.uint8)
  get_many = getattr(source, "__getitems__", None)
  for start in range(0, n, _BATCH):
    idx = list(range(start, min(n, start + _BATCH)))
    items = get_many(idx) if get_many is not None else [source[i] for i in idx]
    ids[start:start + len(idx)] = [int(ex.get("id", i)) for i, ex in zip(idx, items,
                                                                           strict=True)]
    images = [np.asarray(ex["image"]) for ex in items]
    hashes[start:start + len(idx)] = phash(images)
    thumbs[start:start + len(idx)] = (thumbnails(images) if thumbnails is not None
                                      else [thumbnail(im) for im in images])
  return ids, hashes, thumbs


def dataset_lesion_ids(dataset: Any, split: str) -> np.ndarray | None:
  """Lesion id per example of `split` ('' = unknown), or None if the dataset has none."""
  get = getattr(dataset, "metadata", None)
  if get is None:
    return None
  lesions = get(split).get("lesion_id")
  return None if lesions is None else np.asarray(lesions, dtype=str)


def check_thresholds(tolerance: Any, min_correlation: Any) -> tuple[int, float]:
  """(tolerance, min_correlation) as int and float; ConfigError (a ValueError) unless the
  tolerance is an integer in 0..64 bits and min_correlation a finite number in [-1, 1]."""
  integral = (isinstance(tolerance, (int, np.integer)) or (
      isinstance(tolerance, (float, np.floating)) and float(tolerance).is_integer()))
  if isinstance(tolerance, bool) or not integral:
    raise errors.ConfigError(f"tolerance={tolerance!r}: must be an integer in 0..64 bits.")
  if not 0 <= tolerance <= 64:
    raise errors.ConfigError(f"tolerance={tolerance}: must be in 0..64 bits.")
  try:
    corr = float(min_correlation)
  except (TypeError, ValueError):
    corr = math.nan
  if isinstance(min_correlation, bool) or not (math.isfinite(corr) and -1.0 <= corr <= 1.0):
    raise errors.ConfigError(f"min_correlation={min_correlation!r}: must be a finite number "
                             "in [-1, 1] (a thumbnail correlation).")
  return int(tolerance), corr


def find_leaks(dataset: Any, tolerance: int = DEFAULT_TOLERANCE,
               min_correlation: float = DEFAULT_MIN_CORRELATION,
               splits: Sequence[str] = SPLITS) -> AuditResult:
  """Audits a registry dataset (`registry.get(config.data)`) for cross-split leaks.

  Pairs are (earlier split, later split) in `SPLITS` order: near-duplicates (pHash within
  `tolerance` bits and thumbnail correlation >= `min_correlation`), plus (when
  `dataset.metadata(split)['lesion_id']` exists) every two images with the same non-empty
  lesion id, whatever they look like.
  """
  tolerance, min_correlation = check_thresholds(tolerance, min_correlation)
  ids, hashes, thumbs, lesions = {}, {}, {}, {}
  for split in splits:
    ids[split], hashes[split], thumbs[split] = read_hashes(dataset.source(split))
    lesions[split] = dataset_lesion_ids(dataset, split)
  has_lesions = all(v is not None for v in lesions.values())
  pairs: list[Pair] = []
  candidates: dict[str, int] = {}
  for a, b in SPLIT_PAIRS:
    if a not in ids or b not in ids:
      continue
    ia, ib, dist, corr, n_cand = _near_duplicates(hashes[a], thumbs[a], hashes[b], thumbs[b],
                                                  tolerance, min_correlation)
    candidates[f"{a}-{b}"] = int(n_cand)
    found = {(int(i), int(j)): (int(d), float(c), True)
             for i, j, d, c in zip(ia, ib, dist, corr, strict=True)}
    if has_lesions:
      where_b: dict[str, list[int]] = {}
      for j, les in enumerate(lesions[b]):
        if les:
          where_b.setdefault(str(les), []).append(j)
      for i, les in enumerate(lesions[a]):
        for j in where_b.get(str(les), []) if les else []:
          if (i, j) not in found:
            d = int(np.bitwise_count(hashes[a][i] ^ hashes[b][j]))
            c = float(thumbnail_correlation(thumbs[a][i], thumbs[b][j]))
            found[(i, j)] = (d, c, d <= tolerance and c >= min_correlation)
    for (i, j), (d, c, near) in sorted(found.items()):
      same = (bool(lesions[a][i]) and lesions[a][i] == lesions[b][j]) if has_lesions else None
      pairs.append(Pair(a, i, int(ids[a][i]), b, j, int(ids[b][j]), d, same, round(c, 4),
                        near))
  describe = dataset.describe() if hasattr(dataset, "describe") else {}
  return AuditResult(tolerance=tolerance, min_correlation=min_correlation, ids=ids,
                     hashes=hashes, thumbnails=thumbs,
                     lesion_ids=lesions if has_lesions else None, pairs=pairs,
                     dataset={k: describe[k] for k in ("name", "source", "split_kind", "splits", "image_size")
                              if k in describe},
                     candidates=candidates)


def leak_free_test_ids(result: AuditResult,
                       other_splits: Iterable[str] = ("train", "val")) -> np.ndarray:
  """Sorted ids of the test images with no near-duplicate or shared lesion in
  `other_splits`: score on these to measure a model without leaked images."""
  leaking = set(result.leaking_test_ids(other_splits).tolist())
  return np.array(sorted(i for i in result.ids["test"].tolist() if i not in leaking),
                  dtype=np.int64)


# ----------------------------------------------------------------------------- outputs


def write_pairs_csv(result: AuditResult, path: str) -> None:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["split_a", "id_a", "split_b", "id_b", "distance", "same_lesion",
                "correlation"])
    for p in result.pairs:
      w.writerow([p.split_a, p.id_a, p.split_b, p.id_b, p.distance,
                  "" if p.same_lesion is None else int(p.same_lesion), p.correlation])


def plot_pairs(result: AuditResult, dataset: Any, path: str, max_pairs: int = 8) -> int:
  """Saves the `max_pairs` closest pairs (test pairs first) side by side; returns how many."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  order = sorted(result.pairs, key=lambda p: (p.split_b != "test", -p.correlation, p.id_b))
  shown = order[:max_pairs]
  rows = max(1, len(shown))
  fig, axes = plt.subplots(rows, 2, figsize=(4.4, 2.2 * rows), squeeze=False)
  sources: dict[str, Any] = {}
  for r, p in enumerate(shown):
    for c, (split, index, id_) in enumerate(((p.split_a, p.index_a, p.id_a),
                                             (p.split_b, p.index_b, p.id_b))):
      if split not in sources:
        sources[split] = dataset.source(split)
      ax = axes[r][c]
      ax.imshow(sources[split][index]["image"], interpolation="nearest")
      title = f"{split} id {id_}"
      if c == 1:
        title += (f"\nd={p.distance} r={p.correlation:.3f}"
                  + (" same lesion" if p.same_lesion else ""))
      ax.set_title(title, fontsize=7)
      ax.axis("off")
  if not shown:
    axes[0][0].text(0.5, 0.5, "no pairs found", ha="center", va="center")
    for ax in axes[0]:
      ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return len(shown)


def write_outputs(result: AuditResult, dataset: Any, out_dir: str) -> dict[str, Any]:
  """Writes pairs.csv, pairs.png, leak_free_test_ids.txt and summary.json; returns the
  summary."""
  os.makedirs(out_dir, exist_ok=True)
  write_pairs_csv(result, os.path.join(out_dir, "pairs.csv"))
  plot_pairs(result, dataset, os.path.join(out_dir, "pairs.png"))
  ids = leak_free_test_ids(result)
  with open(os.path.join(out_dir, "leak_free_test_ids.txt"), "w") as f:
    f.write("".join(f"{i}\n" for i in ids.tolist()))
  summary = result.summary()
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def check_out_dir(out_dir: str) -> str:
  """`out_dir` (`~` expanded) if it is a folder or can be made one; ConfigError otherwise.
  Creates nothing."""
  path = os.path.abspath(os.path.expanduser(out_dir))
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise errors.ConfigError(f"--out={out_dir}: exists and is not a folder; choose "
                               "another --out.")
    if not os.access(path, os.W_OK | os.X_OK):
      raise errors.ConfigError(f"--out={out_dir}: folder is not writable.")
    return path
  parent = os.path.dirname(path)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise errors.ConfigError(f"--out={out_dir}: cannot be created, {parent} is not a folder.")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise errors.ConfigError(f"--out={out_dir}: cannot be created, {parent} is not "
                             "writable.")
  return path


@errors.cli_main
def main(argv: Sequence[str]) -> None:
  from absl import app
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Every setting is checked before the dataset is read or anything is written.
  tolerance, min_correlation = check_thresholds(_TOLERANCE.value, _MIN_CORRELATION.value)
  out_dir = check_out_dir(_OUT.value)
  from derm_jax.data import registry
  dataset = registry.get(_CONFIG.value.data)
  result = find_leaks(dataset, tolerance, min_correlation)
  try:
    summary = write_outputs(result, dataset, out_dir)
  except OSError as e:
    raise errors.ConfigError(f"--out={_OUT.value}: cannot write the audit outputs "
                             f"({e.strerror or e}).") from e
  print(json.dumps({k: summary[k] for k in (
      "dataset", "tolerance_bits", "min_correlation", "images",
      "test_images_with_near_duplicate_in_train_or_val",
      "test_images_sharing_a_lesion_with_train_or_val", "test_images_found_by",
      "leak_free_test_images")} | {"train-test": {
          k: v for k, v in summary["split_pairs"]["train-test"].items()
          if k.startswith("test_")}}, indent=2))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (its "
                                            "`data` field selects the dataset).")
  _OUT = flags.DEFINE_string("out", None, "Output directory.")
  _TOLERANCE = flags.DEFINE_integer("tolerance", DEFAULT_TOLERANCE,
                                    "pHash Hamming tolerance in bits (of 64).")
  _MIN_CORRELATION = flags.DEFINE_float("min_correlation", DEFAULT_MIN_CORRELATION,
                                        "Minimum thumbnail correlation of a near-duplicate.")
  flags.mark_flags_as_required(["config", "out"])
  app.run(main, flags_parser=console.parse_flags)
