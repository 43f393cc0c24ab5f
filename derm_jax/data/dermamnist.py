"""DermaMNIST as a TFDS ArrayRecord dataset, read back as random-access sources for Grain.

Three sources, selected by `data_config.source`:

* ``'embedded'`` (default): the stratified real subset packaged with derm_jax
  (`embedded/dermamnist_mini.npz`, see `embedded/ATTRIBUTION.md`), 28x28.
* ``'npz'``: a local file in the official MedMNIST npz layout (`data_config.npz_path`;
  `{train,val,test}_images` (N, S, S, 3) uint8 and `{split}_labels` (N, 1) integers in
  0..6), any square size S (MedMNIST publishes 28, 64, 128 and 224).
* ``'download'``: the official MedMNIST file for `data_config.size` (28/64/128/224) from
  Zenodo (one attempt; `DOWNLOAD_TIMEOUT_S` without an answer ends it with a DataError
  that names the npz alternative), verified against the MD5 published in `medmnist`.

Two splits, selected by `data_config.split`:

* ``'official'`` (default): MedMNIST's split, random per image, so a third of the test
  images have a lesion with an image in train (kept so MedMNIST comparisons hold);
* ``'lesion'``: all images re-split by HAM10000 lesion (no lesion in two splits),
  class-stratified, seeded by `data_config.split_seed`, with the file's own split sizes
  (`dermamnist_lesions.lesion_split`). Needs a file the lesion table knows.

Every image of a file the lesion table knows carries its HAM10000 identity and metadata
(`Dataset.metadata(split)`: image_id, lesion_id, dx_type, age, sex, localization; see
dermamnist_lesions.py): the audit measures lesion overlap with it, MICLe pairs images of
one lesion, and test metrics come per seen/unseen lesion and per subgroup.

Each source is prepared once into `data_dir/dermamnist/<config>/<version>/` as ArrayRecord
files with TFDS (no TensorFlow needed). The config name encodes the source (`embedded`,
`npz_<first 12 hex digits of the file's sha256>`, `download_<size>`; `_lesion<seed>` for
the lesion split), so two different files never share prepared records. Records are
written unshuffled: in the official split, index i of a split is image i of that split in
the source file (its 'id'); in the lesion split an image's 'id' is its position in the
file's train, val and test images taken in that order (`global_id`). Every npz is validated before any
record is written; TFDS writes into a temporary directory and renames it when complete,
and a prepared directory that fails verification is removed so the next call starts clean.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tensorflow_datasets.core import utils as tfds_utils

from derm_jax.data.errors import DataError
from derm_jax.data.registry import HAM10000_CLASSES
from derm_jax.data.tfds_source import TfdsSource, resolve_split

CLASS_NAMES = HAM10000_CLASSES  # the MedMNIST label order
NUM_CLASSES = len(CLASS_NAMES)
SOURCES = ("embedded", "npz", "download")
SPLIT_KINDS = ("official", "lesion")
TFDS_SPLITS = ("train", "validation", "test")
# TFDS split name -> key prefix in the MedMNIST npz.
NPZ_PREFIX = {"train": "train", "validation": "val", "test": "test"}
SPLIT_ALIASES = {"train": "train", "val": "validation", "validation": "validation",
                 "test": "test"}

EMBEDDED_NPZ = Path(__file__).resolve().parent / "embedded" / "dermamnist_mini.npz"

# Official MedMNIST v2/v3 files (URL, MD5), from `medmnist.info.INFO['dermamnist']`
# of medmnist 3.0.2.
DOWNLOADS: dict[int, tuple[str, str]] = {
    28: ("https://zenodo.org/records/10519652/files/dermamnist.npz?download=1",
         "0744692d530f8e62ec473284d019b0c7"),
    64: ("https://zenodo.org/records/10519652/files/dermamnist_64.npz?download=1",
         "b70a2f5635c6199aeaa28c31d7202e1f"),
    128: ("https://zenodo.org/records/10519652/files/dermamnist_128.npz?download=1",
          "2defd784463fa5243564e855ed717de1"),
    224: ("https://zenodo.org/records/10519652/files/dermamnist_224.npz?download=1",
          "8974907d8e169bef5f5b96bc506ae45d"),
}

_LABELS_CACHE = "derm_jax_labels-{split}.npy"
_DEFAULT_DATA_DIR = "~/tensorflow_datasets"

_CITATION = """\
@article{medmnistv2,
  title={MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image
         classification},
  author={Yang, Jiancheng and Shi, Rui and Wei, Donglai and Liu, Zequan and Zhao, Lin and
          Ke, Bilian and Pfister, Hanspeter and Ni, Bingbing},
  journal={Scientific Data}, volume={10}, number={1}, pages={41}, year={2023}}
@article{tschandl2018ham10000,
  title={The HAM10000 dataset, a large collection of multi-source dermatoscopic images of
         common pigmented skin lesions},
  author={Tschandl, Philipp and Rosendahl, Cliff and Kittler, Harald},
  journal={Scientific Data}, volume={5}, pages={180161}, year={2018}}
"""


# ----------------------------------------------------------------------------- npz files


@dataclasses.dataclass(frozen=True)
class NpzContents:
  """A validated MedMNIST npz: per TFDS split, uint8 images (N,S,S,3) and int64 labels (N,)."""

  path: str
  image_size: int
  images: dict[str, np.ndarray]
  labels: dict[str, np.ndarray]

  def counts(self) -> dict[str, int]:
    return {s: len(self.labels[s]) for s in TFDS_SPLITS}


def load_npz(path: str | os.PathLike) -> NpzContents:
  """Reads and validates a DermaMNIST npz in the official MedMNIST layout.

  Raises DataError naming the file and the problem: missing file, not an npz (zip)
  archive, missing keys, wrong dtype or shape, labels out of 0..6, or images and labels of
  different lengths.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DataError(f"{path}: file not found (expected a MedMNIST DermaMNIST .npz).")
  if not zipfile.is_zipfile(path):
    raise DataError(f"{path}: not an .npz archive (not a zip file); expected the MedMNIST "
                    "npz layout with train/val/test _images and _labels.")
  try:
    npz = np.load(path, allow_pickle=False)
  except Exception as e:  # any failure to open means a bad file
    raise DataError(f"{path}: cannot be read as an .npz archive ({e}).") from e
  with npz:
    required = [f"{p}_{kind}" for p in NPZ_PREFIX.values() for kind in ("images", "labels")]
    missing = [k for k in required if k not in npz.files]
    if missing:
      raise DataError(f"{path}: missing key(s) {missing}; found {sorted(npz.files)}. "
                      f"Expected the MedMNIST layout with keys {required}.")
    images: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    size = None
    for split, prefix in NPZ_PREFIX.items():
      try:
        x = npz[f"{prefix}_images"]
        y = npz[f"{prefix}_labels"]
      except Exception as e:  # corrupt member, pickled object array, ...
        raise DataError(f"{path}: cannot read '{prefix}_images'/'{prefix}_labels' ({e}).") from e
      if x.dtype != np.uint8:
        raise DataError(f"{path}: '{prefix}_images' has dtype {x.dtype}, expected uint8.")
      if x.ndim != 4 or x.shape[3] != 3 or x.shape[1] != x.shape[2] or x.shape[1] < 1:
        raise DataError(f"{path}: '{prefix}_images' has shape {x.shape}, expected "
                        "(N, S, S, 3) RGB images.")
      if size is None:
        size = int(x.shape[1])
      elif x.shape[1] != size:
        raise DataError(f"{path}: '{prefix}_images' are {x.shape[1]}x{x.shape[2]} but other "
                        f"splits are {size}x{size}; all splits must have one size.")
      if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: '{prefix}_labels' has dtype {y.dtype}, expected integers.")
      if not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
        raise DataError(f"{path}: '{prefix}_labels' has shape {y.shape}, expected (N, 1).")
      y = y.reshape(-1).astype(np.int64)
      if len(y) != len(x):
        raise DataError(f"{path}: '{prefix}_images' has {len(x)} images but "
                        f"'{prefix}_labels' has {len(y)} labels.")
      if len(y) == 0:
        raise DataError(f"{path}: split '{prefix}' is empty.")
      bad = np.flatnonzero((y < 0) | (y >= NUM_CLASSES))
      if bad.size:
        raise DataError(f"{path}: '{prefix}_labels' has {bad.size} label(s) outside "
                        f"0..{NUM_CLASSES - 1}, first at index {bad[0]} (value {y[bad[0]]}).")
      images[split], labels[split] = x, y
  return NpzContents(path=path, image_size=int(size), images=images, labels=labels)


@functools.lru_cache(maxsize=64)
def _hash_file_cached(path: str, size: int, mtime_ns: int, algo: str) -> str:
  del size, mtime_ns  # part of the cache key only
  h = hashlib.new(algo)
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def file_digest(path: str | os.PathLike, algo: str = "sha256") -> str:
  """Hex digest of a file (memoised per path, size and modification time)."""
  p = os.path.realpath(os.fspath(path))
  st = os.stat(p)
  return _hash_file_cached(p, st.st_size, st.st_mtime_ns, algo)


# ----------------------------------------------------------------------------- TFDS builder


# Seconds without any answer (connecting, or between two reads) before a download gives up.
DOWNLOAD_TIMEOUT_S = 15.0


def download(url: str, dest_dir: str, timeout: float | None = None) -> str:
  """Downloads `url` into `dest_dir` (one attempt; a complete earlier download is reused).

  The file is written under a temporary name and renamed when complete. Any network
  failure (no connection, refused, `timeout` seconds without data, HTTP error) raises one
  DataError that says how to use a local copy instead. `timeout`: default
  DOWNLOAD_TIMEOUT_S."""
  timeout = DOWNLOAD_TIMEOUT_S if timeout is None else timeout
  name = os.path.basename(urllib.parse.urlparse(url).path) or "download"
  dest = os.path.join(dest_dir, name)
  if os.path.isfile(dest):
    return dest
  os.makedirs(dest_dir, exist_ok=True)
  tmp = f"{dest}.tmp-{os.getpid()}"
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
      shutil.copyfileobj(response, f, 1 << 20)
    os.replace(tmp, dest)
  except (urllib.error.URLError, OSError, ValueError) as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", None) or e
    if isinstance(reason, socket.timeout | TimeoutError):
      reason = f"no answer within {timeout:g} s"
    raise DataError(
        f"cannot download {url} ({reason}). Without network access, download "
        f"{name} on another machine and run with --config.data.source=npz "
        "--config.data.npz_path=/path/to/that/file (or keep the default "
        "--config.data.source=embedded subset).") from None
  return dest


@dataclasses.dataclass(eq=False)
class DermaMNISTConfig(tfds.core.BuilderConfig):
  """A prepared variant of DermaMNIST: which source, which file, which image size."""

  source: str = "embedded"
  npz_path: str = ""
  image_size: int = 28
  split: str = "official"  # or 'lesion': re-split by lesion (dermamnist_lesions.lesion_split)
  split_seed: int = 0


def _embedded_config() -> DermaMNISTConfig:
  return DermaMNISTConfig(name="embedded", source="embedded", npz_path=str(EMBEDDED_NPZ),
                          image_size=28,
                          description="Stratified real subset packaged with derm_jax.")


def _download_config(size: int) -> DermaMNISTConfig:
  return DermaMNISTConfig(name=f"download_{size}", source="download", image_size=size,
                          description=f"Official MedMNIST DermaMNIST at {size}x{size}.")


class DermaMNIST(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """DermaMNIST (MedMNIST v2, from HAM10000): 7-class dermoscopy images, train/val/test."""

  name = "dermamnist"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
      "1.0.0": "ArrayRecord, unshuffled, 'id' = index in the source split."}
  BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = (
      [_embedded_config()] + [_download_config(s) for s in DOWNLOADS])
  DEFAULT_CONFIG_NAME = "embedded"

  # Set by `prepare` to skip re-reading an npz it has just validated.
  _preloaded: NpzContents | None = None

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10's own lookup needs the `importlib_resources` backport on Python >= 3.9
    # (tensorflow/datasets#11212); this file's path is what it would find.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    s = int(self.builder_config.image_size)
    return self.dataset_info_from_configs(
        description="DermaMNIST: HAM10000 dermoscopy images resized to "
        f"{s}x{s}, 7 classes in MedMNIST order {', '.join(CLASS_NAMES)}.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            "id": tfds.features.Scalar(dtype=np.int64,
                                       doc="Index of the image in its source split."),
        }),
        supervised_keys=("image", "label"),
        homepage="https://medmnist.com/",
        citation=_CITATION,
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def _source_file(self, dl_manager: tfds.download.DownloadManager) -> str:
    cfg = self.builder_config
    if cfg.source == "embedded":
      return str(EMBEDDED_NPZ)
    if cfg.source == "npz":
      return cfg.npz_path
    if cfg.source == "download":
      if cfg.image_size not in DOWNLOADS:
        raise DataError(f"no official DermaMNIST download for size {cfg.image_size}; "
                        f"sizes are {sorted(DOWNLOADS)}.")
      url, md5 = DOWNLOADS[cfg.image_size]
      path = download(url, os.fspath(dl_manager.download_dir))
      got = file_digest(path, "md5")
      if got != md5:
        # Remove the bad file so that the next attempt downloads it again.
        for p in (path, path + ".INFO"):
          if os.path.exists(p):
            os.remove(p)
        raise DataError(f"{path}: downloaded from {url} has MD5 {got}, expected {md5} "
                        "(corrupt or changed download; it was deleted, try again).")
      return path
    raise DataError(f"unknown DermaMNIST source {cfg.source!r}; valid sources: {SOURCES}.")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    path = self._source_file(dl_manager)
    pre = self._preloaded
    contents = pre if pre is not None and pre.path == path else load_npz(path)
    cfg = self.builder_config
    if contents.image_size != cfg.image_size:
      raise DataError(f"{path}: images are {contents.image_size}x{contents.image_size} but "
                      f"config '{cfg.name}' expects {cfg.image_size}x{cfg.image_size}.")
    meta = {"source": cfg.source, "source_file": os.path.abspath(path),
            "source_sha256": file_digest(path), "image_size": contents.image_size,
            "split": cfg.split}
    if cfg.split == "official":
      meta["num_examples"] = contents.counts()
      self.info.metadata.update(meta)
      return {split: self._generate_examples(contents.images[split], contents.labels[split],
                                             np.arange(len(contents.labels[split])))
              for split in TFDS_SPLITS}
    members = lesion_split_members(contents, cfg.source, cfg.split_seed)
    offsets = global_offsets(contents.counts())
    ids = {s: (offsets[m[:, 0]] + m[:, 1]) for s, m in members.items()}
    meta.update({"split_seed": int(cfg.split_seed), "official_num_examples": contents.counts(),
                 "num_examples": {s: int(len(v)) for s, v in ids.items()},
                 "ids": {s: v.tolist() for s, v in ids.items()}})
    self.info.metadata.update(meta)
    pool_images = np.concatenate([contents.images[s] for s in TFDS_SPLITS])
    pool_labels = np.concatenate([contents.labels[s] for s in TFDS_SPLITS])
    return {s: self._generate_examples(pool_images[v], pool_labels[v], v)
            for s, v in ids.items()}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray, ids: np.ndarray):
    for i in range(len(labels)):
      yield i, {"image": Image.fromarray(images[i]), "label": int(labels[i]),
                "id": int(ids[i])}


def global_offsets(counts: dict[str, int]) -> np.ndarray:
  """Where each official split starts among a file's images taken train, val, test."""
  return np.cumsum([0] + [counts[s] for s in TFDS_SPLITS[:-1]]).astype(np.int64)


def lesion_split_members(contents: NpzContents, source: str,
                         seed: int) -> dict[str, np.ndarray]:
  """{TFDS split: (n, 2) rows of (official split 0/1/2, index in it)} of the lesion split."""
  from derm_jax.data import dermamnist_lesions
  labels = {s: contents.labels[t] for s, t in zip(dermamnist_lesions.SPLITS, TFDS_SPLITS,
                                                    strict=True)}
  md, why = dermamnist_lesions.match(source, labels)
  if md is None:
    raise DataError(f"{contents.path}: data.split='lesion' needs every image's HAM10000 "
                    f"lesion, and the lesion table does not know this file ({why}).")
  out = dermamnist_lesions.lesion_split(md, labels, int(seed))
  return {t: out[s] for s, t in zip(dermamnist_lesions.SPLITS, TFDS_SPLITS, strict=True)}


# ----------------------------------------------------------------------------- preparing


def _field(data_config: Any, name: str, default: Any) -> Any:
  value = getattr(data_config, name, default) if data_config is not None else default
  return default if value is None else value


def _data_dir(data_config: Any) -> Path:
  d = _field(data_config, "data_dir", None) or _DEFAULT_DATA_DIR
  return Path(os.path.expanduser(os.fspath(d)))


def resolve_config(data_config: Any) -> tuple[DermaMNISTConfig, str | None]:
  """The builder config for `data_config` and the local npz it is made from (None: download),
  with the split `data_config.split` asks for ('official' or 'lesion', `split_seed`)."""
  config, path = _resolve_source(data_config)
  kind = str(_field(data_config, "split", "official") or "official")
  if kind not in SPLIT_KINDS:
    raise DataError(f"unknown data.split={kind!r}; valid splits: {list(SPLIT_KINDS)}.")
  if kind == "official":
    return config, path
  seed = _field(data_config, "split_seed", 0)
  if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
    raise DataError(f"data.split_seed={seed!r}: must be a non-negative integer.")
  return dataclasses.replace(
      config, name=f"{config.name}_lesion{int(seed)}", split="lesion", split_seed=int(seed),
      description=f"{config.description} Re-split by lesion (seed {int(seed)})."), path


def _resolve_source(data_config: Any) -> tuple[DermaMNISTConfig, str | None]:
  """The builder config for `data_config` and the local npz it is made from (None: download).

  Cheap: hashes the local file (memoised) but does not decode it; the image size of an
  'npz' source is read from the npy header of `train_images`.
  """
  source = str(_field(data_config, "source", "embedded") or "embedded").lower()
  if source == "embedded":
    if not EMBEDDED_NPZ.is_file():
      raise DataError(f"{EMBEDDED_NPZ}: packaged DermaMNIST subset is missing from the "
                      "installation.")
    return _embedded_config(), str(EMBEDDED_NPZ)
  if source == "npz":
    path = os.fspath(_field(data_config, "npz_path", ""))
    if not path:
      raise DataError("data_config.npz_path is empty; source 'npz' needs the path of a "
                      "MedMNIST DermaMNIST .npz file.")
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
      raise DataError(f"{path}: file not found (data_config.npz_path).")
    size = _peek_image_size(path)
    name = f"npz_{file_digest(path)[:12]}"
    return DermaMNISTConfig(name=name, source="npz", npz_path=path, image_size=size,
                            description=f"Local MedMNIST npz {path}."), path
  if source == "download":
    size = int(_field(data_config, "size", 28))
    if size not in DOWNLOADS:
      raise DataError(f"data_config.size={size}: no official DermaMNIST download of that "
                      f"size; sizes are {sorted(DOWNLOADS)}.")
    return _download_config(size), None
  raise DataError(f"unknown data_config.source {source!r}; valid sources: {SOURCES}.")


def _peek_image_size(path: str) -> int:
  """Image size S from the npy header of `train_images` (full validation comes later)."""
  shape: tuple[int, ...] = ()
  try:
    with zipfile.ZipFile(path) as zf, zf.open("train_images.npy") as f:
      version = np.lib.format.read_magic(f)
      read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                     (2, 0): np.lib.format.read_array_header_2_0}[version]
      shape, _, _ = read_header(f)
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # load_npz explains
    shape = ()
  if len(shape) == 4:
    return int(shape[1])
  load_npz(path)  # raises a DataError saying what is wrong
  raise DataError(f"{path}: cannot read the image size of 'train_images'.")


def _shards_present(version_dir: Path) -> bool:
  info_file = version_dir / "dataset_info.json"
  if not info_file.is_file():
    return False
  try:
    info = json.loads(info_file.read_text())
    shards = {split["name"]: len(split.get("shardLengths", [])) for split in info["splits"]}
  except (OSError, ValueError, KeyError, TypeError):
    return False
  for name in TFDS_SPLITS:
    files = list(version_dir.glob(f"dermamnist-{name}.array_record-*"))
    if not shards.get(name) or len(files) != shards[name]:
      return False
  return True


def _prepared_ok(version_dir: Path, source_file: str | None) -> bool:
  """Whether `version_dir` holds a complete preparation of `source_file` (None: download)."""
  if not version_dir.is_dir() or not _shards_present(version_dir):
    return False
  try:
    meta = json.loads((version_dir / "metadata.json").read_text())
  except (OSError, ValueError):
    return False
  return source_file is None or meta.get("source_sha256") == file_digest(source_file)


def _make_builder(data_dir: Path, config: DermaMNISTConfig) -> DermaMNIST:
  # TFDS wants the registered configs by name and only new (npz_*) ones as objects.
  known = {c.name for c in DermaMNIST.BUILDER_CONFIGS}
  return DermaMNIST(data_dir=os.fspath(data_dir),
                    config=config.name if config.name in known else config)


def _remove(path: Path) -> None:
  if path.is_dir():
    shutil.rmtree(path, ignore_errors=True)


def _verify(builder: DermaMNIST, version_dir: Path) -> None:
  meta = json.loads((version_dir / "metadata.json").read_text())
  expected = meta.get("num_examples", {})
  for split in TFDS_SPLITS:
    got = builder.info.splits[split].num_examples if split in builder.info.splits else -1
    if got != expected.get(split):
      raise DataError(f"{version_dir}: prepared split '{split}' has {got} examples, "
                      f"expected {expected.get(split)}; the preparation was removed.")


def prepare(data_config: Any) -> DermaMNIST:
  """Prepares (if needed) and returns the TFDS builder for `data_config`.

  A local npz is fully validated before anything is written. A prepared directory that is
  incomplete, or was made from a different embedded file, is deleted and made again.
  """
  config, source_file = resolve_config(data_config)
  data_dir = _data_dir(data_config)
  version_dir = data_dir / DermaMNIST.name / config.name / str(DermaMNIST.VERSION)
  if _prepared_ok(version_dir, source_file):
    builder = _make_builder(data_dir, config)
    try:
      _verify(builder, version_dir)
      return builder
    except (DataError, OSError, ValueError, KeyError):
      _remove(version_dir)  # inconsistent: rebuild below
  contents = load_npz(source_file) if source_file is not None else None
  if contents is not None and contents.image_size != config.image_size:
    raise DataError(f"{source_file}: images are {contents.image_size}px but the npy header "
                    f"of 'train_images' says {config.image_size}px.")
  if not _prepared_ok(version_dir, source_file):  # re-check: another process may have won
    _remove(version_dir)
  builder = _make_builder(data_dir, config)
  builder._preloaded = contents
  try:
    builder.download_and_prepare(
        file_format="array_record",
        download_dir=os.fspath(data_dir / "downloads"),
        download_config=tfds.download.DownloadConfig(
            try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP),
    )
  except Exception:
    # A concurrent preparation of the same data may have renamed its directory first.
    if not _prepared_ok(version_dir, source_file):
      raise
    builder = _make_builder(data_dir, config)
  finally:
    builder._preloaded = None
  try:
    if not _shards_present(version_dir):
      raise DataError(f"{version_dir}: ArrayRecord files missing after preparation.")
    _verify(builder, version_dir)
  except Exception:
    _remove(version_dir)
    raise
  return builder


# ----------------------------------------------------------------------------- reading


def _tfds_split(split: str) -> str:
  return resolve_split(split, SPLIT_ALIASES)


def get_data_source(data_config: Any, split: str) -> TfdsSource:
  """Prepares the data if needed and returns a random-access source for `split`.

  `data_config` fields: source ('embedded'|'npz'|'download'), npz_path, size (download
  only), data_dir (None or '' -> ~/tensorflow_datasets). `split`: 'train', 'val' /
  'validation' or 'test'.
  """
  split = _tfds_split(split)
  builder = prepare(data_config)
  return TfdsSource(builder.data_dir, split)


def _iter_labels(version_dir: str, split: str) -> Iterable[int]:
  builder = tfds.builder_from_directory(version_dir)
  ds = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
  n = len(ds)
  for start in range(0, n, 1024):
    for ex in ds.__getitems__(list(range(start, min(n, start + 1024)))):
      yield int(ex["label"])


def labels(data_config: Any, split: str) -> np.ndarray:
  """All labels of `split` (int64), index i = label of `get_data_source(...)[i]`.

  Cached as an .npy inside the prepared directory; computed once without decoding images.
  """
  return _labels_of(prepare(data_config), split)


def _labels_of(builder: DermaMNIST, split: str) -> np.ndarray:
  split = _tfds_split(split)
  version_dir = Path(builder.data_dir)
  cache = version_dir / _LABELS_CACHE.format(split=split)
  n = builder.info.splits[split].num_examples
  if cache.is_file():
    try:
      y = np.load(cache, allow_pickle=False)
      if y.shape == (n,) and y.dtype == np.int64:
        return y
    except (OSError, ValueError):
      pass
  y = np.fromiter(_iter_labels(os.fspath(version_dir), split), dtype=np.int64, count=n)
  tmp = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
  try:
    with open(tmp, "wb") as f:
      np.save(f, y)
    os.replace(tmp, cache)
  except OSError:
    if tmp.exists():
      tmp.unlink()
  return y


def class_counts(data_config: Any, split: str) -> np.ndarray:
  """Number of images of each class in `split`, shape (NUM_CLASSES,), int64."""
  return np.bincount(labels(data_config, split), minlength=NUM_CLASSES).astype(np.int64)


class Dataset:
  """DermaMNIST through the dataset registry (`config.data.name='dermamnist'`).

  `metadata(split)` (per-image HAM10000 identity and metadata, index i = source(split)[i])
  exists when the lesion table knows the file (dermamnist_lesions.py); otherwise the
  attribute is None, as for datasets without metadata."""

  metadata = None

  def __init__(self, data_config: Any):
    from derm_jax.data import unlabeled
    from derm_jax.data.registry import DatasetMeta
    self._config = data_config
    self._builder = prepare(data_config)
    self._stored = json.loads((Path(self._builder.data_dir) / "metadata.json").read_text())
    self.meta = DatasetMeta(name="dermamnist", class_names=CLASS_NAMES)
    self._identity = self._match_lesion_table()
    if self._identity is not None:
      self.metadata = self._metadata
    # config.data.unlabeled: prepared now, at the stored resolution, checked against val/test.
    self._unlabeled = unlabeled.prepare(self, data_config)

  def _match_lesion_table(self) -> dict[str, dict[str, np.ndarray]] | None:
    """Per split, the HAM10000 identity of each record (None: the table does not know the
    file; said once in the log)."""
    from absl import logging

    from derm_jax.data import dermamnist_lesions
    official = self._stored.get("official_num_examples") or self._stored["num_examples"]
    counts = [int(official[t]) for t in TFDS_SPLITS]
    offsets = global_offsets(dict(zip(TFDS_SPLITS, counts, strict=True)))
    lesion_split = self._stored.get("split", "official") == "lesion"
    # Each record's position among the file's images (train, val, test in that order).
    where = {s: (np.asarray(self._stored["ids"][t], dtype=np.int64) if lesion_split else
                 offsets[k] + np.arange(counts[k], dtype=np.int64))
             for k, (s, t) in enumerate(zip(dermamnist_lesions.SPLITS, TFDS_SPLITS,
                                            strict=True))}
    pool = np.full(sum(counts), -1, dtype=np.int64)
    for s, pos in where.items():
      pool[pos] = self.labels(s)
    file_labels = {s: pool[o:o + n] for s, o, n in zip(dermamnist_lesions.SPLITS, offsets,
                                                       counts, strict=True)}
    md, why = dermamnist_lesions.match(self._stored["source"], file_labels)
    if md is None:
      logging.log_first_n(logging.WARNING, "DermaMNIST %s: no lesion identity (%s): no "
                          "lesion audit, seen/unseen-lesion or subgroup metrics, MICLe pairs.",
                          1, self._stored.get("source_file"), why)
      return None
    whole = {k: np.concatenate([md[s][k] for s in dermamnist_lesions.SPLITS])
             for k in md["train"]}
    return {s: {"id": pos if lesion_split else pos - offsets[k],
                **{f: v[pos] for f, v in whole.items()}}
            for k, (s, pos) in enumerate(where.items())}

  def _metadata(self, split: str) -> dict[str, np.ndarray]:
    """Keys: 'id' (int64), 'image_id', 'lesion_id', 'dx', 'dx_type', 'sex',
    'localization' (str) and 'age' (float32 years, NaN where unknown)."""
    return dict(self._identity[{"validation": "val"}.get(split, split)])

  @property
  def version_dir(self) -> str:
    """The prepared directory (ArrayRecords, dataset_info.json)."""
    return os.fspath(self._builder.data_dir)

  def unlabeled_source(self) -> TfdsSource | None:
    """The `config.data.unlabeled` images (label -1; derm_jax/data/unlabeled.py), or None
    when none are configured."""
    return None if self._unlabeled is None else self._unlabeled.source()

  def source(self, split: str) -> TfdsSource:
    return TfdsSource(self._builder.data_dir, _tfds_split(split))

  def labels(self, split: str) -> np.ndarray:
    return _labels_of(self._builder, split)

  def describe(self) -> dict[str, Any]:
    splits = {s: int(self._builder.info.splits[_tfds_split(s)].num_examples)
              for s in ("train", "val", "test")}
    kind = self._stored.get("split", "official")
    out = {"name": "dermamnist", "source": str(_field(self._config, "source", "embedded")),
           "splits": splits,
           "image_size": int(self._builder.info.features["image"].shape[0]),
           "split_kind": kind, "lesion_grouped": kind == "lesion",
           "lesion_ids": self._identity is not None}
    if kind == "lesion":
      out["split_seed"] = int(self._stored["split_seed"])
    if self._unlabeled is not None:
      out["unlabeled"] = self._unlabeled.summary()
    return out
