"""Tests for the ISIC 2019 builder (derm_jax/data/isic2019.py) on the layout fixture in
tests/data/isic2019_sample (see its README: ISIC 2018 images in the 2019 layout)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from derm_jax.data import fullres, isic2019, registry
from derm_jax.data.errors import DataError

SAMPLE = Path(__file__).resolve().parent / "data" / "isic2019_sample"
GT = isic2019.GROUND_TRUTH_CSV
META = isic2019.METADATA_CSV


def cfg(data_dir, manual_dir=SAMPLE, **kw) -> SimpleNamespace:
  base = {"name": "isic2019", "manual_dir": str(manual_dir), "data_dir": str(data_dir),
          "stored_size": 32, "split_seed": 0, "val_fraction": 0.15, "test_fraction": 0.2}
  base.update(kw)
  return SimpleNamespace(**base)


def rows(path) -> list[dict[str, str]]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def write_rows(path, data, fields=None) -> None:
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields or list(data[0]), extrasaction="ignore")
    w.writeheader()
    w.writerows(data)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
  return registry.get(cfg(tmp_path_factory.mktemp("tfds")))


def test_classes_counts_and_mapping(ds):
  assert ds.meta.class_names == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc", "scc")
  d = ds.describe()
  assert d["listing"]["skipped_by_reason"] == {"UNK": 1} and d["listing"]["used"] == 34
  assert d["listing"]["per_class"] == {"akiec": 3, "bcc": 5, "bkl": 5, "df": 5, "mel": 5,
                                       "nv": 4, "vasc": 5, "scc": 2}
  gt = rows(SAMPLE / GT)
  meta = {r["image"]: r for r in rows(SAMPLE / META)}
  ids = []
  for split in ("train", "val", "test"):
    m, y, src = ds.metadata(split), ds.labels(split), ds.source(split)
    assert len(src) == len(y) == d["splits"][split] > 0
    for i in range(len(y)):
      row = gt[m["id"][i]]  # id = row index in the ground-truth CSV
      col = next(c for c in isic2019.COLUMN_CLASSES if row[c] == "1.0")
      assert isic2019.COLUMN_CLASSES[col] == ds.meta.class_names[y[i]]
      assert row["image"] == m["image_id"][i]
      assert m["lesion_id"][i] == meta[row["image"]]["lesion_id"]
      assert m["localization"][i] == meta[row["image"]]["anatom_site_general"]
    ex = src[0]
    assert ex["image"].shape == (32, 32, 3) and ex["label"] == y[0] and ex["id"] == m["id"][0]
    ids += m["id"].tolist()
  unk = next(i for i, r in enumerate(gt) if r["UNK"] == "1.0")
  assert sorted(ids) == [i for i in range(35) if i != unk]
  ages = np.concatenate([ds.metadata(s)["age"] for s in ("train", "val", "test")])
  assert np.isnan(ages).sum() == 1


def test_lesion_grouping(ds):
  split_of = {}
  for split in ("train", "val", "test"):
    for lesion in ds.metadata(split)["lesion_id"]:
      if lesion:
        assert split_of.setdefault(lesion, split) == split
  listing = isic2019.read_listing(str(SAMPLE))
  groups = [r.group for r in listing.records]
  assert sum(g == "HAM_0004036" for g in groups) == 3
  assert sum(g.startswith("image:") for g in groups) == 5  # no lesion_id: own group
  for seed in range(5):
    parts = fullres.assign_splits(listing, seed, 0.15, 0.2)
    sets = [{r.group for r in p} for p in parts.values()]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
  a = [r.id for r in fullres.assign_splits(listing, 0, 0.15, 0.2)["test"]]
  assert a == [r.id for r in fullres.assign_splits(listing, 0, 0.15, 0.2)["test"]]
  assert a != [r.id for r in fullres.assign_splits(listing, 1, 0.15, 0.2)["test"]]


@pytest.fixture()
def copy(tmp_path) -> Path:
  d = tmp_path / "isic"
  shutil.copytree(SAMPLE, d)
  return d


def _break(copy: Path, kind: str) -> tuple[str, str]:
  gt_path, meta_path = copy / GT, copy / META
  gt = rows(gt_path)
  if kind == "column":
    write_rows(meta_path, rows(meta_path),
               ["image", "age_approx", "anatom_site_general", "sex"])
    return str(meta_path), "missing column(s) ['lesion_id']"
  if kind == "absent":
    (copy / isic2019.IMAGE_DIR / f"{gt[4]['image']}.jpg").unlink()
    return str(gt_path), f"line 6: image '{gt[4]['image']}' not found"
  if kind == "dx":  # an unknown diagnosis column
    for r in gt:
      r["XYZ"] = "0.0"
    write_rows(gt_path, gt)
    return str(gt_path), "unexpected column(s) ['XYZ']"
  if kind == "value":
    gt[7]["MEL"] = "2"
    write_rows(gt_path, gt)
    return str(gt_path), "line 9"
  if kind == "format2018":
    gt = [r for r in gt if r["SCC"] == r["UNK"] == "0.0"]
    for r in gt:
      r["AKIEC"] = r.pop("AK")
    write_rows(gt_path, gt, ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"])
    return str(gt_path), "2019 layout"
  if kind == "corrupt":
    img = copy / isic2019.IMAGE_DIR / f"{gt[10]['image']}.jpg"
    img.write_bytes(b"not a jpeg at all")
    return str(img), f"{gt_path} line 12"
  raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["column", "absent", "dx", "value", "format2018",
                                  "corrupt"])
def test_bad_inputs_raise_and_leave_nothing(copy, tmp_path, kind):
  file, text = _break(copy, kind)
  data_dir = tmp_path / "tfds"
  with pytest.raises(DataError) as err:
    isic2019.Dataset(cfg(data_dir, copy))
  assert file in str(err.value) and text in str(err.value), str(err.value)
  assert not data_dir.exists() or not any(data_dir.rglob("*")), list(data_dir.rglob("*"))


def test_missing_metadata_row(copy, tmp_path):
  meta = rows(copy / META)
  write_rows(copy / META, meta[:3] + meta[4:])
  with pytest.raises(DataError, match=f"no row for image '{meta[3]['image']}'.*line 5"):
    isic2019.Dataset(cfg(tmp_path, copy))
