"""Tests for the full-resolution HAM10000 builder (derm_jax/data/ham10000.py, fullres.py)
on the 82-image sample in tests/data/ham10000_sample."""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from derm_jax.data import fullres, ham10000, registry
from derm_jax.data.errors import DataError

SAMPLE = Path(__file__).resolve().parent / "data" / "ham10000_sample"
CSV = SAMPLE / ham10000.METADATA_CSV
SIZE = 32  # small stored size keeps preparation fast


def cfg(data_dir, manual_dir=SAMPLE, **kw) -> SimpleNamespace:
  base = {"name": "ham10000", "manual_dir": str(manual_dir), "data_dir": str(data_dir),
          "stored_size": SIZE, "split_seed": 0, "val_fraction": 0.1, "test_fraction": 0.2}
  base.update(kw)
  return SimpleNamespace(**base)


def csv_rows(path=CSV) -> list[dict[str, str]]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def write_rows(path, rows, fields=None) -> None:
  fields = fields or list(rows[0])
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
  return registry.get(cfg(tmp_path_factory.mktemp("tfds")))


def test_counts_labels_and_metadata(ds):
  rows = csv_rows()
  assert ds.meta.class_names == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
  d = ds.describe()
  json.dumps(d)  # JSON-safe
  assert {"ham10000", "isic2019"} <= set(registry.available())
  assert sum(d["splits"].values()) == len(rows) == 82
  assert d["image_size"] == SIZE and d["listing"]["lesions"] == 71
  seen = []
  for split in ("train", "val", "test"):
    src, y, m = ds.source(split), ds.labels(split), ds.metadata(split)
    assert len(src) == len(y) == len(m["id"]) == d["splits"][split] > 0
    assert y.dtype == np.int64 and set(m) >= {"image_id", "lesion_id", "dx_type", "age",
                                              "sex", "localization"}
    assert (np.bincount(y, minlength=7) >= 1).all()  # every class in every split
    for i in (0, len(src) - 1):
      ex = src[i]
      assert ex["image"].shape == (SIZE, SIZE, 3) and ex["image"].dtype == np.uint8
      assert ex["label"] == y[i] and ex["id"] == m["id"][i]
      row = rows[ex["id"]]  # id = row index in the metadata CSV
      assert row["image_id"] == m["image_id"][i] and row["lesion_id"] == m["lesion_id"][i]
      assert ds.meta.class_names[ex["label"]] == row["dx"]
      assert m["age"][i] == float(row["age"]) and m["sex"][i] == row["sex"]
    seen += m["id"].tolist()
  assert sorted(seen) == list(range(82))
  src = pickle.loads(pickle.dumps(ds.source("val")))
  assert src[0]["id"] == ds.metadata("val")["id"][0]


def test_no_lesion_in_two_splits(ds):
  where = {}
  for split in ("train", "val", "test"):
    for lesion in ds.metadata(split)["lesion_id"]:
      assert where.setdefault(lesion, split) == split, lesion


def test_split_deterministic_per_seed():
  listing = ham10000.read_listing(str(SAMPLE))
  ids = lambda seed: {s: [r.id for r in recs] for s, recs in  # noqa: E731
                      fullres.assign_splits(listing, seed, 0.1, 0.2).items()}
  assert ids(0) == ids(0)
  assert ids(0) != ids(1)
  for seed in range(6):
    parts = fullres.assign_splits(listing, seed, 0.1, 0.2)
    lesions = [{r.group for r in recs} for recs in parts.values()]
    assert not (lesions[0] & lesions[1] or lesions[0] & lesions[2] or lesions[1] & lesions[2])


def test_prepared_dir_encodes_settings(ds, tmp_path):
  base, _ = fullres.resolve(ham10000.Ham10000, cfg(tmp_path))
  assert base.name.startswith(f"{SIZE}px_seed0_val0p1_test0p2_")
  assert Path(ds.version_dir).parent.name == base.name
  names = {fullres.resolve(ham10000.Ham10000, cfg(tmp_path, **kw))[0].name
           for kw in ({}, {"stored_size": 48}, {"split_seed": 1}, {"val_fraction": 0.15},
                      {"test_fraction": 0.25})}
  assert len(names) == 5
  # Same settings, again: the prepared records are reused, not rewritten.
  before = os.stat(Path(ds.version_dir) / "metadata.json").st_mtime_ns
  again = ham10000.Dataset(cfg(Path(ds.version_dir).parents[2]))
  assert again.version_dir == ds.version_dir
  assert os.stat(Path(ds.version_dir) / "metadata.json").st_mtime_ns == before


@pytest.fixture()
def copy(tmp_path) -> Path:
  """A copy of the first 21 rows of the sample (3 per class), images in part_2."""
  d = tmp_path / "ham"
  (d / "HAM10000_images_part_2").mkdir(parents=True)
  rows = [r for dx in ham10000.CLASS_NAMES for r in csv_rows() if r["dx"] == dx]
  rows = [r for i, r in enumerate(rows) if sum(q["dx"] == r["dx"] for q in rows[:i]) < 3]
  assert len(rows) == 21
  for r in rows:
    shutil.copy(SAMPLE / "HAM10000_images_part_1" / f"{r['image_id']}.jpg",
                d / "HAM10000_images_part_2")
  write_rows(d / ham10000.METADATA_CSV, rows)
  return d


def test_part2_only_and_empty_age(copy, tmp_path):
  rows = csv_rows(copy / ham10000.METADATA_CSV)
  rows[4]["age"] = ""
  write_rows(copy / ham10000.METADATA_CSV, rows)
  ds = ham10000.Dataset(cfg(tmp_path / "tfds", copy, val_fraction=0.2, test_fraction=0.3))
  ages = {}
  for split in ("train", "val", "test"):
    m = ds.metadata(split)
    ages.update(zip(m["id"].tolist(), m["age"].tolist(), strict=True))
  assert len(ages) == len(rows) and np.isnan(ages[4])
  assert not np.isnan([a for i, a in ages.items() if i != 4]).any()
  # Changing an image file gives another prepared directory.
  name = fullres.resolve(ham10000.Ham10000, cfg(tmp_path, copy))[0].name
  img = next((copy / "HAM10000_images_part_2").iterdir())
  os.utime(img, ns=(0, 0))
  assert fullres.resolve(ham10000.Ham10000, cfg(tmp_path, copy))[0].name != name


def _break(copy: Path, kind: str) -> tuple[str, str]:
  """Damages the copy; returns (file named in the error, text expected in it)."""
  csv_path = copy / ham10000.METADATA_CSV
  rows = csv_rows(csv_path)
  if kind == "column":
    write_rows(csv_path, rows, [c for c in rows[0] if c != "dx"])
    return str(csv_path), "missing column(s) ['dx']"
  if kind == "absent":
    (copy / "HAM10000_images_part_2" / f"{rows[6]['image_id']}.jpg").unlink()
    return str(csv_path), f"line 8: image '{rows[6]['image_id']}' not found"
  if kind == "dx":
    rows[9]["dx"] = "scc"
    write_rows(csv_path, rows)
    return str(csv_path), "line 11 (image"
  if kind == "corrupt":
    img = copy / "HAM10000_images_part_2" / f"{rows[12]['image_id']}.jpg"
    img.write_bytes(img.read_bytes()[:600])  # truncated JPEG
    return str(img), f"{csv_path} line 14"
  raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["column", "absent", "dx", "corrupt"])
def test_bad_inputs_raise_and_leave_nothing(copy, tmp_path, kind):
  file, text = _break(copy, kind)
  data_dir = tmp_path / "tfds"
  with pytest.raises(DataError) as err:
    ham10000.Dataset(cfg(data_dir, copy, val_fraction=0.2, test_fraction=0.3))
  assert file in str(err.value) and text in str(err.value)
  if kind == "dx":
    assert "unknown diagnosis code dx='scc'" in str(err.value)
  assert not data_dir.exists() or not any(data_dir.rglob("*")), list(data_dir.rglob("*"))


def test_missing_manual_dir(tmp_path):
  with pytest.raises(DataError, match="manual_dir is empty"):
    ham10000.Dataset(cfg(tmp_path, ""))
  with pytest.raises(DataError, match="not found"):
    ham10000.Dataset(cfg(tmp_path, tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="HAM10000_metadata.csv: file not found"):
    ham10000.Dataset(cfg(tmp_path, tmp_path / "empty"))


def test_fixed_classes_refuse_config_classes(tmp_path):
  """config.data.classes is for the folder dataset; HAM10000 says its classes are fixed."""
  with pytest.raises(DataError, match=r"config.data.classes=\('nv', 'mel'\) is set, but "
                     r"config.data.name='ham10000' has fixed classes \['akiec', 'bcc'"):
    ham10000.Dataset(cfg(tmp_path / "tfds", classes=("nv", "mel")))
  assert not (tmp_path / "tfds").exists()
