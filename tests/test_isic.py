"""Tests for the ISIC 2018 / 2019 ground-truth reader and image source."""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from derm_jax.data import isic
from derm_jax.data.errors import DataError
from derm_jax.data.registry import HAM10000_CLASSES as CLASS_NAMES

SAMPLE = Path(__file__).resolve().parent / "data" / "isic2018_sample"
IMAGES = SAMPLE / "ISIC2018_Task3_Training_Input"
CSV_2018 = SAMPLE / "ISIC2018_Task3_Training_GroundTruth.csv"
# Optional checks against the full DermaMNIST file, if its path is given in DERMAMNIST_NPZ.
SHARED_NPZ = Path(os.environ.get("DERMAMNIST_NPZ") or "/nonexistent/dermamnist.npz")
HEADER_2018 = ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
HEADER_2019 = ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]


def sample_rows() -> list[dict[str, str]]:
  with open(CSV_2018, newline="") as f:
    return list(csv.DictReader(f))


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
  return path


def one_hot(header: list[str], image_id: str, cls: str | None, **extra) -> list:
  row = [image_id] + [("1.0" if c == cls else "0.0") for c in header[1:]]
  for col, value in extra.items():
    row[header.index(col)] = value
  return row


# ----------------------------------------------------------------------------- 2018 sample


def test_2018_sample_reads_with_mapped_labels():
  gt = isic.read_ground_truth(CSV_2018)
  assert gt.format == "2018" and len(gt) == 14 and not gt.skipped
  expected = {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AKIEC": "akiec", "BKL": "bkl",
              "DF": "df", "VASC": "vasc"}
  for image_id, label, row in zip(gt.image_ids, gt.labels, sample_rows(), strict=True):
    assert image_id == row["image"]
    hot = [c for c in HEADER_2018[1:] if float(row[c]) == 1.0]
    assert CLASS_NAMES[label] == expected[hot[0]]
  assert gt.summary()["per_class"] == {name: 2 for name in CLASS_NAMES}


def test_2018_sample_source_images():
  src = isic.IsicSource(IMAGES, CSV_2018)
  assert len(src) == 14
  for i in (0, 5, 13):
    ex = src[i]
    assert ex["image"].shape == (28, 28, 3) and ex["image"].dtype == np.uint8
    assert ex["label"] == src.labels[i] and ex["id"] == i
    assert 20 < ex["image"].mean() < 250  # a real picture, not blank
  big = isic.IsicSource(IMAGES, CSV_2018, image_size=64)
  assert big[3]["image"].shape == (64, 64, 3)
  squash = isic.IsicSource(IMAGES, CSV_2018, crop="none")
  assert not np.array_equal(squash[0]["image"], src[0]["image"])
  s = src.summary()
  assert s["used"] == 14 and s["skipped"] == 0 and s["format"] == "2018"


def test_center_crop_resize_of_600x450():
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (450, 600, 3), np.uint8)
  pixels[:, :75] = 0  # the side strips that a centred square crop removes
  pixels[:, 525:] = 0
  out = isic.resize_like_dermamnist(Image.fromarray(pixels), 28)
  expected = np.asarray(Image.fromarray(pixels[:, 75:525]).resize((28, 28),
                                                                  Image.Resampling.BILINEAR))
  np.testing.assert_array_equal(out, expected)


@pytest.mark.skipif(not SHARED_NPZ.exists(), reason="set DERMAMNIST_NPZ to the full dermamnist.npz")
def test_resize_matches_dermamnist_images():
  """The sample images are also in DermaMNIST: our 28px version must be nearly identical."""
  with np.load(SHARED_NPZ) as f:
    pool = np.concatenate([f[f"{s}_images"] for s in ("train", "val", "test")]).astype(
        np.float32)
  src = isic.IsicSource(IMAGES, CSV_2018)
  squash = isic.IsicSource(IMAGES, CSV_2018, crop="none")
  errs, errs_squash = [], []
  for i in range(len(src)):
    for s, out in ((src, errs), (squash, errs_squash)):
      buf = io.BytesIO()  # the DermaMNIST file here went through JPEG quality 75
      Image.fromarray(s[i]["image"]).save(buf, "JPEG", quality=75)
      img = np.asarray(Image.open(buf), np.float32)
      out.append(np.abs(pool - img).mean(axis=(1, 2, 3)).min())
  assert np.median(errs) < 1.5, errs
  assert np.median(errs_squash) > 4 * np.median(errs)


# ----------------------------------------------------------------------------- 2019 format


def test_2019_csv_skips_scc_and_unk(tmp_path):
  header = HEADER_2019 + ["score_weight"]
  ids = [r["image"] for r in sample_rows()]
  rows = [
      one_hot(header, ids[0], "AK", score_weight="1.0"),
      one_hot(header, "ISIC_9999990", "SCC", score_weight="1.0"),
      one_hot(header, ids[4], "NV", score_weight="0.5"),
      one_hot(header, "ISIC_9999991", "UNK", score_weight="0.0"),
      one_hot(header, ids[5], "MEL", score_weight="1.0"),
      one_hot(header, "ISIC_9999992", "UNK", score_weight="1.0"),
  ]
  path = write_csv(tmp_path / "ISIC_2019_GroundTruth.csv", header, rows)
  gt = isic.read_ground_truth(path)
  assert gt.format == "2019"
  assert gt.image_ids == (ids[0], ids[4], ids[5])
  assert [CLASS_NAMES[y] for y in gt.labels] == ["akiec", "nv", "mel"]
  assert [(s.line, s.image_id, s.reason) for s in gt.skipped] == [
      (3, "ISIC_9999990", "SCC"), (5, "ISIC_9999991", "UNK"), (7, "ISIC_9999992", "UNK")]
  summary = gt.summary()
  assert summary["rows"] == 6 and summary["used"] == 3
  assert summary["skipped_by_reason"] == {"SCC": 1, "UNK": 2}
  # Skipped rows need no image file.
  src = isic.IsicSource(IMAGES, path)
  assert len(src) == 3 and src[0]["label"] == CLASS_NAMES.index("akiec")
  assert src.summary()["skipped"] == 3


def test_other_extensions_are_found(tmp_path):
  images = tmp_path / "imgs"
  images.mkdir()
  ids = [r["image"] for r in sample_rows()[:3]]
  Image.open(IMAGES / f"{ids[0]}.jpg").save(images / f"{ids[0]}.png")
  shutil.copy(IMAGES / f"{ids[1]}.jpg", images / f"{ids[1]}.jpeg")
  shutil.copy(IMAGES / f"{ids[2]}.jpg", images / f"{ids[2]}.JPG")
  path = write_csv(tmp_path / "gt.csv", HEADER_2018,
                   [one_hot(HEADER_2018, i, "NV") for i in ids])
  src = isic.IsicSource(images, path)
  assert [Path(p).suffix for p in src.paths] == [".png", ".jpeg", ".JPG"]
  assert src[0]["image"].shape == (28, 28, 3)


# ----------------------------------------------------------------------------- errors


def _bad_csv(tmp_path: Path, name: str) -> tuple[Path, str]:
  """Writes the bad CSV `name`; returns it and a regex its DataError must match."""
  ids = [r["image"] for r in sample_rows()]
  h = HEADER_2018
  p = tmp_path / f"{name}.csv"
  if name == "no_image_column":
    write_csv(p, ["img"] + h[1:], [one_hot(h, ids[0], "NV")])
    return p, "no 'image' column"
  if name == "missing_class_2018":
    write_csv(p, [c for c in h if c != "DF"], [[ids[0], "0", "1", "0", "0", "0", "0"]])
    return p, r"missing class column\(s\) \['DF'\]"
  if name == "missing_class_2019":
    hh = [c for c in HEADER_2019 if c != "UNK"]
    write_csv(p, hh, [one_hot(hh, ids[0], "NV")])
    return p, r"missing class column\(s\) \['UNK'\]"
  if name == "unknown_column":
    hh = h + ["comment"]
    write_csv(p, hh, [one_hot(hh, ids[0], "NV", comment="x")])
    return p, r"unexpected column\(s\) \['comment'\]"
  if name == "no_label":
    write_csv(p, h, [one_hot(h, ids[0], "NV"), one_hot(h, ids[1], None)])
    return p, f"line 3 \\(image '{ids[1]}'\\): no label"
  if name == "two_labels":
    write_csv(p, h, [one_hot(h, ids[0], "NV", MEL="1.0")])
    return p, f"line 2 \\(image '{ids[0]}'\\): several labels"
  if name == "value_not_01":
    write_csv(p, h, [one_hot(h, ids[0], "NV", BCC="0.5")])
    return p, f"line 2 \\(image '{ids[0]}'\\): column BCC has value '0.5'"
  if name == "value_text":
    write_csv(p, h, [one_hot(h, ids[0], "NV", DF="yes")])
    return p, "column DF has value 'yes'"
  if name == "value_empty":
    write_csv(p, h, [one_hot(h, ids[0], "NV", DF="")])
    return p, "column DF has value ''"
  if name == "duplicate_id":
    write_csv(p, h, [one_hot(h, ids[0], "NV"), one_hot(h, ids[0], "NV")])
    return p, "line 3: image .* already listed on line 2"
  if name == "empty_id":
    write_csv(p, h, [one_hot(h, "", "NV")])
    return p, "line 2: empty image id"
  if name == "short_row":
    write_csv(p, h, [[ids[0], "1.0"]])
    return p, "line 2 has 2 fields"
  if name == "header_only":
    write_csv(p, h, [])
    return p, "no rows"
  if name == "empty_file":
    p.write_text("")
    return p, "empty file"
  if name == "both_formats":
    hh = h + ["AK"]
    write_csv(p, hh, [one_hot(hh, ids[0], "NV")])
    return p, "both 'AKIEC'"
  raise KeyError(name)


BAD_CSVS = ["no_image_column", "missing_class_2018", "missing_class_2019", "unknown_column",
            "no_label", "two_labels", "value_not_01", "value_text", "value_empty",
            "duplicate_id", "empty_id", "short_row", "header_only", "empty_file",
            "both_formats"]


@pytest.mark.parametrize("name", BAD_CSVS)
def test_bad_csv_gives_data_error(tmp_path, name):
  path, pattern = _bad_csv(tmp_path, name)
  with pytest.raises(DataError, match=pattern) as err:
    isic.read_ground_truth(path)
  assert str(path) in str(err.value)
  with pytest.raises(DataError):
    isic.IsicSource(IMAGES, path)


def test_missing_csv_and_folder(tmp_path):
  with pytest.raises(DataError, match="ground-truth CSV not found") as err:
    isic.IsicSource(IMAGES, tmp_path / "nope.csv")
  assert "nope.csv" in str(err.value)
  with pytest.raises(DataError, match="image folder not found"):
    isic.IsicSource(tmp_path / "no_images", CSV_2018)


def test_missing_image_file(tmp_path):
  ids = [r["image"] for r in sample_rows()]
  path = write_csv(tmp_path / "gt.csv", HEADER_2018,
                   [one_hot(HEADER_2018, ids[0], "NV"),
                    one_hot(HEADER_2018, "ISIC_0000404", "MEL")])
  with pytest.raises(DataError, match=r"'ISIC_0000404' \(line 3\)") as err:
    isic.IsicSource(IMAGES, path)
  assert str(path) in str(err.value) and str(IMAGES) in str(err.value)


def test_unreadable_image(tmp_path):
  images = tmp_path / "imgs"
  images.mkdir()
  (images / "ISIC_0000001.jpg").write_bytes(b"not a jpeg at all")
  with open(IMAGES / "ISIC_0024412.jpg", "rb") as f:
    (images / "ISIC_0000002.jpg").write_bytes(f.read()[:2000])  # truncated JPEG
  path = write_csv(tmp_path / "gt.csv", HEADER_2018,
                   [one_hot(HEADER_2018, "ISIC_0000001", "NV"),
                    one_hot(HEADER_2018, "ISIC_0000002", "MEL")])
  src = isic.IsicSource(images, path)  # existence is checked up front, decoding is lazy
  for i, name in enumerate(("ISIC_0000001.jpg", "ISIC_0000002.jpg")):
    with pytest.raises(DataError, match="unreadable image") as err:
      src[i]
    assert name in str(err.value)


def test_all_rows_skipped(tmp_path):
  path = write_csv(tmp_path / "gt.csv", HEADER_2019,
                   [one_hot(HEADER_2019, "ISIC_1", "SCC"), one_hot(HEADER_2019, "ISIC_2", "UNK")])
  assert len(isic.read_ground_truth(path)) == 0
  with pytest.raises(DataError, match="no rows with a class of the run"):
    isic.IsicSource(IMAGES, path)


# ----------------------------------------------------------------------------- PIL modes


def _rgb(image: Image.Image) -> np.ndarray:
  return np.asarray(isic.image_to_rgb(image, "x.png")).astype(int)


def _png_roundtrip(image: Image.Image) -> Image.Image:
  buf = io.BytesIO()
  image.save(buf, format="PNG")
  buf.seek(0)
  return Image.open(buf)


def test_16_bit_gray_scaled_by_bit_depth():
  values = np.array([[0, 257 * 100, 32896, 65535]], np.uint16)
  expected = np.array([0, 100, 128, 255])
  for mode, dtype in (("I;16", "<u2"), ("I;16B", ">u2")):
    im = Image.frombytes(mode, (4, 1), values.astype(dtype).tobytes())
    for image in (im, _png_roundtrip(im)):
      out = _rgb(image)
      assert out.shape == (1, 4, 3)
      np.testing.assert_array_equal(out[0], np.repeat(expected[:, None], 3, axis=1))
  out = _rgb(Image.fromarray(values.astype(np.int32)))  # mode 'I'
  np.testing.assert_array_equal(out[0, :, 0], expected)
  with pytest.raises(DataError, match=r"x.png: PIL mode 'I' .*-5\.\.70000"):
    _rgb(Image.fromarray(np.array([[-5, 70000]], np.int32)))


def test_palette_modes_and_transparency_onto_black():
  pal = Image.new("P", (3, 1))
  pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
  pal.putdata([0, 1, 2])
  np.testing.assert_array_equal(_rgb(pal)[0], [[255, 0, 0], [0, 255, 0], [0, 0, 255]])
  pal.info["transparency"] = 1  # index 1 fully transparent
  np.testing.assert_array_equal(_rgb(pal)[0], [[255, 0, 0], [0, 0, 0], [0, 0, 255]])
  np.testing.assert_array_equal(_rgb(_png_roundtrip(pal))[0],
                                [[255, 0, 0], [0, 0, 0], [0, 0, 255]])
  pa = pal.convert("PA")
  assert pa.mode == "PA"
  np.testing.assert_array_equal(_rgb(pa)[0], [[255, 0, 0], [0, 0, 0], [0, 0, 255]])


def test_alpha_composited_onto_black():
  rgba = Image.new("RGBA", (3, 1))
  rgba.putdata([(200, 100, 50, 255), (200, 100, 50, 0), (200, 100, 50, 128)])
  out = _rgb(rgba)[0]
  np.testing.assert_array_equal(out[:2], [[200, 100, 50], [0, 0, 0]])
  assert np.abs(out[2] - [100, 50, 25]).max() <= 1
  la = Image.new("LA", (2, 1))
  la.putdata([(200, 255), (200, 0)])
  np.testing.assert_array_equal(_rgb(_png_roundtrip(la))[0], [[200] * 3, [0] * 3])


def test_gray_bilevel_cmyk_ycbcr():
  np.testing.assert_array_equal(_rgb(Image.new("L", (1, 1), 77))[0, 0], [77, 77, 77])
  bilevel = Image.new("1", (2, 1))
  bilevel.putdata([0, 255])
  np.testing.assert_array_equal(_rgb(bilevel)[0], [[0, 0, 0], [255, 255, 255]])
  cmyk = Image.new("CMYK", (3, 1))
  cmyk.putdata([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255)])
  np.testing.assert_array_equal(_rgb(cmyk)[0], [[255, 255, 255], [0, 255, 255], [0, 0, 0]])
  ycc = Image.new("RGB", (1, 1), (10, 200, 30)).convert("YCbCr")
  assert np.abs(_rgb(ycc)[0, 0] - [10, 200, 30]).max() <= 3


def test_float_and_other_modes_refused_by_name():
  with pytest.raises(DataError, match=r"x.png: PIL mode 'F' \(32-bit float\)"):
    _rgb(Image.new("F", (2, 2), 0.5))
  with pytest.raises(DataError, match=r"x.png: PIL mode 'HSV'"):
    _rgb(Image.new("HSV", (2, 2)))


def test_16_bit_png_in_isic_folder_is_not_white(tmp_path):
  images = tmp_path / "imgs"
  images.mkdir()
  gray = np.full((8, 8), 257 * 60, np.uint16)
  Image.frombytes("I;16", (8, 8), gray.astype("<u2").tobytes()).save(images / "ISIC_1.png")
  Image.new("RGBA", (8, 8), (90, 60, 30, 0)).save(images / "ISIC_2.png")
  path = write_csv(tmp_path / "gt.csv", HEADER_2018,
                   [one_hot(HEADER_2018, "ISIC_1", "NV"), one_hot(HEADER_2018, "ISIC_2", "MEL")])
  src = isic.IsicSource(images, path, image_size=8, crop="none")
  np.testing.assert_array_equal(src[0]["image"], np.full((8, 8, 3), 60, np.uint8))
  assert src[1]["image"].max() == 0  # fully transparent: black
