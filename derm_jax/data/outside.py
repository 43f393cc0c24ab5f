"""Is an outside set really outside? Each run's fingerprint of its training and validation
images, and the check of an outside set against it.

An "outside" set that holds the run's own training images measures memory, not
generalisation (ISIC 2018 Task 3 *training* is HAM10000, i.e. DermaMNIST's own images).
Before a classifier is scored on outside images (`config.external`, `derm_jax.evaluate
--isic_images`), every outside image is compared with every training and validation image
of the run:

* by image id, where both sides know it (DermaMNIST through its lesion table, HAM10000,
  ISIC 2019 and folder datasets name each image; ISIC-layout sets name theirs);
* by lesion id, where both sides know it;
* by pixels: the audit's near-duplicate check (derm_jax/data/audit.py: 64-bit pHash within
  `audit.DEFAULT_TOLERANCE` bits) with the correlation of 16x16 thumbnails at least
  `MIN_CORRELATION` (0.975: on DermaMNIST's train/test pairs, every pair the audit's 32x32
  check calls a near-copy correlates at >= 0.9757 at 16x16; two different lesions reached
  0.974).

Overlapping images are left out of the outside metrics, counted in `metrics.json`
('outside_check') and the log; a set of which more than `MOSTLY` is training or validation
data is refused with one line saying so.

The fingerprint (ids, lesion ids, hashes, 16x16 thumbnails; about 6 MB for DermaMNIST's
8,008 train and val images) is written into each classifier run (`FINGERPRINT`), so the
check also works where the training data are no longer present; it is computed once per
prepared dataset and kept beside it.

  fp = outside.fingerprint_of(dataset)              # or outside.load(run_dir)
  found = outside.check(fp, source, image_ids)       # an Overlap
  outside.refuse_if_mostly(found, name)               # DataError when > MOSTLY overlaps
  kept = outside.Subset(source, found.kept)           # what is scored
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from derm_jax import fileio
from derm_jax.data import audit
from derm_jax.data.errors import DataError

FINGERPRINT = "data_fingerprint.npz"
SPLITS = ("train", "val")
THUMB = 16
MIN_CORRELATION = 0.975
MOSTLY = 0.5
_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Fingerprint:
  """The training and validation images of a run, as compared with outside images."""

  splits: np.ndarray     # str: 'train' or 'val'
  ids: np.ndarray        # int64: the record's 'id' in its split
  image_ids: np.ndarray  # str: '' where unknown
  lesion_ids: np.ndarray  # str: '' where unknown
  hashes: np.ndarray     # uint64 pHash
  thumbs: np.ndarray     # (N, 16, 16, 3) uint8

  def __len__(self) -> int:
    return int(self.ids.shape[0])


def thumbnails(images: Sequence[np.ndarray]) -> np.ndarray:
  """(N, 16, 16, 3) uint8 thumbnails (PIL bilinear, antialiased)."""
  return np.stack([np.asarray(Image.fromarray(np.asarray(im, np.uint8).squeeze())
                              .convert("RGB").resize((THUMB, THUMB), Image.Resampling.BILINEAR),
                              dtype=np.uint8) for im in images])


def _hash_source(source: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(record ids, hashes, 16x16 thumbnails) of every image of a random-access source."""
  return audit.read_hashes(source, thumbnails, THUMB)


def _metadata_column(dataset: Any, split: str, key: str, n: int) -> np.ndarray:
  get = getattr(dataset, "metadata", None)
  values = get(split).get(key) if get is not None else None
  if values is None or len(values) != n:
    return np.full(n, "", dtype=str)
  return np.asarray([str(v) for v in values], dtype=str)


def _compute(dataset: Any) -> Fingerprint:
  parts = []
  for split in SPLITS:
    ids, hashes, thumbs = _hash_source(dataset.source(split))
    n = len(ids)
    parts.append((np.full(n, split), ids, _metadata_column(dataset, split, "image_id", n),
                  _metadata_column(dataset, split, "lesion_id", n), hashes, thumbs))
  cols = [np.concatenate(c) for c in zip(*parts, strict=True)]
  return Fingerprint(cols[0].astype(str), cols[1], cols[2].astype(str), cols[3].astype(str),
                     cols[4], cols[5])


def fingerprint_of(dataset: Any) -> Fingerprint:
  """The dataset's fingerprint; kept beside its prepared records (`version_dir`) when the
  dataset has one, so it is computed once per prepared dataset."""
  where = getattr(dataset, "version_dir", None)
  cache = os.path.join(where, "derm_jax_" + FINGERPRINT) if where else None
  if cache and os.path.isfile(cache):
    try:
      fp = load_file(cache)
      if {s: int((fp.splits == s).sum()) for s in SPLITS} == \
         {s: len(dataset.source(s)) for s in SPLITS}:
        return fp
    except DataError:
      pass
  fp = _compute(dataset)
  if cache:
    try:
      save(fp, cache)
    except OSError:
      pass  # a read-only data folder: computed again next time
  return fp


def save(fp: Fingerprint, path: str) -> None:
  """Writes `fp` (compressed npz) to `path` atomically."""
  buf = io.BytesIO()
  np.savez_compressed(buf, version=np.int64(_VERSION), splits=fp.splits, ids=fp.ids,
                      image_ids=fp.image_ids, lesion_ids=fp.lesion_ids, hashes=fp.hashes,
                      thumbs=fp.thumbs)
  fileio.atomic_write_bytes(path, buf.getvalue())


def load_file(path: str) -> Fingerprint:
  try:
    with np.load(io.BytesIO(fileio.read_bytes(path)), allow_pickle=False) as z:
      if int(z["version"]) != _VERSION:
        raise DataError(f"{path}: fingerprint version {int(z['version'])}, expected "
                        f"{_VERSION}.")
      fp = Fingerprint(z["splits"].astype(str), z["ids"].astype(np.int64),
                       z["image_ids"].astype(str), z["lesion_ids"].astype(str),
                       z["hashes"].astype(np.uint64), z["thumbs"].astype(np.uint8))
  except DataError:
    raise
  except Exception as e:  # a damaged or foreign file
    raise DataError(f"{path}: not a readable derm_jax data fingerprint ({e}).") from e
  if fp.thumbs.shape != (len(fp), THUMB, THUMB, 3):
    raise DataError(f"{path}: thumbnails of shape {fp.thumbs.shape}, expected "
                    f"({len(fp)}, {THUMB}, {THUMB}, 3).")
  return fp


def load(run_dir: str) -> Fingerprint | None:
  """The fingerprint a run keeps in its folder, or None (a run of an older version)."""
  path = fileio.join(run_dir, FINGERPRINT)
  return load_file(path) if fileio.exists(path) else None


def write_into(run_dir: str, fp: Fingerprint) -> None:
  """Keeps `fp` in a run's folder (once; an existing one is left as it is)."""
  path = fileio.join(run_dir, FINGERPRINT)
  if not fileio.exists(path):
    save(fp, path)


# ----------------------------------------------------------------------------- the check


@dataclasses.dataclass(frozen=True)
class Overlap:
  """Which outside images are training or validation images of the run, and how found."""

  num_images: int
  how: tuple[str, ...]      # per outside image: '' (outside), 'image_id', 'lesion_id', 'pixels'
  partner: tuple[str, ...]  # per outside image: e.g. 'train id 312' ('' when outside)

  @property
  def overlapping(self) -> np.ndarray:
    return np.array([bool(h) for h in self.how], dtype=bool)

  @property
  def kept(self) -> np.ndarray:
    """Positions of the images that are really outside."""
    return np.flatnonzero(~self.overlapping) if self.num_images else np.zeros(0, np.int64)

  def summary(self, image_ids: Sequence[str] | None = None, examples: int = 10
              ) -> dict[str, Any]:
    found = np.flatnonzero(self.overlapping)
    by = {k: int(sum(h == k for h in self.how)) for k in ("image_id", "lesion_id", "pixels")}
    return {"images": int(self.num_images), "overlapping": int(found.size),
            "kept": int(self.num_images - found.size), "found_by": by,
            "compared_with": list(SPLITS),
            "examples": [{"image": (str(image_ids[i]) if image_ids is not None else int(i)),
                          "found_by": self.how[i], "is": self.partner[i]}
                         for i in found[:examples]]}


def check(fp: Fingerprint, source: Any, image_ids: Sequence[str] | None = None,
          lesion_ids: Sequence[str] | None = None) -> Overlap:
  """Compares every image of `source` (at the run's stored resolution) with `fp`."""
  n = len(source)
  how = [""] * n
  partner = [""] * n

  def mark(i: int, kind: str, j: int) -> None:
    if not how[i]:
      how[i], partner[i] = kind, f"{fp.splits[j]} id {int(fp.ids[j])}"

  for names, kind, theirs in ((image_ids, "image_id", fp.image_ids),
                              (lesion_ids, "lesion_id", fp.lesion_ids)):
    if names is None:
      continue
    where = {}
    for j, v in enumerate(theirs.tolist()):
      if v:
        where.setdefault(os.path.splitext(v)[0], j)
    for i, v in enumerate(names):
      key = os.path.splitext(os.path.basename(str(v)))[0] if v else ""
      if key and key in where:
        mark(i, kind, where[key])
  _, hashes, thumbs = _hash_source(source)
  ia, ib, _ = audit.close_pairs(hashes, fp.hashes, audit.DEFAULT_TOLERANCE)
  if len(ia):
    corr = audit.thumbnail_correlation(thumbs[ia], fp.thumbs[ib])
    for i, j in zip(ia[corr >= MIN_CORRELATION], ib[corr >= MIN_CORRELATION], strict=True):
      mark(int(i), "pixels", int(j))
  return Overlap(num_images=n, how=tuple(how), partner=tuple(partner))


def refuse_if_mostly(found: Overlap, name: str) -> None:
  """DataError when more than MOSTLY of an outside set is the run's own training or
  validation data."""
  if found.num_images and found.overlapping.sum() > MOSTLY * found.num_images:
    s = found.summary()
    raise DataError(
        f"outside set {name!r}: {s['overlapping']} of its {s['images']} images are this "
        f"run's training or validation images (by image id {s['found_by']['image_id']}, "
        f"lesion id {s['found_by']['lesion_id']}, pixels {s['found_by']['pixels']}): it is "
        "not an outside set. (ISIC 2018 Task 3 training images are HAM10000, DermaMNIST's "
        "own; use the ISIC 2018 test images.)")


class Subset:
  """The images at `positions` of a random-access source (same item dicts)."""

  def __init__(self, source: Any, positions: Sequence[int] | np.ndarray):
    self.source = source
    self.positions = np.asarray(positions, dtype=np.int64)

  def __len__(self) -> int:
    return int(self.positions.shape[0])

  def __getitem__(self, i: int) -> Any:
    return self.source[int(self.positions[i])]

  def __getitems__(self, idx: Sequence[int]) -> list[Any]:
    get_many = getattr(self.source, "__getitems__", None)
    pos = [int(self.positions[i]) for i in idx]
    return get_many(pos) if get_many is not None else [self.source[p] for p in pos]
