"""Shared TFDS ArrayRecord builder for full-resolution datasets that users bring (HAM10000,
ISIC 2019, a folder of their own): square JPEGs at a chosen resolution, lesion-grouped
splits, per-image metadata.

A dataset module (`ham10000.py`, `isic2019.py`, `folder.py`) only reads its input layout
into a `Listing` (one `Record` per image: file, label, group, metadata, CSV line, and the
split where the input gives one; the class names where the data define them), raising
`DataError` for anything wrong *before* a byte is written. This module then

* fingerprints the inputs (CSV contents, name/size/mtime of every image file, and what
  else the listing says determines the content, e.g. the class order) and names the
  prepared directory after everything that determines its content:
  ``data_dir/<dataset>/<stored_size>px_seed<s>_val<v>_test<t>_<fingerprint>/<version>``
  (``<stored_size>px_given_<fingerprint>`` when the input fixes the splits), so different
  folders or settings never share prepared records;
* splits with `splits.grouped_stratified_split` (whole lesions per split, per-class
  fractions, seeded), or takes the splits the input gives;
* stores each image as a centred square crop resized to `stored_size` (bilinear, as
  `isic.resize_like_dermamnist`), JPEG quality 95, with label, id (row index in the
  dataset's CSV) and the metadata, and also keeps labels and metadata per split in the
  TFDS metadata (so `labels()` and `metadata()` never decode an image);
* writes with TFDS into a temporary directory that is renamed when complete (a corrupt
  image aborts the preparation and leaves nothing behind) and verifies the result
  (`prepare_builder`, also used for the unlabelled pool of derm_jax/data/unlabeled.py).

`config.data.unlabeled` images are prepared next to the labelled splits by
derm_jax/data/unlabeled.py (`FullResDataset.unlabeled_source()`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tensorflow_datasets.core import utils as tfds_utils

from derm_jax.data import splits as splits_lib
from derm_jax.data.dermamnist import file_digest
from derm_jax.data.errors import DataError
from derm_jax.data.isic import read_csv_rows, resize_like_dermamnist
from derm_jax.data.tfds_source import TfdsSource, resolve_split

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
# String metadata fields kept per example ('' when unknown) and the float ones (NaN).
TEXT_FIELDS = ("image_id", "lesion_id", "dx_type", "sex", "localization")
FLOAT_FIELDS = ("age",)
METADATA_FIELDS = TEXT_FIELDS + FLOAT_FIELDS
JPEG_QUALITY = 95
_DEFAULT_DATA_DIR = "~/tensorflow_datasets"


@dataclasses.dataclass(frozen=True)
class Record:
  """One image of a dataset listing."""

  id: int  # row index among the dataset's CSV data rows (stable across seeds/sizes)
  path: str  # image file
  label: int
  group: str  # images with one group key always share a split (lesion id)
  csv_path: str
  line: int  # CSV line of the row (header = line 1)
  metadata: dict[str, Any]  # TEXT_FIELDS -> str, 'age' -> float (NaN when unknown)
  split: str = ""  # the split the input gives ('train', 'val', 'test'); '' = seeded split


@dataclasses.dataclass(frozen=True)
class Listing:
  """A validated download: its records and what was skipped."""

  manual_dir: str
  records: tuple[Record, ...]
  input_files: tuple[str, ...]  # CSVs hashed by content for the fingerprint
  image_dirs: tuple[str, ...]  # folders whose file names/sizes/mtimes are fingerprinted
  summary: dict[str, Any]  # JSON-safe: rows read, skipped by reason, ...
  class_names: tuple[str, ...] = ()  # the label order when the data define it (folder)
  given_splits: bool = False  # every record's `split` is set by the input
  files: tuple[str, ...] = ()  # image files fingerprinted one by one (path, size, mtime)
  extra: str = ""  # anything else that determines the content (fingerprinted as text)

  @property
  def labels(self) -> np.ndarray:
    return np.array([r.label for r in self.records], dtype=np.int64)


# ----------------------------------------------------------------------------- inputs


def read_csv(path: str, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
  """(line, {column: stripped value}) of each data row of a CSV with a header.

  Raises DataError naming the file (and line) for a missing or unreadable file, missing
  required columns, a row with the wrong number of fields, or no data rows.
  """
  rows = read_csv_rows(path)
  if not rows:
    raise DataError(f"{path}: empty file (no header).")
  header = [c.strip() for c in rows[0][1]]
  missing = [c for c in required if c not in header]
  if missing:
    raise DataError(f"{path}: line {rows[0][0]}: missing column(s) {missing}; header is "
                    f"{header}, expected columns {list(required)}.")
  out = []
  for line, row in rows[1:]:
    if len(row) != len(header):
      raise DataError(f"{path}: line {line} has {len(row)} fields, the header has "
                      f"{len(header)}.")
    out.append((line, {c: v.strip() for c, v in zip(header, row, strict=True)}))
  if not out:
    raise DataError(f"{path}: header only, no rows.")
  return out


def parse_age(path: str, line: int, text: str) -> float:
  """Age in years from a CSV cell; '' (or 'nan', 'unknown') -> NaN; else DataError."""
  if text.lower() in ("", "nan", "unknown", "na"):
    return float("nan")
  try:
    age = float(text)
  except ValueError:
    age = -1.0
  if not 0 <= age < 150:
    raise DataError(f"{path}: line {line}: age {text!r} is not a number of years.")
  return age


# ----------------------------------------------------------------------------- images


def load_square_jpeg(path: str, stored_size: int, *, where: str = "") -> bytes:
  """JPEG bytes of the centred square crop of `path`, resized to stored_size x stored_size.

  Raises DataError naming the file (and `where`, e.g. 'CSV x line n') if it cannot be
  decoded completely.
  """
  try:
    with Image.open(path) as im:
      w, h = im.size
      s = min(w, h)
      if s < 1:
        raise ValueError(f"image has size {w}x{h}")
      # Let the JPEG decoder downscale by a power of two while the square stays >= stored.
      scale = stored_size / s
      im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
      image = resize_like_dermamnist(im, stored_size, "center")
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    suffix = f" ({where})" if where else ""
    raise DataError(f"{path}: unreadable or corrupt image{suffix}: {e}") from e
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
  return buf.getvalue()


def find_images(folders: Sequence[str], extensions: Sequence[str] = (".jpg", ".jpeg", ".png")
                ) -> dict[str, str]:
  """Image stem -> path over `folders` (missing folders are ignored; first folder wins)."""
  found: dict[str, str] = {}
  for folder in folders:
    if not os.path.isdir(folder):
      continue
    for name in sorted(os.listdir(folder)):
      stem, ext = os.path.splitext(name)
      if ext.lower() in extensions and stem not in found:
        found[stem] = os.path.join(folder, name)
  return found


def fingerprint(listing: Listing) -> str:
  """sha256 hex of the CSV contents, the name, size and mtime of every image file (of
  `image_dirs`, and each of `files` by its path relative to `manual_dir`), and `extra`."""
  h = hashlib.sha256()
  for path in listing.input_files:
    h.update(f"{os.path.basename(path)}={file_digest(path)}\n".encode())
  for folder in listing.image_dirs:
    h.update(f"dir {os.path.basename(folder)}\n".encode())
    with os.scandir(folder) as it:
      entries = sorted((e.name, e.stat()) for e in it if e.is_file())
    for name, st in entries:
      h.update(f"{name} {st.st_size} {st.st_mtime_ns}\n".encode())
  for path in listing.files:
    st = os.stat(path)
    rel = os.path.relpath(path, listing.manual_dir).replace(os.sep, "/")
    h.update(f"file {rel} {st.st_size} {st.st_mtime_ns}\n".encode())
  if listing.extra:
    h.update(f"extra {listing.extra}\n".encode())
  return h.hexdigest()


# ----------------------------------------------------------------------------- TFDS builder


@dataclasses.dataclass(eq=False)
class FullResConfig(tfds.core.BuilderConfig):
  """One prepared variant: which folder, which stored size, which split."""

  manual_dir: str = ""
  stored_size: int = 256
  split_seed: int = 0
  val_fraction: float = 0.1
  test_fraction: float = 0.2
  fingerprint: str = ""
  class_names: tuple[str, ...] = ()  # the label order ('' = the builder's CLASS_NAMES)
  given_splits: bool = False  # the splits come from the input (seed and fractions unused)


def _fraction_tag(x: float) -> str:
  return f"{x:g}".replace(".", "p").replace("-", "m")


def config_name(stored_size: int, seed: int, val: float, test: float, fp: str,
                given_splits: bool = False) -> str:
  if given_splits:
    return f"{int(stored_size)}px_given_{fp[:12]}"
  return (f"{int(stored_size)}px_seed{int(seed)}_val{_fraction_tag(val)}"
          f"_test{_fraction_tag(test)}_{fp[:12]}")


class FullResBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base builder; subclasses set name, CLASS_NAMES, DESCRIPTION, HOMEPAGE, CITATION and
  `read_listing` (or override `list_inputs`, where the data define the classes)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
      "1.0.0": "ArrayRecord, square JPEG crops, lesion-grouped stratified splits."}
  CLASS_NAMES: ClassVar[tuple[str, ...]] = ()
  DESCRIPTION: ClassVar[str] = ""
  HOMEPAGE: ClassVar[str] = ""
  CITATION: ClassVar[str] = ""
  read_listing: ClassVar[Callable[[str], Listing]]
  # The data-config field naming the input folder, and what it should hold (for messages).
  ROOT_FIELD: ClassVar[str] = "manual_dir"
  ROOT_HELP: ClassVar[str] = "the folder holding the official download"

  @classmethod
  def list_inputs(cls, root: str, class_names: Sequence[str] = ()) -> Listing:
    """The validated listing of `root`; `class_names` (config.data.classes) only where the
    data define the classes (folder), else it must be empty."""
    if class_names:
      raise DataError(f"config.data.classes={tuple(class_names)!r} is set, but "
                      f"config.data.name='{cls.name}' has fixed classes "
                      f"{list(cls.CLASS_NAMES)}; leave config.data.classes empty.")
    return cls.read_listing(root)

  @classmethod
  def check_before_writing(cls, listing: Listing) -> None:
    """Checks that are too slow for every start, run only before records are written."""
    del listing

  @property
  def label_names(self) -> tuple[str, ...]:
    """The class names in label order (the builder config's, else CLASS_NAMES)."""
    return tuple(self.builder_config.class_names) or tuple(self.CLASS_NAMES)

  # Set by `prepare` to skip re-reading a listing it has just validated.
  _preloaded: Listing | None = None

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # As in dermamnist.py: avoids TFDS's lookup that needs `importlib_resources`.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    s = int(self.builder_config.stored_size)
    return self.dataset_info_from_configs(
        description=f"{self.DESCRIPTION} Centred square crops at {s}x{s} (JPEG).",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(s, s, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=self.label_names),
            "id": tfds.features.Scalar(dtype=np.int64,
                                       doc="Row index of the image in the dataset's CSV."),
            "image_id": tfds.features.Text(),
            "lesion_id": tfds.features.Text(),
            "dx_type": tfds.features.Text(),
            "sex": tfds.features.Text(),
            "localization": tfds.features.Text(),
            "age": tfds.features.Scalar(dtype=np.float32, doc="Years; NaN when unknown."),
        }),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    cfg = self.builder_config
    pre = self._preloaded
    listing = pre if pre is not None else type(self).list_inputs(cfg.manual_dir,
                                                                 cfg.class_names)
    parts = assign_splits(listing, cfg.split_seed, cfg.val_fraction, cfg.test_fraction)
    per_split: dict[str, Any] = {}
    for split, recs in parts.items():
      per_split[split] = {
          "id": [r.id for r in recs], "label": [r.label for r in recs],
          **{f: [r.metadata[f] for r in recs] for f in TEXT_FIELDS},
          # JSON has no NaN: unknown ages are stored as -1 here.
          "age": [-1.0 if math.isnan(r.metadata["age"]) else float(r.metadata["age"])
                  for r in recs]}
    self.info.metadata.update({
        "manual_dir": os.path.abspath(cfg.manual_dir),
        "fingerprint": cfg.fingerprint,
        "stored_size": int(cfg.stored_size),
        "split_seed": int(cfg.split_seed),
        "val_fraction": float(cfg.val_fraction),
        "test_fraction": float(cfg.test_fraction),
        "class_names": list(self.label_names),
        "given_splits": bool(listing.given_splits),
        "listing": listing.summary,
        "num_examples": {s: len(r) for s, r in parts.items()},
        "examples": per_split,
    })
    return {split: self._generate_examples(recs) for split, recs in parts.items()}

  def _generate_examples(self, records: Sequence[Record]):
    size = int(self.builder_config.stored_size)
    for r in records:
      data = load_square_jpeg(r.path, size, where=f"{r.csv_path} line {r.line}")
      yield r.id, {"image": data, "label": r.label, "id": r.id,
                   **{f: r.metadata[f] for f in TEXT_FIELDS},
                   "age": np.float32(r.metadata["age"])}


def assign_splits(listing: Listing, seed: int, val_fraction: float,
                  test_fraction: float) -> dict[str, list[Record]]:
  """The records of each split (ascending id): the input's own splits when it gives them
  (`listing.given_splits`), else lesion-grouped and class-stratified."""
  recs = listing.records
  if listing.given_splits:
    out = {s: [r for r in recs if r.split == s] for s in SPLITS}
    empty = [s for s, r in out.items() if not r]
    if empty:
      raise DataError(f"{listing.manual_dir}: the given splits leave {empty} without images; "
                      "every one of train, val and test needs some.")
  else:
    assignment = splits_lib.grouped_stratified_split(
        [r.label for r in recs], [r.group for r in recs], val_fraction, test_fraction, seed)
    out = {s: [recs[i] for i in idx]
           for s, idx in splits_lib.split_indices(assignment).items()}
    empty = [s for s, r in out.items() if not r]
    if empty:
      raise DataError(f"{listing.manual_dir}: split(s) {empty} would be empty with "
                      f"val_fraction={val_fraction}, test_fraction={test_fraction} over "
                      f"{len(recs)} images; use larger fractions or more images.")
  for s in out:
    out[s].sort(key=lambda r: r.id)
  return out


# ----------------------------------------------------------------------------- preparing


def field(data_config: Any, name: str, default: Any) -> Any:
  """`data_config.name`, or `default` when the config (or the field) is missing or None."""
  value = getattr(data_config, name, default) if data_config is not None else default
  return default if value is None else value


def data_dir_of(data_config: Any) -> Path:
  d = field(data_config, "data_dir", None) or _DEFAULT_DATA_DIR
  return Path(os.path.expanduser(os.fspath(d)))


def _shards_present(version_dir: Path, name: str, splits: Sequence[str]) -> bool:
  try:
    info = json.loads((version_dir / "dataset_info.json").read_text())
    shards = {split["name"]: len(split.get("shardLengths", [])) for split in info["splits"]}
  except (OSError, ValueError, KeyError, TypeError):
    return False
  for split in splits:
    files = list(version_dir.glob(f"{name}-{split}.array_record-*"))
    if not shards.get(split) or len(files) != shards[split]:
      return False
  return True


def _verify(builder: tfds.core.DatasetBuilder, version_dir: Path, splits: Sequence[str]) -> None:
  meta = json.loads((version_dir / "metadata.json").read_text())
  expected = meta.get("num_examples", {})
  for split in splits:
    got = builder.info.splits[split].num_examples if split in builder.info.splits else -1
    if got != expected.get(split) or len(meta["examples"][split]["id"]) != got:
      raise DataError(f"{version_dir}: prepared split '{split}' has {got} examples, "
                      f"expected {expected.get(split)}.")


def _remove_tree(path: Path) -> None:
  if path.is_dir():
    shutil.rmtree(path, ignore_errors=True)


def _remove_empty_dirs(path: Path, stop: Path) -> None:
  """Removes `path` and its parents up to (not including) `stop` while they are empty."""
  path, stop = path.resolve(), stop.resolve()
  while path != stop and stop in path.parents:
    try:
      path.rmdir()
    except OSError:
      return
    path = path.parent


def resolve(builder_cls: type[FullResBuilder], data_config: Any) -> tuple[FullResConfig, Listing]:
  """Reads and validates the input folder (`data_config.<builder_cls.ROOT_FIELD>`); the
  builder config for it."""
  key = builder_cls.ROOT_FIELD
  root = os.fspath(field(data_config, key, ""))
  if not root:
    raise DataError(f"data_config.{key} is empty; config.data.name='{builder_cls.name}' "
                    f"needs {builder_cls.ROOT_HELP}.")
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    what = "is not a folder" if os.path.lexists(root) else "folder not found"
    raise DataError(f"{root}: {what} (data_config.{key}).")
  stored_size = int(field(data_config, "stored_size", 256))
  if stored_size < 8:
    raise DataError(f"data_config.stored_size={stored_size}: must be at least 8.")
  seed = int(field(data_config, "split_seed", 0))
  val = float(field(data_config, "val_fraction", 0.1))
  test = float(field(data_config, "test_fraction", 0.2))
  if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
    raise DataError(f"data_config.val_fraction={val}, test_fraction={test}: each must be in "
                    "(0, 1) and their sum below 1.")
  classes = field(data_config, "classes", ())
  classes = (classes,) if isinstance(classes, str) else tuple(classes)
  listing = builder_cls.list_inputs(root, classes)
  fp = fingerprint(listing)
  config = FullResConfig(
      name=config_name(stored_size, seed, val, test, fp, listing.given_splits),
      manual_dir=root, stored_size=stored_size, split_seed=seed, val_fraction=val,
      test_fraction=test, fingerprint=fp,
      class_names=tuple(listing.class_names or builder_cls.CLASS_NAMES),
      given_splits=bool(listing.given_splits),
      description=f"{builder_cls.name} from {root} at {stored_size}px.")
  return config, listing


def _prepared_ok(version_dir: Path, name: str, fp: str, splits: Sequence[str]) -> bool:
  if not version_dir.is_dir() or not _shards_present(version_dir, name, splits):
    return False
  try:
    meta = json.loads((version_dir / "metadata.json").read_text())
  except (OSError, ValueError):
    return False
  return meta.get("fingerprint") == fp


def prepare_builder(builder_cls: type[tfds.core.GeneratorBasedBuilder],
                    config: tfds.core.BuilderConfig, data_dir: Path,
                    load: Callable[[], Any], splits: Sequence[str] = SPLITS
                    ) -> tfds.core.GeneratorBasedBuilder:
  """The builder of `config` in `data_dir`, prepared as ArrayRecords if it is not yet.

  `config` has `name` (the directory) and `fingerprint` (stored as metadata.json's
  'fingerprint', which must also hold 'num_examples' and 'examples'[split]['id'] for each
  of `splits`). `load()` is called only when the records must be written; its result is
  given to the builder as `_preloaded` (what `_split_generators` reads). A directory that is
  incomplete, stale or fails verification is removed and rebuilt; a failure while writing
  (a corrupt image) leaves nothing behind, empty directories made on the way included.
  """
  name = builder_cls.name
  version_dir = data_dir / name / config.name / str(builder_cls.VERSION)
  if _prepared_ok(version_dir, name, config.fingerprint, splits):
    builder = builder_cls(data_dir=os.fspath(data_dir), config=config)
    try:
      _verify(builder, version_dir, splits)
      return builder
    except (DataError, OSError, ValueError, KeyError):
      _remove_tree(version_dir)  # inconsistent: rebuild below
  elif version_dir.exists():
    _remove_tree(version_dir)
  downloads = data_dir / "downloads"
  had_downloads = downloads.exists()
  had_data_dir = data_dir.exists()
  builder = builder_cls(data_dir=os.fspath(data_dir), config=config)
  try:
    builder._preloaded = load()
    builder.download_and_prepare(
        file_format="array_record",
        download_dir=os.fspath(downloads),
        download_config=tfds.download.DownloadConfig(
            try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP),
    )
    if not _shards_present(version_dir, name, splits):
      raise DataError(f"{version_dir}: ArrayRecord files missing after preparation.")
    _verify(builder, version_dir, splits)
  except Exception:
    if _prepared_ok(version_dir, name, config.fingerprint, splits):
      # A concurrent preparation of the same data renamed its directory first.
      builder = builder_cls(data_dir=os.fspath(data_dir), config=config)
    else:
      _remove_tree(version_dir)
      _remove_empty_dirs(version_dir.parent, data_dir)
      if not had_downloads:
        _remove_empty_dirs(downloads / "extracted", data_dir)
      if not had_data_dir:
        _remove_empty_dirs(data_dir, data_dir.parent)
      raise
  finally:
    builder._preloaded = None
  return builder


def prepare(builder_cls: type[FullResBuilder], data_config: Any) -> FullResBuilder:
  """Prepares (if needed) and returns the builder for `data_config`.

  The input is validated completely (CSV rows, image files present; `check_before_writing`
  too when records must be written) before anything is written; a corrupt image found
  while writing aborts the preparation, and TFDS removes its temporary directory. Empty
  directories made on the way are removed too.
  """
  config, listing = resolve(builder_cls, data_config)

  def load() -> Listing:
    builder_cls.check_before_writing(listing)
    return listing

  return prepare_builder(builder_cls, config, data_dir_of(data_config), load)


# ----------------------------------------------------------------------------- reading


def split_name(split: str) -> str:
  return resolve_split(split, SPLIT_ALIASES)


class FullResDataset:
  """Registry dataset over a FullResBuilder subclass (`builder_cls` set by subclasses)."""

  builder_cls: ClassVar[type[FullResBuilder]]

  def __init__(self, data_config: Any):
    from derm_jax.data import unlabeled
    from derm_jax.data.registry import DatasetMeta
    self._config = data_config
    self._builder = prepare(self.builder_cls, data_config)
    self._version_dir = Path(self._builder.data_dir)
    self._meta_json: dict[str, Any] | None = None
    self.meta = DatasetMeta(name=self.builder_cls.name,
                            class_names=tuple(self._builder.label_names))
    # config.data.unlabeled, prepared (and checked against val/test) now, so a problem
    # with it shows before anything trains.
    self._unlabeled = unlabeled.prepare(self, data_config)

  @property
  def version_dir(self) -> str:
    """The prepared directory (ArrayRecords, dataset_info.json, metadata.json)."""
    return os.fspath(self._version_dir)

  def _stored(self) -> dict[str, Any]:
    if self._meta_json is None:
      self._meta_json = json.loads((self._version_dir / "metadata.json").read_text())
    return self._meta_json

  def source(self, split: str) -> TfdsSource:
    """Random-access split (metadata is not in the items, so batches stay numeric: use
    `metadata(split)`)."""
    return TfdsSource(self._version_dir, split_name(split))

  def labels(self, split: str) -> np.ndarray:
    return np.asarray(self._stored()["examples"][split_name(split)]["label"], dtype=np.int64)

  def ids(self, split: str) -> np.ndarray:
    """The 'id' of each example of `split` (index i = source(split)[i]['id'])."""
    return np.asarray(self._stored()["examples"][split_name(split)]["id"], dtype=np.int64)

  def metadata(self, split: str) -> dict[str, np.ndarray]:
    """Per-example metadata of `split`, index i = source(split)[i].

    Keys: 'id' (int64), 'image_id', 'lesion_id', 'dx_type', 'sex', 'localization' (str
    arrays, '' when unknown) and 'age' (float32 years, NaN when unknown).
    """
    ex = self._stored()["examples"][split_name(split)]
    out: dict[str, np.ndarray] = {"id": np.asarray(ex["id"], dtype=np.int64)}
    for f in TEXT_FIELDS:
      out[f] = np.asarray(ex[f], dtype=str) if ex[f] else np.zeros((0,), dtype=str)
    age = np.asarray(ex["age"], dtype=np.float32)
    out["age"] = np.where(age < 0, np.float32(np.nan), age)
    return out

  def unlabeled_source(self) -> TfdsSource | None:
    """The `config.data.unlabeled` images (label -1, near-duplicates of val/test images
    left out; derm_jax/data/unlabeled.py), or None when none are configured."""
    return None if self._unlabeled is None else self._unlabeled.source()

  def describe(self) -> dict[str, Any]:
    stored = self._stored()
    splits = {s: int(stored["num_examples"][s]) for s in SPLITS}
    per_class = {s: np.bincount(self.labels(s), minlength=self.meta.num_classes).tolist()
                 for s in SPLITS}
    out = {"name": self.meta.name, "source": self.builder_cls.ROOT_FIELD,
           self.builder_cls.ROOT_FIELD: stored["manual_dir"], "splits": splits,
           "image_size": int(stored["stored_size"]), "class_names": list(self.meta.class_names),
           "per_class": per_class, "split_seed": stored["split_seed"],
           "val_fraction": stored["val_fraction"], "test_fraction": stored["test_fraction"],
           "lesion_grouped": True, "listing": stored["listing"],
           "prepared_dir": self.version_dir}
    if self._unlabeled is not None:
      out["unlabeled"] = self._unlabeled.summary()
    return out
