"""Unlabelled images for self-supervised pretraining (`config.data.unlabeled`).

`config.data.unlabeled` names folders of images (searched recursively; hidden files and
folders are skipped; .jpg .jpeg .png .bmp .tif .tiff). They are prepared once, next to
the labelled splits, as a TFDS ArrayRecord split named 'unlabeled' of its own builder:

  data_dir/unlabeled_pool/<S>px_<files>_vs_<reference>/1.0.0/

where S is the stored size of the labelled dataset (each image is stored like the labelled
ones: centred square crop resized to S x S, JPEG; `fullres.load_square_jpeg`), <files> is a
hash of the name, size and mtime of every image found, and <reference> a hash of the
labelled dataset's prepared directory and the duplicate thresholds, so other images or
other val/test splits never share a prepared pool.

Before anything is written, every unlabelled image is compared with every val and test
image of the labelled dataset, on the stored images, as the leakage audit compares splits
(derm_jax/data/audit.py): a near-duplicate has a 64-bit perceptual hash within
`audit.DEFAULT_TOLERANCE` bits and a 32x32 thumbnail correlation of at least
`audit.DEFAULT_MIN_CORRELATION`. Those images are dropped (pretraining on a test image
leaks it into every model initialised from that pretraining), counted in `summary()`
('dropped_near_duplicates', and which val/test image each matched) and logged. Other
photographs of a test lesion are not found this way (different shots are 12-38 bits
apart); keep them out of the unlabelled folders if the lesion ids are known.

  pool = unlabeled.prepare(dataset, config.data)   # None when config.data.unlabeled is ()
  pool.source()[i]   # {'image': uint8 (S, S, 3), 'label': -1, 'id': int}
  pool.summary()     # folders, found, used, dropped_near_duplicates, dropped, ...

'id' is the index of the image among all the images found (folders in the configured
order, files sorted by path), so dropped images leave gaps. Works for every registered
dataset (its val and test sources are the reference).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image
from tensorflow_datasets.core import utils as tfds_utils

from derm_jax.data import audit, fullres
from derm_jax.data.errors import DataError
from derm_jax.data.tfds_source import TfdsSource

SPLIT = "unlabeled"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
REFERENCE_SPLITS = ("val", "test")
_BATCH = 256
_SHOWN = 50  # dropped images listed by name in summary()


def configured_folders(data_config: Any) -> tuple[str, ...]:
  """`data_config.unlabeled` as a tuple of folder paths (a single string is one folder)."""
  value = fullres.field(data_config, "unlabeled", ())
  if isinstance(value, (str, os.PathLike)):
    value = (value,)
  try:
    folders = tuple(os.fspath(v) for v in value)
  except TypeError as e:
    raise DataError(f"config.data.unlabeled={value!r}: expected a tuple of folder paths "
                    f"({e}).") from e
  if any(not f.strip() for f in folders):
    raise DataError(f"config.data.unlabeled={value!r}: holds an empty folder path.")
  return folders


def find_images(folders: Sequence[str]) -> list[tuple[str, str]]:
  """(absolute path, '<folder index>/<path in the folder>') of every image under
  `folders`, folders in the given order, files sorted by path; DataError for a folder that
  is missing, not a folder, listed twice or holds no image."""
  out: list[tuple[str, str]] = []
  seen: dict[str, str] = {}
  for index, given in enumerate(folders):
    folder = os.path.abspath(os.path.expanduser(given))
    if not os.path.isdir(folder):
      what = "is not a folder" if os.path.lexists(folder) else "folder not found"
      raise DataError(f"{folder}: {what} (config.data.unlabeled).")
    real = os.path.realpath(folder)
    if real in seen:
      raise DataError(f"{folder}: listed twice in config.data.unlabeled (also as "
                      f"{seen[real]!r}).")
    seen[real] = given
    found = []
    for root, dirs, files in os.walk(folder):
      dirs[:] = sorted(d for d in dirs if not d.startswith("."))
      for name in files:
        if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
          path = os.path.join(root, name)
          rel = os.path.relpath(path, folder).replace(os.sep, "/")
          found.append((path, f"{index}/{rel}"))
    if not found:
      raise DataError(f"{folder}: no {'/'.join(IMAGE_EXTENSIONS)} images in this folder or "
                      "its subfolders (config.data.unlabeled).")
    out += sorted(found, key=lambda x: x[1])
  return out


def _files_fingerprint(files: Sequence[tuple[str, str]]) -> str:
  h = hashlib.sha256()
  for path, rel in files:
    st = os.stat(path)
    h.update(f"{rel} {st.st_size} {st.st_mtime_ns}\n".encode())
  return h.hexdigest()


def _decode(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _hash_images(images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """(hashes, thumbnails) of uint8 images, with the audit's public functions."""
  return audit.phash(images), np.stack([audit.thumbnail(im) for im in images])


def near_duplicates(hashes: np.ndarray, thumbs: np.ndarray, ref_hashes: np.ndarray,
                    ref_thumbs: np.ndarray, tolerance: int = audit.DEFAULT_TOLERANCE,
                    min_correlation: float = audit.DEFAULT_MIN_CORRELATION
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(index, reference index, distance, correlation) of each pair that the audit calls a
  near-duplicate: pHash within `tolerance` bits and thumbnail correlation at least
  `min_correlation`."""
  ia, ib, dist = audit.close_pairs(hashes, ref_hashes, tolerance)
  corr = audit.thumbnail_correlation(thumbs[ia], ref_thumbs[ib]) if len(ia) else np.zeros(0)
  ok = corr >= min_correlation
  return ia[ok], ib[ok], dist[ok], corr[ok]


@dataclasses.dataclass(frozen=True)
class Reference:
  """The stored val and test images of the labelled dataset, hashed."""

  splits: np.ndarray  # str, the split of each image
  ids: np.ndarray  # int64, its 'id'
  hashes: np.ndarray  # uint64 pHash
  thumbs: np.ndarray  # (N, 32, 32, 3) uint8


def reference_of(dataset: Any, splits: Sequence[str] = REFERENCE_SPLITS) -> Reference:
  """Hashes and thumbnails of every image of `splits` of a registry dataset."""
  names, ids, hashes, thumbs = [], [], [], []
  for split in splits:
    source = dataset.source(split)
    get_many = getattr(source, "__getitems__", None)
    for start in range(0, len(source), _BATCH):
      idx = list(range(start, min(len(source), start + _BATCH)))
      items = get_many(idx) if get_many is not None else [source[i] for i in idx]
      h, t = _hash_images([np.asarray(ex["image"]) for ex in items])
      names += [split] * len(items)
      ids += [int(ex["id"]) for ex in items]
      hashes.append(h)
      thumbs.append(t)
  return Reference(
      splits=np.asarray(names, dtype=str), ids=np.asarray(ids, dtype=np.int64),
      hashes=np.concatenate(hashes) if hashes else np.zeros(0, np.uint64),
      thumbs=(np.concatenate(thumbs) if thumbs
              else np.zeros((0, audit.THUMB_SIZE, audit.THUMB_SIZE, 3), np.uint8)))


@dataclasses.dataclass(frozen=True)
class Plan:
  """What to write: the kept images (id, path, image_id) and the summary."""

  keep: tuple[tuple[int, str, str], ...]
  summary: dict[str, Any]


def plan(files: Sequence[tuple[str, str]], folders: Sequence[str], stored_size: int,
         reference: Reference, tolerance: int = audit.DEFAULT_TOLERANCE,
         min_correlation: float = audit.DEFAULT_MIN_CORRELATION) -> Plan:
  """Decodes every unlabelled image at `stored_size` (DataError naming an unreadable one)
  and drops the near-duplicates of `reference` images."""
  keep: list[tuple[int, str, str]] = []
  dropped: list[dict[str, Any]] = []
  for start in range(0, len(files), _BATCH):
    batch = files[start:start + _BATCH]
    images = [_decode(fullres.load_square_jpeg(path, stored_size,
                                               where="config.data.unlabeled"))
              for path, _ in batch]
    h, t = _hash_images(images)
    ia, ib, dist, corr = near_duplicates(h, t, reference.hashes, reference.thumbs, tolerance,
                                         min_correlation)
    best: dict[int, tuple[float, int, int]] = {}
    for i, j, d, c in zip(ia.tolist(), ib.tolist(), dist.tolist(), corr.tolist(), strict=True):
      if i not in best or c > best[i][0]:
        best[i] = (c, j, d)
    for k, (path, _) in enumerate(batch):
      if k in best:
        c, j, d = best[k]
        dropped.append({"image": path, "split": str(reference.splits[j]),
                        "id": int(reference.ids[j]), "distance": int(d),
                        "correlation": round(float(c), 4)})
      else:
        keep.append((start + k, path, path))
  summary = {"folders": [os.path.abspath(os.path.expanduser(f)) for f in folders],
             "found": len(files), "used": len(keep),
             "dropped_near_duplicates": len(dropped), "dropped": dropped[:_SHOWN],
             "checked_against": {s: int((reference.splits == s).sum())
                                 for s in REFERENCE_SPLITS},
             "tolerance_bits": int(tolerance), "min_correlation": float(min_correlation),
             "image_size": int(stored_size)}
  if not keep:
    raise DataError(f"config.data.unlabeled: all {len(files)} images in "
                    f"{summary['folders']} are near-duplicates of val/test images of the "
                    "labelled data; nothing is left for pretraining.")
  return Plan(keep=tuple(keep), summary=summary)


# ----------------------------------------------------------------------------- TFDS builder


@dataclasses.dataclass(eq=False)
class UnlabeledConfig(tfds.core.BuilderConfig):
  """One prepared pool: which images, at which size, checked against which val/test."""

  stored_size: int = 256
  fingerprint: str = ""
  reference: str = ""  # the labelled dataset's prepared directory (relative to data_dir)


class UnlabeledPool(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Unlabelled images as square JPEGs (label -1), one split 'unlabeled'."""

  name = "unlabeled_pool"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
      "1.0.0": "ArrayRecord, square JPEG crops, near-duplicates of val/test left out."}

  _preloaded: Plan | None = None  # set by fullres.prepare_builder

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # As in dermamnist.py: avoids TFDS's lookup that needs `importlib_resources`.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    s = int(self.builder_config.stored_size)
    return self.dataset_info_from_configs(
        description=f"Unlabelled images, centred square crops at {s}x{s} (JPEG).",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(s, s, 3), encoding_format="jpeg"),
            "label": tfds.features.Scalar(dtype=np.int64, doc="Always -1 (no label)."),
            "id": tfds.features.Scalar(dtype=np.int64,
                                       doc="Index among all the images found."),
            "image_id": tfds.features.Text(doc="The file it was read from."),
        }),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    p = self._preloaded
    if p is None:
      raise DataError("the unlabelled pool is prepared by derm_jax.data.unlabeled.prepare.")
    cfg = self.builder_config
    self.info.metadata.update({
        "fingerprint": cfg.fingerprint, "reference": cfg.reference,
        "stored_size": int(cfg.stored_size), "summary": p.summary,
        "num_examples": {SPLIT: len(p.keep)},
        "examples": {SPLIT: {"id": [k[0] for k in p.keep],
                             "image_id": [k[2] for k in p.keep]}},
    })
    return {SPLIT: self._generate_examples(p.keep)}

  def _generate_examples(self, keep: Sequence[tuple[int, str, str]]):
    size = int(self.builder_config.stored_size)
    for i, path, image_id in keep:
      data = fullres.load_square_jpeg(path, size, where="config.data.unlabeled")
      yield i, {"image": data, "label": -1, "id": i, "image_id": image_id}


class Pool:
  """A prepared unlabelled pool: `source()`, `summary()`, `version_dir`."""

  def __init__(self, version_dir: str | os.PathLike):
    self.version_dir = os.fspath(version_dir)
    meta = json.loads((Path(self.version_dir) / "metadata.json").read_text())
    self._summary = {**meta["summary"], "prepared_dir": self.version_dir}

  def source(self) -> TfdsSource:
    """len() and [i] -> {'image': uint8 (S, S, 3), 'label': -1, 'id': int}."""
    return TfdsSource(self.version_dir, SPLIT)

  def summary(self) -> dict[str, Any]:
    """JSON-safe: folders, found, used, dropped_near_duplicates, dropped (first 50: image,
    split and id of the val/test image it matched, distance, correlation), thresholds."""
    return dict(self._summary)


def _reference_name(dataset: Any, data_dir: Path) -> str:
  where = os.path.abspath(os.fspath(getattr(dataset, "version_dir", "") or dataset.meta.name))
  try:
    rel = os.path.relpath(where, os.path.abspath(data_dir))
  except ValueError:
    return where
  return where if rel.startswith("..") else rel.replace(os.sep, "/")


def prepare(dataset: Any, data_config: Any) -> Pool | None:
  """The pool of `data_config.unlabeled` for a prepared registry `dataset` (prepared now if
  needed), or None when no folder is configured."""
  folders = configured_folders(data_config)
  if not folders:
    return None
  files = find_images(folders)
  size = int(dataset.source(REFERENCE_SPLITS[0]).image_size)
  data_dir = fullres.data_dir_of(data_config)
  reference = _reference_name(dataset, data_dir)
  tol, corr = audit.DEFAULT_TOLERANCE, audit.DEFAULT_MIN_CORRELATION
  files_fp = _files_fingerprint(files)
  ref_fp = hashlib.sha256(f"{reference} {tol} {corr}".encode()).hexdigest()
  config = UnlabeledConfig(
      name=f"{size}px_{files_fp[:12]}_vs_{ref_fp[:12]}", stored_size=size,
      fingerprint=hashlib.sha256(f"{files_fp} {ref_fp} {size}".encode()).hexdigest(),
      reference=reference, description=f"Unlabelled images of {list(folders)} at {size}px.")

  def load() -> Plan:
    return plan(files, folders, size, reference_of(dataset), tol, corr)

  builder = fullres.prepare_builder(UnlabeledPool, config, data_dir, load, (SPLIT,))
  pool = Pool(builder.data_dir)
  s = pool.summary()
  log = logging.warning if s["dropped_near_duplicates"] else logging.info
  log("Unlabelled images: %d found in %s; %d dropped as near-duplicates of val/test images; "
      "%d used for pretraining (%s).", s["found"], s["folders"], s["dropped_near_duplicates"],
      s["used"], pool.version_dir)
  return pool


class PretrainingSource:
  """What a self-supervised stage trains on: the labelled training split's images, then the
  unlabelled pool's (label -1). Random access like the sources it joins; never val or
  test. `num_unlabeled` says how many came from the pool."""

  def __init__(self, train: Any, pool: Any):
    self.train, self.pool = train, pool
    self.num_unlabeled = len(pool)

  def __len__(self) -> int:
    return len(self.train) + len(self.pool)

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    n = len(self.train)
    if i < n:
      return self.train[i]
    ex = dict(self.pool[i - n])
    ex["label"] = -1
    return ex

  def __repr__(self) -> str:
    return f"PretrainingSource({self.train!r} + {self.num_unlabeled} unlabelled)"


def pretraining_source(dataset: Any) -> Any:
  """The training split, joined by the dataset's unlabelled pool when it has one."""
  train = dataset.source("train")
  pool = dataset.unlabeled_source() if hasattr(dataset, "unlabeled_source") else None
  if pool is None or len(pool) == 0:
    return train
  logging.info("Pretraining on %d training images and %d unlabelled ones.", len(train),
               len(pool))
  return PretrainingSource(train, pool)
