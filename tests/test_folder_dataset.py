"""Tests for bringing one's own data: the `folder` dataset (derm_jax/data/folder.py), the
unlabelled pool (derm_jax/data/unlabeled.py), outside sets in the labels.csv form
(derm_jax/data/isic.py) and the class order flowing from the data to the predictions.

Images are tiny (16 px) smooth random pictures made with PIL; the realistic case uses the
HAM10000 sample through tools/make_folder_example.py."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import REPO, run_main
from PIL import Image

from derm_jax.data import folder, fullres, isic, registry
from derm_jax.data.errors import DataError

SIZE = 16  # stored size: small keeps preparation fast
SAMPLE = Path(REPO) / "tests" / "data" / "ham10000_sample"
ISIC_2018 = Path(REPO) / "tests" / "data" / "isic2018_sample"


def picture(path: Path, seed: int, size: int = SIZE) -> Path:
  """A smooth random RGB picture (4x4 colours, bilinear up): distinct per seed."""
  rng = np.random.default_rng(seed)
  path.parent.mkdir(parents=True, exist_ok=True)
  small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
  Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR).save(path)
  return path


def write_labels(path: Path, rows: list[dict], columns=None) -> Path:
  columns = columns or list(rows[0])
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)
  return path


def csv_folder(root: Path, per_class: dict[str, int], group_size: int = 1, split=None,
               seed: int = 0) -> Path:
  """DIR/labels.csv + DIR/img/<class>_<i>.png; a group per `group_size` images of a class
  (column 'group' when group_size > 1); `split(class, i)` fills a 'split' column."""
  rows = []
  for c, n in per_class.items():
    for i in range(n):
      rel = f"img/{c}_{i}.png"
      picture(root / rel, seed * 100003 + len(rows))
      row = {"image": rel, "label": c}
      if group_size > 1:
        row["group"] = f"{c}-p{i // group_size}"
      if split is not None:
        row["split"] = split(c, i)
      rows.append(row)
  write_labels(root / folder.LABELS_CSV, rows)
  return root


def cfg(tmp_path: Path, path, **kw) -> SimpleNamespace:
  base = {"name": "folder", "path": str(path), "data_dir": str(tmp_path / "tfds"),
          "stored_size": SIZE, "split_seed": 0, "val_fraction": 0.2, "test_fraction": 0.2,
          "classes": (), "unlabeled": ()}
  base.update(kw)
  return SimpleNamespace(**base)


def split_ids(ds) -> dict[str, list[str]]:
  return {s: ds.metadata(s)["image_id"].tolist() for s in ("train", "val", "test")}


# ----------------------------------------------------------------------------- splits


def test_seeded_grouped_stratified_splits(tmp_path):
  counts = {"a": 20, "b": 30, "c": 10}
  root = csv_folder(tmp_path / "d", counts, group_size=2)
  ds = registry.get(cfg(tmp_path, root))
  assert ds.meta.class_names == ("a", "b", "c")
  d = ds.describe()
  assert d["lesion_grouped"] and not d["given_splits"] and d["listing"]["groups"] == 30
  where: dict[str, str] = {}
  for split, frac in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
    y, m = ds.labels(split), ds.metadata(split)
    for g in m["lesion_id"]:  # the group is the lesion id: no group in two splits
      assert where.setdefault(g, split) == split, g
    per_class = np.bincount(y, minlength=3)
    for k, (name, n) in enumerate(counts.items()):
      # Stratified: within one group (2 images) of the class's share.
      assert abs(per_class[k] - frac * n) <= 2, (split, name, per_class)
    src = ds.source(split)
    for i in (0, len(src) - 1):
      ex = src[i]
      assert ex["image"].shape == (SIZE, SIZE, 3) and ex["label"] == y[i]
      assert m["image_id"][i].startswith(f"img/{ds.meta.class_names[y[i]]}_")
  # Seeded: the same seed gives the same split, another seed another one.
  listing = folder.read_listing(str(root))
  ids = lambda seed: {s: [r.id for r in recs] for s, recs in  # noqa: E731
                      fullres.assign_splits(listing, seed, 0.2, 0.2).items()}
  assert ids(0) == ids(0) == {s: ds.ids(s).tolist() for s in ("train", "val", "test")}
  assert ids(1) != ids(0)
  other = registry.get(cfg(tmp_path, root, split_seed=1))
  assert split_ids(other) != split_ids(ds) and other.version_dir != ds.version_dir
  assert "_seed1_" in other.version_dir


def test_given_splits_are_respected(tmp_path):
  given = lambda c, i: ("train", "train", "val", "test")[i % 4]  # noqa: E731
  root = csv_folder(tmp_path / "d", {"x": 8, "y": 8}, split=given)
  ds = registry.get(cfg(tmp_path, root, split_seed=5))
  for split in ("train", "val", "test"):
    expected = [f"img/{c}_{i}.png" for c in "xy" for i in range(8) if given(c, i) == split]
    assert sorted(ds.metadata(split)["image_id"].tolist()) == expected
  assert ds.describe()["given_splits"] and "_given_" in ds.version_dir
  # Seed and fractions do not matter with given splits: the same prepared records.
  again = registry.get(cfg(tmp_path, root, split_seed=9, val_fraction=0.3))
  assert again.version_dir == ds.version_dir


# ----------------------------------------------------------------------------- layouts, classes


def test_both_layouts_give_the_same_classes_and_images(tmp_path):
  sub = tmp_path / "sub"
  rows = []
  for k, c in enumerate(("nevus", "melanoma", "bcc")):
    for i in range(4):
      picture(sub / c / ("deeper" if i == 3 else "") / f"{i}.png", 10 * k + i)
  (sub / "README.txt").write_text("files directly in DIR are ignored")
  (sub / "nevus" / "notes.txt").write_text("not an image extension: ignored")
  flat = tmp_path / "flat"
  for p in sorted(sub.rglob("*.png")):
    rel = p.relative_to(sub).as_posix()
    (flat / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(p, flat / rel)
    rows.append({"image": rel, "label": rel.split("/")[0]})
  write_labels(flat / folder.LABELS_CSV, rows)
  a, b = folder.read_listing(str(sub)), folder.read_listing(str(flat))
  assert a.class_names == b.class_names == ("bcc", "melanoma", "nevus")
  assert a.summary["form"] == "subfolders" and b.summary["form"] == "labels.csv"
  key = lambda listing: sorted((r.metadata["image_id"], listing.class_names[r.label])  # noqa: E731
                               for r in listing.records)
  assert key(a) == key(b) and len(key(a)) == 12
  assert ("nevus/deeper/3.png", "nevus") in key(a)  # class folders are searched recursively
  da, db = registry.get(cfg(tmp_path, sub)), registry.get(cfg(tmp_path, flat))
  assert da.meta == db.meta
  for ds in (da, db):
    src = ds.source("test")
    assert all(src[i]["image"].shape == (SIZE, SIZE, 3) for i in range(len(src)))


def test_class_order_from_data_or_config(tmp_path):
  root = tmp_path / "d"
  for k, c in enumerate(("zeta", "Alpha", "beta")):
    for i in range(3):
      picture(root / c / f"{i}.png", 10 * k + i)
  sorted_ds = registry.get(cfg(tmp_path, root))
  assert sorted_ds.meta.class_names == ("Alpha", "beta", "zeta")  # Python string order
  fixed = registry.get(cfg(tmp_path, root, classes=("zeta", "Alpha", "beta")))
  assert fixed.meta.class_names == ("zeta", "Alpha", "beta")
  assert fixed.version_dir != sorted_ds.version_dir  # the class order is part of the name
  for ds in (sorted_ds, fixed):
    for split in ("train", "val", "test"):
      m, y = ds.metadata(split), ds.labels(split)
      assert [p.split("/")[0] for p in m["image_id"]] == [ds.meta.class_names[k] for k in y]
  assert json.loads((Path(fixed.version_dir) / "metadata.json").read_text())[
      "class_names"] == ["zeta", "Alpha", "beta"]


# ----------------------------------------------------------------------------- unlabelled


def test_unlabeled_source_drops_near_duplicates_of_val_and_test(tmp_path, caplog):
  root = csv_folder(tmp_path / "d", {"a": 6, "b": 6, "c": 6})
  plain = registry.get(cfg(tmp_path, root))
  assert plain.unlabeled_source() is None and "unlabeled" not in plain.describe()
  pool = tmp_path / "pool"
  for i in range(5):
    picture(pool / ("nested" if i > 2 else "") / f"u{i}.jpg", 5000 + i, size=40)
  (pool / ".hidden.jpg").write_bytes(b"hidden files are skipped")
  test_image = plain.metadata("test")["image_id"][1]
  test_id = int(plain.ids("test")[1])
  shutil.copy(root / test_image, pool / "copy_of_a_test_image.png")
  caplog.set_level(logging.INFO)
  ds = registry.get(cfg(tmp_path, root, unlabeled=(str(pool),)))
  assert ds.version_dir == plain.version_dir  # the labelled records are not rewritten
  u = ds.unlabeled_source()
  assert len(u) == 5
  for i in range(len(u)):
    ex = u[i]
    assert ex["image"].shape == (SIZE, SIZE, 3) and ex["image"].dtype == np.uint8
    assert ex["label"] == -1 and isinstance(ex["id"], int)
  info = ds.describe()["unlabeled"]
  assert info["found"] == 6 and info["used"] == 5 and info["dropped_near_duplicates"] == 1
  assert info["dropped"][0]["split"] == "test" and info["dropped"][0]["id"] == test_id
  assert info["dropped"][0]["image"].endswith("copy_of_a_test_image.png")
  assert any("1 dropped as near-duplicates" in r.getMessage() for r in caplog.records)
  # Prepared once: opening it again reuses the pool.
  meta = Path(info["prepared_dir"]) / "metadata.json"
  before = meta.stat().st_mtime_ns
  again = registry.get(cfg(tmp_path, root, unlabeled=(str(pool),)))
  assert len(again.unlabeled_source()) == 5 and meta.stat().st_mtime_ns == before


def test_every_dataset_has_unlabeled_source(data_dir, tmp_path):
  from derm_jax import config_lib
  c = config_lib.data()
  c.data_dir = data_dir
  assert registry.get(c).unlabeled_source() is None
  pool = tmp_path / "pool"
  for i in range(3):
    picture(pool / f"{i}.png", 900 + i, size=50)
  c.unlabeled = (str(pool),)
  u = registry.get(c).unlabeled_source()  # DermaMNIST: stored at its own 28 px
  assert len(u) == 3 and u[0]["image"].shape == (28, 28, 3) and u[0]["label"] == -1


# ----------------------------------------------------------------------------- bad input


def _bad(tmp_path: Path, kind: str) -> tuple[SimpleNamespace, str]:
  """A broken input of `kind`; returns its config and a text its DataError must hold."""
  d = tmp_path / "d"
  if kind == "path_missing":
    return cfg(tmp_path, tmp_path / "nowhere"), "nowhere: folder not found (data_config.path)"
  if kind == "path_is_file":
    (tmp_path / "file").write_text("x")
    return cfg(tmp_path, tmp_path / "file"), "file: is not a folder (data_config.path)"
  if kind == "path_empty":
    return cfg(tmp_path, ""), "data_config.path is empty; config.data.name='folder'"
  if kind == "empty_unlabeled":
    csv_folder(d, {"a": 3, "b": 3})
    (tmp_path / "pool" / "sub").mkdir(parents=True)
    (tmp_path / "pool" / "sub" / "notes.txt").write_text("no images")
    return (cfg(tmp_path, d, unlabeled=(str(tmp_path / "pool"),)),
            "pool: no .jpg/.jpeg/.png/.bmp/.tif/.tiff images in this folder or its subfolders")
  if kind == "classes_unknown":
    csv_folder(d, {"a": 3, "b": 3})
    return cfg(tmp_path, d, classes=("a", "b", "ghost")), "names 'ghost', which has no images"
  if kind == "classes_case":
    csv_folder(d, {"a": 3, "b": 3})
    return (cfg(tmp_path, d, classes=("a", "B")),
            "names 'B', which has no images in " f"{d / 'labels.csv'}; the data have 'b', "
            "which differs only in case/whitespace")
  if kind == "classes_lacking":
    csv_folder(d, {"a": 3, "b": 3, "c": 3})
    return cfg(tmp_path, d, classes=("b", "a")), "lacks 'c', which has 3 image(s)"
  if kind == "one_class":
    csv_folder(d, {"a": 3})
    return cfg(tmp_path, d), "only one class (['a'])"
  if kind == "too_few":
    csv_folder(d, {"a": 4, "rare": 2})
    return cfg(tmp_path, d), ("class 'rare' has too few images to stratify: 2 image(s); at "
                              "least 3 images per class are needed")
  if kind == "too_few_groups":
    csv_folder(d, {"a": 6, "b": 6}, group_size=3)
    return cfg(tmp_path, d), ("class 'a' has too few images to stratify: 6 image(s) in 2 "
                              "group(s); at least 3 groups (patients/lesions) per class")
  if kind == "empty_class_folder":
    for c in ("a", "b"):
      for i in range(3):
        picture(d / c / f"{i}.png", i)
    (d / "c").mkdir()
    return cfg(tmp_path, d), f"{d / 'c'}: class folder holds no"
  if kind == "unlabeled_inside":
    for c in ("a", "b"):
      for i in range(3):
        picture(d / c / f"{i}.png", i)
    picture(d / "pool" / "u.png", 7)
    return (cfg(tmp_path, d, unlabeled=(str(d / "pool"),)),
            "the unlabelled folder is inside config.data.path")
  if kind == "folder_case":
    for c in ("Nevus", "nevus", "mel"):
      for i in range(3):
        picture(d / c / f"{i}.png", i)
    return cfg(tmp_path, d), "class folders 'Nevus' (folder"
  if kind == "no_labels_csv":  # a labelled folder whose labels.csv was forgotten
    csv_folder(d, {"a": 4, "b": 4}, seed=0)
    (d / folder.LABELS_CSV).unlink()
    return cfg(tmp_path, d), (f"{d}: no labels.csv found, and one subfolder ('img'), which "
                              "would be the only class")
  if kind.startswith("labels_csv_is_"):  # labels.csv that is not a readable file
    csv_folder(d, {"a": 4, "b": 4})
    path = d / folder.LABELS_CSV
    path.unlink()
    what = kind[len("labels_csv_is_"):]
    if what == "folder":
      path.mkdir()
    elif what == "fifo":
      os.mkfifo(path)
    elif what == "dev_zero":
      path.symlink_to("/dev/zero")
    elif what == "broken_link":
      path.symlink_to(d / "gone.csv")
    return cfg(tmp_path, d), {
        "folder": f"{path}: labels CSV is a folder, not a file",
        "fifo": f"{path}: labels CSV is a FIFO (named pipe), not a file",
        "dev_zero": f"{path}: labels CSV is a device (a link to /dev/zero), not a file",
        "broken_link": f"{path}: labels CSV is a broken link (to '{d / 'gone.csv'}')"}[what]
  # labels.csv cases: a valid table, then one thing broken.
  csv_folder(d, {"a": 4, "b": 4})
  path = d / folder.LABELS_CSV
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  columns = list(rows[0])
  if kind == "duplicate":
    rows[5]["image"] = "./" + rows[1]["image"]
    text = f"line 7: image './{rows[1]['image']}' already listed on line 3 (duplicate image)"
  elif kind == "missing_image":
    (d / rows[2]["image"]).unlink()
    text = f"line 4: image '{rows[2]['image']}' not found"
  elif kind == "not_an_image":
    (d / rows[3]["image"]).write_bytes(b"this is a text file, not a picture")
    text = f"line 5: {d / rows[3]['image']}: not an image file"
  elif kind == "corrupt_image":
    picture(d / "big.png", 77, size=64)
    (d / rows[3]["image"]).write_bytes((d / "big.png").read_bytes()[:200])  # truncated
    text = f"{d / rows[3]['image']}: unreadable or corrupt image ({path} line 5)"
  elif kind == "split_value":
    columns.append("split")
    for i, r in enumerate(rows):
      r["split"] = ("train", "val", "test")[i % 3]
    rows[4]["split"] = "holdout"
    text = "line 6 (image 'img/b_0.png'): split 'holdout' is not one of train, val, test"
  elif kind == "label_variant":
    rows[1]["label"] = "Nevus "
    rows[6]["label"] = "nevus"
    text = "labels 'Nevus ' (line 3) and 'nevus' (line 8) differ only in case/whitespace"
  elif kind == "given_split_empty":
    columns.append("split")
    for i, r in enumerate(rows):
      r["split"] = ("train", "test")[i % 2]
    text = "the 'split' column gives no images to ['val']"
  elif kind == "group_spans_splits":
    columns += ["group", "split"]
    for i, r in enumerate(rows):
      r["group"], r["split"] = f"P{i}", ("train", "val", "test", "train")[i % 4]
    rows[6]["group"] = "P1"  # P1 is on line 3 (val); line 8 is test
    text = ("group 'P1' spans the given splits: 'val' (line 3) and 'test' (line 8); all "
            "images of one group (patient/lesion) must share a split")
  elif kind == "outside_absolute":  # a listed absolute path is never opened
    rows[2]["image"] = "/etc/passwd"
    text = (f"line 4: image '/etc/passwd' lies outside {d}; the paths in labels.csv are "
            "relative to its folder")
  elif kind == "outside_dotdot":
    picture(tmp_path / "elsewhere.png", 5)
    rows[3]["image"] = "img/../../elsewhere.png"
    text = f"line 5: image 'img/../../elsewhere.png' lies outside {d}"
  elif kind == "unknown_column":
    columns.append("grup")
    for r in rows:
      r["grup"] = "x"
    text = "unexpected column(s) ['grup']"
  else:
    raise AssertionError(kind)
  write_labels(path, rows, columns)
  return cfg(tmp_path, d), text


BAD = ["path_missing", "path_is_file", "path_empty", "empty_unlabeled", "classes_unknown",
       "classes_case", "classes_lacking", "one_class", "too_few", "too_few_groups",
       "empty_class_folder", "folder_case", "duplicate", "missing_image", "not_an_image",
       "corrupt_image", "split_value", "label_variant", "group_spans_splits",
       "unknown_column", "unlabeled_inside", "given_split_empty", "no_labels_csv",
       "labels_csv_is_folder", "labels_csv_is_fifo", "labels_csv_is_dev_zero",
       "labels_csv_is_broken_link", "outside_absolute", "outside_dotdot"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, kind):
  config, text = _bad(tmp_path, kind)
  with pytest.raises(DataError) as err:
    registry.get(config)
  message = str(err.value)
  assert text in message and "\n" not in message, message
  data_dir = Path(config.data_dir)
  if kind == "empty_unlabeled":  # the labelled splits are fine and stay prepared
    assert not (data_dir / "unlabeled_pool").exists()
  else:
    assert not data_dir.exists() or not any(data_dir.rglob("*")), list(data_dir.rglob("*"))


def test_images_elsewhere_through_a_link_inside_the_folder(tmp_path):
  """The way to use images kept outside DIR (paths that leave DIR are refused): a link
  inside DIR; the listed path is read through it."""
  csv_folder(tmp_path / "store", {"a": 4, "b": 4})
  d = tmp_path / "d"
  d.mkdir()
  (d / "img").symlink_to(tmp_path / "store" / "img")
  shutil.copy(tmp_path / "store" / folder.LABELS_CSV, d / folder.LABELS_CSV)
  listing = folder.read_listing(str(d))
  assert len(listing.records) == 8
  assert all(r.path.startswith(str(d / "img") + os.sep) for r in listing.records)


def test_cli_prints_one_line(tmp_path):
  """`config.data.path` not a folder: `error: ...` on one line, exit status 1."""
  r = run_main(["--config=configs/classify.py", f"--workdir={tmp_path / 'w'}",
                "--config.data.name=folder", f"--config.data.path={tmp_path / 'nowhere'}",
                "--config.init.source=scratch"], timeout=300)
  assert r.returncode == 1, r.stderr[-2000:]
  lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
  assert len(lines) == 1 and "nowhere: folder not found" in lines[0], r.stderr[-2000:]


def test_config_validation_of_own_data_fields():
  sys.path.insert(0, os.path.join(REPO, "configs"))
  import classify

  from derm_jax import validate
  c = classify.get_config()
  c.data.name = "folder"
  c.data.classes = ("a", "a")
  c.data.unlabeled = ("",)
  problems = validate.config_problems(c)
  assert any(p.startswith("config.data.path is empty; data.name='folder'") for p in problems)
  assert any(p.startswith("config.data.classes=('a', 'a') must be a tuple of distinct")
             for p in problems)
  assert any(p.startswith("config.data.unlabeled=('',) must be a tuple of folder paths")
             for p in problems)
  c = classify.get_config()
  c.data.classes = ("a", "b")
  assert any("only used with data.name='folder'" in p for p in validate.config_problems(c))
  c.data.classes = ()
  c.data.unlabeled = ("/some/folder",)
  assert not [p for p in validate.config_problems(c) if p.startswith("config.data")]


# ----------------------------------------------------------------------------- outside sets


def test_outside_labels_csv_mapped_by_name(tmp_path, caplog):
  images = tmp_path / "outside"
  rows = [{"image": "m/1.png", "label": "Melanoma"},   # case differs: still 'melanoma'
          {"image": "o/2.png", "label": "other"},
          {"image": "s/3.png", "label": "scc"},        # a class the run lacks
          {"image": "m/4", "label": "Melanoma"}]       # no extension: 4.png is found
  for k, r in enumerate(rows):
    picture(images / (r["image"] if "." in r["image"] else r["image"] + ".png"), 300 + k)
  csv_path = write_labels(tmp_path / "labels.csv", rows)
  run_classes = ("benign_nevus", "melanoma", "other")
  caplog.set_level(logging.INFO)
  src = isic.IsicSource(images, csv_path, image_size=12, class_names=run_classes)
  assert len(src) == 3 and src.class_names == run_classes
  assert [src[i]["label"] for i in range(3)] == [1, 2, 1]
  assert src.image_ids == ("m/1.png", "o/2.png", "m/4")
  assert src[2]["image"].shape == (12, 12, 3)
  s = src.summary()
  assert s["format"] == "labels" and s["used"] == 3 and s["skipped_by_reason"] == {"scc": 1}
  assert s["classes_lacking"] == ["benign_nevus"] and s["classes_extra"] == ["scc"]
  assert s["per_class"] == {"benign_nevus": 0, "melanoma": 2, "other": 1}
  assert any("lacks: ['benign_nevus']" in r.getMessage() and "['scc']" in r.getMessage()
             for r in caplog.records)
  # Without the run's classes: the file's own classes, sorted.
  own = isic.read_ground_truth(csv_path)
  assert own.class_names == ("Melanoma", "other", "scc") and own.labels.tolist() == [0, 1, 2, 0]
  # None of the run's classes: one clear error.
  with pytest.raises(DataError, match="no rows with a class of the run"):
    isic.IsicSource(images, csv_path, class_names=("x", "y"))


def test_outside_isic_layout_mapped_by_name_to_the_run_order():
  run_classes = ("vasc", "scc", "nv", "mel", "df", "bkl", "bcc", "akiec")  # any order
  src = isic.IsicSource(ISIC_2018 / "ISIC2018_Task3_Training_Input",
                        ISIC_2018 / "ISIC2018_Task3_Training_GroundTruth.csv",
                        class_names=run_classes)
  with open(ISIC_2018 / "ISIC2018_Task3_Training_GroundTruth.csv", newline="") as f:
    truth = {r["image"]: next(c for c in r if c != "image" and float(r[c]) == 1.0)
             for r in csv.DictReader(f)}
  for image_id, label in zip(src.image_ids, src.labels, strict=True):
    expected = isic.COLUMNS_2018[truth[image_id]]
    assert run_classes[label] == expected
  s = src.summary()
  assert s["classes_lacking"] == ["scc"] and s["classes_extra"] == [] and s["used"] == 14


# ----------------------------------------------------------------------------- realistic


def test_worked_example_from_the_ham10000_sample(tmp_path):
  out = tmp_path / "example"
  r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_folder_example.py"),
                      str(out)], capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  with open(out / "labelled" / "labels.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  ds = registry.get(cfg(tmp_path, out / "labelled", stored_size=32,
                        unlabeled=(str(out / "unlabelled"),)))
  assert ds.meta.class_names == ("benign_nevus", "melanoma", "other")
  d = ds.describe()
  assert sum(d["splits"].values()) == len(rows) == 46 and d["lesion_grouped"]
  lesion_split: dict[str, str] = {}
  for split in ("train", "val", "test"):
    m = ds.metadata(split)
    assert (np.bincount(ds.labels(split), minlength=3) >= 1).all()  # every class, every split
    for les in m["lesion_id"]:
      assert lesion_split.setdefault(les, split) == split
    assert set(m["sex"]) <= {"male", "female", "unknown", ""}
    assert not np.isnan(m["age"]).all()
  assert d["unlabeled"]["found"] == 36 and d["unlabeled"]["dropped_near_duplicates"] == 0
  assert len(ds.unlabeled_source()) == 36
  # The leakage audit works on it: lesion ids known, no lesion shared across splits.
  from derm_jax.data import audit
  result = audit.find_leaks(ds)
  assert result.lesion_ids is not None and not any(p.same_lesion for p in result.pairs)


# ----------------------------------------------------------------------------- end to end


def test_class_order_flows_to_predictions(tmp_path):
  classes = ("zz_rare", "Benign", "mel")  # custom names, fixed order (not sorted)
  root = csv_folder(tmp_path / "d", {"mel": 8, "zz_rare": 6, "Benign": 10}, seed=3)
  work = tmp_path / "w"
  r = run_main(["--config=configs/classify.py", f"--workdir={work}",
                "--config.data.name=folder", f"--config.data.path={root}",
                f"--config.data.data_dir={tmp_path / 'tfds'}",
                f"--config.data.classes={classes!r}",
                "--config.init.source=scratch", "--config.image_size=32",
                "--config.data.stored_size=32", "--config.total_steps=2",
                "--config.batch_size=8", "--config.eval_batch_size=8"])
  assert r.returncode == 0, r.stderr[-4000:]
  with open(work / "test_predictions.csv", newline="") as f:
    header, *rows = list(csv.reader(f))
  assert [h for h in header if h.startswith("p_")] == [f"p_{c}" for c in classes]
  # label and pred are class names (not indices), each the row's own
  assert rows and all(r[1] in classes and r[-1] in classes for r in rows)
  from derm_jax.evaluation.predictions import read_predictions_csv
  p = read_predictions_csv(work / "test_predictions.csv")
  assert [classes[i] for i in p.labels] == [r[1] for r in rows]
  assert [classes[i] for i in p.preds] == [r[-1] for r in rows]
  metrics = json.loads((work / "test_metrics.json").read_text())
  assert metrics["class_names"] == list(classes)


def test_unlabeled_images_reach_pretraining_and_never_evaluation(data_dir, tmp_path):
  """The VAE (the self-supervised stage) trains on the training split and the unlabelled
  pool; a classifier trains on the labelled split only; evaluation reads val and test,
  which hold none of the pool's images."""
  from derm_jax.tasks import classifier as classifier_task
  from derm_jax.tasks import vae as vae_task
  from derm_jax.train import feed
  sys.path.insert(0, os.path.join(REPO, "tests", "configs"))
  import tiny_classify
  import tiny_vae
  pool = tmp_path / "pool"
  for i in range(40):
    picture(pool / f"u{i}.png", 7000 + i, size=40)
  c = tiny_vae.get_config()
  c.data.data_dir = data_dir
  c.data.unlabeled = (str(pool),)
  task = vae_task.build(c)
  source, _ = feed.training_split(task)
  n_train = len(task.dataset.source("train"))
  assert len(source) == n_train + 40 and task.steps_per_epoch == (n_train + 40) // 16
  pool_images = {source[i]["image"].tobytes() for i in range(n_train, n_train + 40)}
  assert len(pool_images) == 40 and all(source[i]["label"] == -1
                                        for i in range(n_train, n_train + 40))
  for split in ("val", "test"):
    evaluated = task.dataset.source(split)
    assert not pool_images & {evaluated[i]["image"].tobytes() for i in range(len(evaluated))}
  k = tiny_classify.get_config()
  k.data = c.data
  k.init.source = "scratch"
  ktask = classifier_task.build(k)
  assert len(feed.training_split(ktask)[0]) == n_train  # labels only
