"""Tests for the leakage audit (derm_jax/data/audit.py): hashes, a planted duplicate, lesion
pairs, the outputs and the CLI, on the HAM10000 sample (tests/data/ham10000_sample)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from derm_jax.data import audit, ham10000

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "ham10000_sample"
SHARED_NPZ = os.environ.get("DERMAMNIST_NPZ")


def cfg(data_dir, **kw):
  base = {"name": "ham10000", "manual_dir": str(SAMPLE), "data_dir": str(data_dir),
          "stored_size": 64, "split_seed": 0, "val_fraction": 0.1, "test_fraction": 0.2}
  base.update(kw)
  return SimpleNamespace(**base)


def reencode(image: np.ndarray, size: int, quality: int) -> np.ndarray:
  """A resized and JPEG re-encoded copy, back at the original size."""
  s = image.shape[0]
  im = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)
  buf = io.BytesIO()
  im.resize((s, s), Image.Resampling.BILINEAR).save(buf, "JPEG", quality=quality)
  return np.asarray(Image.open(buf).convert("RGB"))


class Planted:
  """A dataset whose test split also holds a re-encoded copy of one train image (id 999),
  and optionally a test image whose lesion_id is that of a train image."""

  def __init__(self, ds, share_lesion: bool = False):
    self.ds = ds
    self.items = {s: [ds.source(s)[i] for i in range(len(ds.source(s)))]
                  for s in ("train", "val", "test")}
    original = self.items["train"][3]
    self.items["test"].append({"image": reencode(original["image"], 150, 70),
                               "label": original["label"], "id": 999})
    self.meta = {s: ds.metadata(s) for s in ("train", "val", "test")}
    lesions = list(self.meta["test"]["lesion_id"]) + ["planted"]
    if share_lesion:
      lesions[0] = self.meta["train"]["lesion_id"][5]
    self.meta["test"] = {**self.meta["test"], "lesion_id": np.array(lesions)}

  def source(self, split):
    return self.items[split]

  def metadata(self, split):
    return self.meta[split]

  def describe(self):
    return {"name": "planted"}


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
  return ham10000.Dataset(cfg(tmp_path_factory.mktemp("tfds")))


def test_phash_and_correlation_of_copies(ds):
  images = [ds.source("train")[i]["image"] for i in range(20)]
  h = audit.phash(images)
  assert h.dtype == np.uint64 and len(set(h.tolist())) == 20
  copies = audit.phash([reencode(im, 97, 75) for im in images])
  d = np.bitwise_count(h ^ copies)
  assert d.max() <= audit.DEFAULT_TOLERANCE
  corr = audit.thumbnail_correlation(np.stack([audit.thumbnail(im) for im in images]),
                                     np.stack([audit.thumbnail(reencode(im, 97, 75))
                                               for im in images]))
  assert corr.min() >= audit.DEFAULT_MIN_CORRELATION
  # A brightness change does not lower the correlation.
  brighter = np.clip(images[0].astype(int) + 20, 0, 255).astype(np.uint8)
  assert audit.thumbnail_correlation(audit.thumbnail(images[0]),
                                     audit.thumbnail(brighter)) > 0.99
  assert audit.hamming(h[:3], h[:2]).shape == (3, 2)


def test_finds_planted_duplicate_and_pairs_no_different_lesions(ds):
  result = audit.find_leaks(Planted(ds))
  assert result.lesion_ids is not None
  assert [(p.split_a, p.id_a, p.split_b, p.id_b) for p in result.pairs] == [
      ("train", int(ds.source("train")[3]["id"]), "test", 999)]
  assert result.pairs[0].near_duplicate and result.pairs[0].same_lesion is False
  free = audit.leak_free_test_ids(result)
  assert 999 not in free and len(free) == len(ds.source("test"))
  s = result.summary()
  assert s["test_images_with_near_duplicate_in_train_or_val"] == 1
  assert s["split_pairs"]["train-val"]["pairs"] == 0  # the sample's lesions are all apart


def test_shared_lesion_is_a_pair_and_outputs(ds, tmp_path):
  result = audit.find_leaks(Planted(ds, share_lesion=True))
  lesion_pairs = [p for p in result.pairs if p.same_lesion]
  assert len(lesion_pairs) == 1 and lesion_pairs[0].split_b == "test"
  leaking = {int(ds.source("test")[0]["id"]), 999}
  assert set(result.leaking_test_ids().tolist()) == leaking
  summary = audit.write_outputs(result, Planted(ds, share_lesion=True), str(tmp_path))
  assert summary["test_images_leaking"] == 2
  with open(tmp_path / "pairs.csv") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0])[:6] == ["split_a", "id_a", "split_b", "id_b", "distance",
                               "same_lesion"]
  assert sorted(r["same_lesion"] for r in rows) == ["0", "1"]
  ids = [int(x) for x in (tmp_path / "leak_free_test_ids.txt").read_text().split()]
  assert len(ids) == len(ds.source("test")) - 1 and not leaking & set(ids)
  assert (tmp_path / "pairs.png").stat().st_size > 1000
  assert json.loads((tmp_path / "summary.json").read_text())["tolerance_bits"] == 10


def test_cli(tmp_path):
  out = tmp_path / "out"
  r = subprocess.run(
      [sys.executable, "-m", "derm_jax.data.audit", "--config=configs/vae.py",
       "--config.data.name=ham10000", f"--config.data.manual_dir={SAMPLE}",
       f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.data.stored_size=32",
       f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert {p.name for p in out.iterdir()} == {"pairs.csv", "pairs.png", "summary.json",
                                             "leak_free_test_ids.txt"}
  s = json.loads((out / "summary.json").read_text())
  assert s["dataset"]["name"] == "ham10000" and s["has_lesion_ids"]
  assert s["test_images_leaking"] == 0


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_NPZ, reason="set DERMAMNIST_NPZ to the full DermaMNIST npz")
def test_full_dermamnist(tmp_path):
  """The README's figures: 32 test images have a near-duplicate in train (34 in train or
  val); through the lesion table, 693 test images from 641 lesions have a lesion with an
  image in train, and every near-duplicate is also a same-lesion pair; about 15 s."""
  from derm_jax.data import registry
  d = registry.get(SimpleNamespace(name="dermamnist", source="npz", npz_path=SHARED_NPZ,
                                   size=28, data_dir=str(tmp_path)))
  result = audit.find_leaks(d)
  s = result.summary()
  assert s["split_pairs"]["train-test"]["test_images_with_near_duplicate"] == 32
  assert s["test_images_with_near_duplicate_in_train_or_val"] == 34
  train_test = s["split_pairs"]["train-test"]
  assert train_test["test_images_sharing_a_lesion"] == 693
  assert train_test["test_lesions_shared"] == 641
  assert s["test_images_sharing_a_lesion_with_train_or_val"] == 773
  assert s["test_images_found_by"] == {"pixels_only": 0, "lesion_id_only": 739, "both": 34}
  assert s["leak_free_test_images"] == 2005 - 773


def _audit_cli(tmp_path, *args, out=None):
  """Runs the audit CLI on the HAM10000 sample config with extra `args`."""
  out = tmp_path / "out" if out is None else out
  return subprocess.run(
      [sys.executable, "-m", "derm_jax.data.audit", "--config=configs/vae.py",
       "--config.data.name=ham10000", f"--config.data.manual_dir={SAMPLE}",
       f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.data.stored_size=32",
       f"--out={out}", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def _one_line_error(r, *needles):
  assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
  err = r.stderr.strip()
  assert "\n" not in err and err.startswith("error: ") and "Traceback" not in err, err
  for needle in needles:
    assert needle in err, err
  return err


@pytest.mark.parametrize("flag, needle", [
    ("--min_correlation=nan", "min_correlation=nan"),
    ("--min_correlation=inf", "min_correlation=inf"),
    ("--min_correlation=1.5", "min_correlation=1.5"),
    ("--tolerance=65", "tolerance=65"),
    ("--tolerance=-1", "tolerance=-1"),
], ids=["nan", "inf", "above_one", "tolerance_65", "tolerance_negative"])
def test_cli_refuses_bad_thresholds_before_work(tmp_path, flag, needle):
  r = _audit_cli(tmp_path, flag)
  _one_line_error(r, needle)
  assert not (tmp_path / "out").exists() and not (tmp_path / "tfds").exists()


def test_cli_refuses_out_that_is_a_file_before_work(tmp_path):
  out = tmp_path / "summary.txt"
  out.write_text("keep")
  _one_line_error(_audit_cli(tmp_path, out=out), str(out), "not a folder")
  assert out.read_text() == "keep" and not (tmp_path / "tfds").exists()  # no audit was run
  _one_line_error(_audit_cli(tmp_path, out=out / "sub"), str(out), "not a folder")


def test_cli_reports_data_problems_in_one_line(tmp_path):
  truncated = tmp_path / "cut.npz"
  buf = io.BytesIO()
  np.savez(buf, train_images=np.zeros((4, 28, 28, 3), np.uint8))
  truncated.write_bytes(buf.getvalue()[:300])
  cases = [
      (["--config.data.manual_dir=/nonexistent/ham"], "/nonexistent/ham"),
      (["--config.data.name=no_such_dataset"], "no_such_dataset"),
      (["--config.data.name=dermamnist", "--config.data.source=npz",
        f"--config.data.npz_path={tmp_path / 'missing.npz'}"], "missing.npz"),
      (["--config.data.name=dermamnist", "--config.data.source=npz",
        f"--config.data.npz_path={truncated}"], "cut.npz"),
  ]
  for args, needle in cases:
    _one_line_error(_audit_cli(tmp_path, *args), needle)
    assert not (tmp_path / "out").exists()
