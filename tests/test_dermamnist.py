"""Tests for the DermaMNIST data: packaged subset, TFDS ArrayRecord preparation, sources."""

from __future__ import annotations

import functools
import hashlib
import http.server
import importlib.util
import os
import pickle
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from derm_jax.data import dermamnist as dm
from derm_jax.data.errors import DataError

REPO = Path(__file__).resolve().parents[1]
# Optional checks against the full DermaMNIST file, if its path is given in DERMAMNIST_NPZ.
SHARED_NPZ = Path(os.environ.get("DERMAMNIST_NPZ") or "/nonexistent/dermamnist.npz")
SPLIT_KEYS = {"train": "train", "validation": "val", "test": "test"}
# Class counts of the full DermaMNIST splits the subset was drawn from.
FULL_COUNTS = {
    "train": [228, 359, 769, 80, 779, 4692, 99],
    "val": [33, 52, 110, 12, 111, 670, 14],
    "test": [66, 103, 220, 23, 223, 1341, 29],
}


def cfg(data_dir, **kw) -> SimpleNamespace:
  base = {"source": "embedded", "npz_path": "", "size": 28,
          "data_dir": None if data_dir is None else str(data_dir)}
  base.update(kw)
  return SimpleNamespace(**base)


@pytest.fixture(scope="module")
def embedded() -> dict[str, np.ndarray]:
  with np.load(dm.EMBEDDED_NPZ) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def embedded_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  dm.prepare(cfg(data_dir))
  return data_dir


def write_npz(path: Path, sizes=(12, 5, 6), image_size=28, seed=0, **override) -> Path:
  rng = np.random.default_rng(seed)
  arrays = {}
  for key, n in zip(("train", "val", "test"), sizes, strict=True):
    arrays[f"{key}_images"] = rng.integers(0, 256, (n, image_size, image_size, 3), np.uint8)
    arrays[f"{key}_labels"] = (np.arange(n) % dm.NUM_CLASSES).astype(np.uint8)[:, None]
  arrays.update(override)
  arrays = {k: v for k, v in arrays.items() if v is not None}
  np.savez_compressed(path, **arrays)
  return path


def prepared_dirs(data_dir: Path) -> list[Path]:
  root = Path(data_dir) / "dermamnist"
  return sorted(p for p in root.glob("*/*") if p.is_dir()) if root.is_dir() else []


# ----------------------------------------------------------------------------- subset


def test_embedded_subset_layout(embedded):
  assert os.path.getsize(dm.EMBEDDED_NPZ) <= 5_000_000
  assert sorted(embedded) == sorted(f"{s}_{k}" for s in ("train", "val", "test")
                                    for k in ("images", "labels"))
  expected = {"train": 1700, "val": 250, "test": 500}
  for s, n in expected.items():
    x, y = embedded[f"{s}_images"], embedded[f"{s}_labels"]
    assert x.shape == (n, 28, 28, 3) and x.dtype == np.uint8
    assert y.shape == (n, 1) and y.dtype == np.uint8
    counts = np.bincount(y[:, 0], minlength=7)
    assert len(counts) == 7 and counts.min() >= 8, (s, counts)


def test_embedded_subset_is_stratified(embedded):
  for s, full in FULL_COUNTS.items():
    full = np.asarray(full, float)
    sub = np.bincount(embedded[f"{s}_labels"][:, 0], minlength=7).astype(float)
    target = np.maximum(8, full / full.sum() * sub.sum())
    # Proportional up to rounding and the minimum of 8 (taken back from the largest class).
    assert np.all(np.abs(sub - target)[:5] <= 1.5), (s, sub, target)
    assert np.all(np.abs(sub - target)[6:] <= 1.5), (s, sub, target)
    assert abs(sub[5] / sub.sum() - full[5] / full.sum()) < 0.05


@pytest.mark.skipif(not SHARED_NPZ.exists(), reason="set DERMAMNIST_NPZ to the full dermamnist.npz")
def test_embedded_subset_keeps_official_splits(embedded):
  with np.load(SHARED_NPZ) as f:
    for s in ("train", "val", "test"):
      src = {hashlib.sha1(img.tobytes()).hexdigest(): int(lab)
             for img, lab in zip(f[f"{s}_images"], f[f"{s}_labels"][:, 0], strict=True)}
      for img, lab in zip(embedded[f"{s}_images"], embedded[f"{s}_labels"][:, 0], strict=True):
        h = hashlib.sha1(img.tobytes()).hexdigest()
        assert h in src, f"a {s} subset image is not in the source {s} split"
        assert src[h] == lab


def _load_tool():
  spec = importlib.util.spec_from_file_location(
      "make_embedded_subset", REPO / "tools" / "make_embedded_subset.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_subset_tool_allocation_and_determinism():
  tool = _load_tool()
  alloc = tool.allocate(np.array(FULL_COUNTS["val"]), 250, 8)
  assert alloc.sum() == 250 and alloc.min() >= 8
  rng = np.random.default_rng(1)
  source = {}
  for s, n in (("train", 300), ("val", 60), ("test", 90)):
    source[f"{s}_images"] = rng.integers(0, 256, (n, 4, 4, 3), np.uint8)
    source[f"{s}_labels"] = rng.choice(7, size=(n, 1), p=[.05, .05, .1, .05, .1, .6, .05])
  counts = {"train": 70, "val": 20, "test": 30}
  a, idx_a = tool.make_subset(source, counts, seed=3, min_per_class=2)
  b, _ = tool.make_subset(source, counts, seed=3, min_per_class=2)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  for s in ("train", "val", "test"):
    assert len(idx_a[s]) == counts[s] and np.all(np.diff(idx_a[s]) > 0)
    np.testing.assert_array_equal(a[f"{s}_images"], source[f"{s}_images"][idx_a[s]])


@pytest.mark.skipif(not SHARED_NPZ.exists(), reason="set DERMAMNIST_NPZ to the full dermamnist.npz")
def test_subset_tool_reproduces_packaged_file(tmp_path):
  out = tmp_path / "mini.npz"
  assert _load_tool().main(["--source", str(SHARED_NPZ), "--out", str(out)]) == 0
  assert out.read_bytes() == dm.EMBEDDED_NPZ.read_bytes()


# ----------------------------------------------------------------------------- TFDS build


def test_prepare_writes_array_record(embedded_dir):
  version_dir = embedded_dir / "dermamnist" / "embedded" / "1.0.0"
  for split in dm.TFDS_SPLITS:
    assert list(version_dir.glob(f"dermamnist-{split}.array_record-*"))
  assert (version_dir / "dataset_info.json").is_file()
  assert not list((embedded_dir / "dermamnist" / "embedded").glob("*incomplete*"))


@pytest.mark.parametrize("split", ["train", "val", "validation", "test"])
def test_source_matches_npz(embedded_dir, embedded, split):
  src = dm.get_data_source(cfg(embedded_dir), split)
  key = SPLIT_KEYS[dm.SPLIT_ALIASES[split]]
  images, labels = embedded[f"{key}_images"], embedded[f"{key}_labels"][:, 0]
  assert len(src) == len(labels)
  for i in np.linspace(0, len(src) - 1, 9).astype(int):
    ex = src[i]
    assert set(ex) == {"image", "label", "id"}
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (28, 28, 3)
    assert isinstance(ex["label"], int) and isinstance(ex["id"], int)
    np.testing.assert_array_equal(ex["image"], images[ex["id"]])
    assert ex["label"] == labels[ex["id"]]


def test_labels_and_class_counts(embedded_dir, embedded):
  c = cfg(embedded_dir)
  for split, key in SPLIT_KEYS.items():
    y = dm.labels(c, split)
    assert y.dtype == np.int64
    src = dm.get_data_source(c, split)
    ids = np.array([src[i]["id"] for i in range(len(src))])
    np.testing.assert_array_equal(ids, np.arange(len(src)))  # written unshuffled
    np.testing.assert_array_equal(y, embedded[f"{key}_labels"][ids, 0])
    np.testing.assert_array_equal(
        dm.class_counts(c, key), np.bincount(embedded[f"{key}_labels"][:, 0], minlength=7))
  version_dir = embedded_dir / "dermamnist" / "embedded" / "1.0.0"
  cache = version_dir / "derm_jax_labels-train.npy"
  assert cache.is_file()
  np.testing.assert_array_equal(np.load(cache), dm.labels(c, "train"))


def test_source_is_grain_and_pickle_friendly(embedded_dir):
  import grain
  src = dm.get_data_source(cfg(embedded_dir), "test")
  again = pickle.loads(pickle.dumps(src))
  assert len(again) == len(src)
  np.testing.assert_array_equal(again[7]["image"], src[7]["image"])
  batch = grain.MapDataset.source(src).seed(0).shuffle().batch(8)[0]
  assert batch["image"].shape == (8, 28, 28, 3) and batch["label"].shape == (8,)


def test_config_fields_and_errors(tmp_path):
  assert dm.resolve_config(SimpleNamespace())[0].name == "embedded"
  assert dm.resolve_config(cfg(tmp_path, source="download", size=64))[0].name == "download_64"
  with pytest.raises(DataError, match="valid sources"):
    dm.get_data_source(cfg(tmp_path, source="hub"), "train")
  with pytest.raises(DataError, match="sizes are"):
    dm.resolve_config(cfg(tmp_path, source="download", size=32))
  with pytest.raises(DataError, match="npz_path is empty"):
    dm.resolve_config(cfg(tmp_path, source="npz", npz_path=""))
  with pytest.raises(DataError, match="valid splits"):
    dm.get_data_source(cfg(tmp_path), "dev")
  home_tfds = Path(os.path.expanduser("~/tensorflow_datasets"))
  assert dm._data_dir(cfg("")) == home_tfds and dm._data_dir(cfg(None)) == home_tfds


# ----------------------------------------------------------------------------- npz source


def test_npz_source_and_separate_preparations(tmp_path):
  a = write_npz(tmp_path / "a.npz", seed=1)
  b = write_npz(tmp_path / "b.npz", sizes=(9, 4, 3), image_size=64, seed=2)
  data_dir = tmp_path / "tfds"
  src_a = dm.get_data_source(cfg(data_dir, source="npz", npz_path=str(a)), "train")
  src_b = dm.get_data_source(cfg(data_dir, source="npz", npz_path=str(b)), "val")
  names = sorted(p.parent.name for p in prepared_dirs(data_dir))
  assert names == sorted([f"npz_{dm.file_digest(a)[:12]}", f"npz_{dm.file_digest(b)[:12]}"])
  with np.load(a) as f:
    assert len(src_a) == 12
    for i in range(len(src_a)):
      ex = src_a[i]
      np.testing.assert_array_equal(ex["image"], f["train_images"][ex["id"]])
      assert ex["label"] == f["train_labels"][ex["id"], 0]
  assert len(src_b) == 4 and src_b[0]["image"].shape == (64, 64, 3)
  np.testing.assert_array_equal(
      dm.class_counts(cfg(data_dir, source="npz", npz_path=str(b)), "test"),
      np.bincount(np.arange(3) % 7, minlength=7))


BAD_NPZ = {
    "missing_key": ({"val_labels": None}, "missing key"),
    "float_images": ({"train_images": np.zeros((3, 28, 28, 3), np.float32),
                      "train_labels": np.zeros((3, 1), np.uint8)}, "dtype float32"),
    "grey_images": ({"test_images": np.zeros((6, 28, 28), np.uint8)}, "shape"),
    "label_out_of_range": ({"val_labels": np.full((5, 1), 7, np.uint8)}, "outside 0..6"),
    "negative_label": ({"val_labels": np.full((5, 1), -1, np.int64)}, "outside 0..6"),
    "float_labels": ({"val_labels": np.zeros((5, 1), np.float32)}, "expected integers"),
    "length_mismatch": ({"train_labels": np.zeros((11, 1), np.uint8)}, "11 labels"),
    "mixed_sizes": ({"test_images": np.zeros((6, 32, 32, 3), np.uint8)}, "one size"),
    "empty_split": ({"test_images": np.zeros((0, 28, 28, 3), np.uint8),
                     "test_labels": np.zeros((0, 1), np.uint8)}, "empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_bad_npz_gives_data_error_and_writes_nothing(tmp_path, case):
  override, message = BAD_NPZ[case]
  path = write_npz(tmp_path / f"{case}.npz", **override)
  data_dir = tmp_path / "tfds"
  with pytest.raises(DataError, match=message) as err:
    dm.get_data_source(cfg(data_dir, source="npz", npz_path=str(path)), "train")
  assert str(path) in str(err.value)
  assert not prepared_dirs(data_dir)


def test_missing_or_non_npz_files(tmp_path):
  data_dir = tmp_path / "tfds"
  missing = tmp_path / "nope.npz"
  with pytest.raises(DataError, match="not found") as err:
    dm.get_data_source(cfg(data_dir, source="npz", npz_path=str(missing)), "train")
  assert str(missing) in str(err.value)
  text = tmp_path / "text.npz"
  text.write_text("hello")
  npy = tmp_path / "array.npz"
  with open(npy, "wb") as f:
    np.save(f, np.zeros(3))
  for path in (text, npy):
    with pytest.raises(DataError, match="not an .npz") as err:
      dm.get_data_source(cfg(data_dir, source="npz", npz_path=str(path)), "train")
    assert str(path) in str(err.value)
  assert not prepared_dirs(data_dir)


# ----------------------------------------------------------------------------- recovery


def test_failed_prepare_leaves_nothing_and_retry_works(tmp_path, monkeypatch):
  path = write_npz(tmp_path / "ok.npz")
  c = cfg(tmp_path / "tfds", source="npz", npz_path=str(path))
  original = dm.DermaMNIST._generate_examples

  def flaky(self, images, labels, ids):
    for n, item in enumerate(original(self, images, labels, ids)):
      if n == 3:
        raise RuntimeError("disk full (simulated)")
      yield item

  monkeypatch.setattr(dm.DermaMNIST, "_generate_examples", flaky)
  with pytest.raises(RuntimeError, match="simulated"):
    dm.get_data_source(c, "train")
  config_dir = tmp_path / "tfds" / "dermamnist" / f"npz_{dm.file_digest(path)[:12]}"
  assert not prepared_dirs(tmp_path / "tfds")
  assert not (config_dir.exists() and any(config_dir.iterdir()))
  monkeypatch.setattr(dm.DermaMNIST, "_generate_examples", original)
  assert len(dm.get_data_source(c, "train")) == 12


def test_broken_or_stale_preparation_is_rebuilt(tmp_path):
  path = write_npz(tmp_path / "ok.npz")
  c = cfg(tmp_path / "tfds", source="npz", npz_path=str(path))
  version_dir = Path(dm.prepare(c).data_dir)
  next(version_dir.glob("dermamnist-test.array_record-*")).unlink()  # lost shard
  assert len(dm.get_data_source(c, "test")) == 6
  (version_dir / "metadata.json").write_text('{"source_sha256": "0"}')  # other source file
  assert len(dm.get_data_source(c, "test")) == 6
  (version_dir / "dataset_info.json").unlink()  # half-deleted directory
  assert len(dm.get_data_source(c, "validation")) == 5
  assert dm.labels(c, "train").tolist() == [i % 7 for i in range(12)]


# ----------------------------------------------------------------------------- download


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):
    pass


@pytest.fixture
def http_root(tmp_path):
  root = tmp_path / "www"
  root.mkdir()
  server = http.server.ThreadingHTTPServer(
      ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield root, f"http://127.0.0.1:{server.server_port}"
  server.shutdown()
  server.server_close()


def test_download_source_checks_md5(tmp_path, http_root, monkeypatch):
  root, base = http_root
  npz = write_npz(root / "dermamnist.npz", seed=5)
  url = f"{base}/dermamnist.npz?download=1"
  good = hashlib.md5(npz.read_bytes()).hexdigest()
  data_dir = tmp_path / "tfds"
  c = cfg(data_dir, source="download", size=28)

  monkeypatch.setitem(dm.DOWNLOADS, 28, (url, "0" * 32))
  with pytest.raises(DataError, match="MD5") as err:
    dm.get_data_source(c, "train")
  assert "expected " + "0" * 32 in str(err.value)
  assert not prepared_dirs(data_dir)
  downloads = data_dir / "downloads"
  assert not [p for p in downloads.rglob("*") if p.is_file()]  # bad file removed

  monkeypatch.setitem(dm.DOWNLOADS, 28, (url, good))
  src = dm.get_data_source(c, "train")
  assert len(src) == 12
  assert [p.parent.name for p in prepared_dirs(data_dir)] == ["download_28"]
  with np.load(npz) as f:
    np.testing.assert_array_equal(src[4]["image"], f["train_images"][src[4]["id"]])


def test_official_download_table():
  assert sorted(dm.DOWNLOADS) == [28, 64, 128, 224]
  for url, md5 in dm.DOWNLOADS.values():
    assert url.startswith("https://zenodo.org/records/10519652/files/dermamnist")
    assert len(md5) == 32 and int(md5, 16) >= 0
  assert dm.DOWNLOADS[28][1] == "0744692d530f8e62ec473284d019b0c7"


def _download_error(tmp_path, monkeypatch, url):
  monkeypatch.setitem(dm.DOWNLOADS, 28, (url, "0" * 32))
  t0 = time.monotonic()
  with pytest.raises(DataError) as err:
    dm.get_data_source(cfg(tmp_path / "tfds", source="download", size=28), "train")
  msg = str(err.value)
  assert msg.startswith(f"cannot download {url} (")
  assert "--config.data.source=npz --config.data.npz_path=" in msg and "\n" not in msg
  assert err.value.__cause__ is None and err.value.__suppress_context__  # one message
  assert not prepared_dirs(tmp_path / "tfds")
  return msg, time.monotonic() - t0


def test_download_without_network_fails_fast_with_one_message(tmp_path, monkeypatch):
  msg, seconds = _download_error(tmp_path, monkeypatch, "http://127.0.0.1:9/dermamnist.npz")
  assert "refused" in msg.lower() and seconds < 10


def test_download_that_never_answers_times_out(tmp_path, monkeypatch):
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen(1)  # accepts the connection, never answers
  monkeypatch.setattr(dm, "DOWNLOAD_TIMEOUT_S", 0.5)
  try:
    msg, seconds = _download_error(
        tmp_path, monkeypatch, f"http://127.0.0.1:{server.getsockname()[1]}/dermamnist.npz")
  finally:
    server.close()
  assert "no answer within 0.5 s" in msg and seconds < 10
  assert not [p for p in (tmp_path / "tfds").rglob("*.npz*") if p.is_file()]  # no partial file


def test_download_http_error_is_one_message(tmp_path, http_root, monkeypatch):
  _, base = http_root
  msg, _ = _download_error(tmp_path, monkeypatch, f"{base}/missing.npz")
  assert "HTTP Error 404" in msg
