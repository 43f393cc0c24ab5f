"""Who each DermaMNIST image is: its HAM10000 image id, lesion id and patient metadata.

DermaMNIST (MedMNIST) ships pixels and labels only, and its official split is random per
image, so several images of one lesion sit in different splits. The packaged table
`embedded/dermamnist_lesions.csv` (how it was built and verified:
`embedded/DERMAMNIST_LESIONS.md`; attribution: `embedded/ATTRIBUTION.md`) gives every image
its HAM10000 `image_id`, `lesion_id`, `dx`, `dx_type`, `age`, `sex` and `localization`.

  rows = dermamnist_lesions.match("npz", {"train": y_train, "val": y_val, "test": y_test})
  rows["test"]["lesion_id"]       # str array, index i = test image i of that file
  dermamnist_lesions.lesion_split(rows, seed=0)   # a lesion-grouped re-split (see below)

Which files it knows, by their split sizes (labels are then checked image by image against
the table's `dx`, so a file with another order is never given wrong identities):

* 7,006 / 1,002 / 2,005 images: the table's own order (DermaMNIST with the two byte-identical
  duplicates dropped, as in the file this table was verified on);
* 7,007 / 1,003 / 2,005: the official MedMNIST files (28, 64, 128 or 224 px), by the
  official index; the two dropped duplicates get their own image id and their twin's lesion;
* the packaged subset (`source='embedded'`), through `embedded/dermamnist_mini_index.json`.

Anything else (another subset, a relabelled file) has no lesion identity: `match` returns
None and says why.
"""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import numpy as np

from derm_jax.data import splits as splits_lib
from derm_jax.data.registry import HAM10000_CLASSES

_EMBEDDED = Path(__file__).resolve().parent / "embedded"
TABLE_CSV = _EMBEDDED / "dermamnist_lesions.csv"
MINI_INDEX = _EMBEDDED / "dermamnist_mini_index.json"
SPLITS = ("train", "val", "test")
TEXT_FIELDS = ("image_id", "lesion_id", "dx", "dx_type", "sex", "localization")
# Split sizes of the table's own file and of the official MedMNIST files.
TABLE_SIZES = (7006, 1002, 2005)
OFFICIAL_SIZES = (7007, 1003, 2005)
# Official images left out of the table's file (byte-identical to a kept image of the same
# lesion in the same split): official index -> (its HAM10000 image id, the kept twin's
# official index).
_DROPPED = {"train": {6521: ("ISIC_0029861", 2815)}, "val": {542: ("ISIC_0024777", 696)}}


@functools.lru_cache(maxsize=1)
def table() -> dict[str, dict[str, np.ndarray]]:
  """The packaged table per split ('train', 'val', 'test'), in the table file's order:
  text fields as str arrays, 'age' float32 (NaN where unknown), 'medmnist_index' int64."""
  cols: dict[str, dict[str, list]] = {s: {f: [] for f in (*TEXT_FIELDS, "age", "index",
                                                          "medmnist_index")} for s in SPLITS}
  with open(TABLE_CSV, newline="") as f:
    for row in csv.DictReader(f):
      c = cols[row["split"]]
      for k in TEXT_FIELDS:
        c[k].append(row[k])
      c["age"].append(float(row["age"]) if row["age"] else np.nan)
      c["index"].append(int(row["index"]))
      c["medmnist_index"].append(int(row["medmnist_index"]))
  out = {}
  for s, c in cols.items():
    if c["index"] != list(range(len(c["index"]))):
      raise RuntimeError(f"{TABLE_CSV}: split {s!r} is not in index order.")
    out[s] = {k: np.asarray(c[k], dtype=str) for k in TEXT_FIELDS}
    out[s]["age"] = np.asarray(c["age"], dtype=np.float32)
    out[s]["medmnist_index"] = np.asarray(c["medmnist_index"], dtype=np.int64)
  return out


def _take(split_table: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
  return {k: v[rows] for k, v in split_table.items() if k != "medmnist_index"}


def _official_rows(split: str, n: int) -> tuple[np.ndarray, dict[int, str]]:
  """Table rows of official indices 0..n-1 and the image ids to put at dropped positions."""
  mm = table()[split]["medmnist_index"]
  where = {int(m): i for i, m in enumerate(mm)}
  rows = np.empty(n, dtype=np.int64)
  renamed = {}
  for pos in range(n):
    if pos in where:
      rows[pos] = where[pos]
    else:
      image_id, twin = _DROPPED.get(split, {}).get(pos, (None, None))
      if image_id is None or twin not in where:
        raise KeyError(pos)
      rows[pos] = where[twin]
      renamed[pos] = image_id
  return rows, renamed


def match(source: str, labels: dict[str, np.ndarray]) -> tuple[dict | None, str]:
  """(per-split metadata, '') for a DermaMNIST file whose images the table knows, else
  (None, why not).

  `source`: the data source ('embedded', 'npz', 'download'); `labels`: each split's int
  labels in file order. The metadata of split s holds, index i = image i of s in the file:
  the TEXT_FIELDS as str arrays and 'age' (float32 years, NaN where unknown)."""
  sizes = tuple(len(labels[s]) for s in SPLITS)
  out = {}
  for s in SPLITS:
    renamed: dict[int, str] = {}
    if source == "embedded":
      rows = np.asarray(json.loads(MINI_INDEX.read_text())[s], dtype=np.int64)
    elif sizes == TABLE_SIZES:
      rows = np.arange(sizes[SPLITS.index(s)])
    elif sizes == OFFICIAL_SIZES:
      rows, renamed = _official_rows(s, sizes[SPLITS.index(s)])
    else:
      return None, (f"split sizes {sizes} are neither DermaMNIST's official "
                    f"{OFFICIAL_SIZES} nor the lesion table's {TABLE_SIZES}")
    if len(rows) != len(labels[s]):
      return None, f"split {s!r} has {len(labels[s])} images, the lesion table {len(rows)}"
    md = _take(table()[s], rows)
    for pos, image_id in renamed.items():
      md["image_id"][pos] = image_id
    dx = np.array([HAM10000_CLASSES.index(d) for d in md["dx"]], dtype=np.int64)
    bad = np.flatnonzero(dx != np.asarray(labels[s], dtype=np.int64))
    if bad.size:
      return None, (f"{bad.size} {s} label(s) differ from the lesion table's diagnosis "
                    f"(first: image {bad[0]}), so the file is not in DermaMNIST's order")
    out[s] = md
  return out, ""


def seen_lesions(metadata: dict[str, dict[str, np.ndarray]], split: str = "test",
                 seen_in: tuple[str, ...] = ("train",)) -> np.ndarray:
  """(N,) bool over `split`: True where the image's lesion also has an image in `seen_in`."""
  seen = set().union(*(set(metadata[s]["lesion_id"].tolist()) for s in seen_in))
  seen.discard("")
  return np.array([les in seen for les in metadata[split]["lesion_id"].tolist()], dtype=bool)


# ----------------------------------------------------------------------------- lesion split


def lesion_split(metadata: dict[str, dict[str, np.ndarray]], labels: dict[str, np.ndarray],
                 seed: int) -> dict[str, np.ndarray]:
  """A lesion-grouped re-split of all images with the file's own split sizes.

  Every image of one lesion goes to one split; lesions are assigned class-stratified
  (`splits.grouped_stratified_split`, seeded), then single-image lesions of the most
  common class move between splits until each split has exactly its official size.

  Returns {split: (n_split, 2) int64 rows of (official split index 0/1/2, index in it)},
  each sorted by official split, then index."""
  split_labels = np.concatenate([np.asarray(labels[s], np.int64) for s in SPLITS])
  lesions = np.concatenate([metadata[s]["lesion_id"] for s in SPLITS])
  origin = np.concatenate([np.stack([np.full(len(labels[s]), k), np.arange(len(labels[s]))],
                                    axis=1) for k, s in enumerate(SPLITS)]).astype(np.int64)
  sizes = np.array([len(labels[s]) for s in SPLITS], dtype=np.int64)
  n = sizes.sum()
  assignment = splits_lib.grouped_stratified_split(
      split_labels, lesions, val_fraction=sizes[1] / n, test_fraction=sizes[2] / n, seed=seed)
  assignment = splits_lib.fit_sizes(assignment, split_labels, lesions, sizes, seed=seed)
  return {s: origin[assignment == k] for k, s in enumerate(SPLITS)}
