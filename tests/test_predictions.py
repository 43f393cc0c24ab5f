"""Tests of derm_jax.evaluation.predictions: prediction CSV round trip, malformed files, ISIC submission "
"CSVs."""

from __future__ import annotations

import csv
import pathlib

import numpy as np
import pytest

from derm_jax.evaluation.predictions import (
  PredictionsError,
  read_predictions_csv,
  write_isic_submission_csv,
  write_predictions_csv,
)

NAMES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def _probs(n, k=7, seed=0):
  p = np.random.default_rng(seed).random((n, k))
  return p / p.sum(axis=1, keepdims=True)


def test_round_trip_exact(tmp_path):
  probs = _probs(5)
  labels = np.array([5, 0, 6, 5, 2])
  path = write_predictions_csv(
    tmp_path / "a" / "test_predictions.csv", [10, 11, "x_12", 13, 14], labels, probs, NAMES
  )
  p = read_predictions_csv(path)
  assert p.image_ids == ("10", "11", "x_12", "13", "14")
  assert p.class_names == NAMES
  assert p.labels.dtype == np.int64
  np.testing.assert_array_equal(p.labels, labels)
  np.testing.assert_array_equal(p.probs, probs)  # exact float round trip
  np.testing.assert_array_equal(p.preds, probs.argmax(axis=1))
  header, *rows = (tmp_path / "a" / "test_predictions.csv").read_text().splitlines()
  assert header == "image_id,label,p_akiec,p_bcc,p_bkl,p_df,p_mel,p_nv,p_vasc,pred"
  cells = [r.split(",") for r in rows]
  assert [c[1] for c in cells] == [NAMES[i] for i in labels]  # class names, not indices
  assert [c[-1] for c in cells] == [NAMES[i] for i in probs.argmax(axis=1)]
  assert not [
    f for f in (tmp_path / "a").iterdir() if f.name != "test_predictions.csv"
  ]  # no temp file


def test_old_files_with_class_indices_still_read(tmp_path):
  """Runs written by earlier versions hold integer indices in label and pred."""
  path = tmp_path / "old.csv"
  path.write_text("image_id,label,p_a,p_b,p_c,pred\n"
                  "1,2,0.1,0.2,0.7,2\n"
                  "2,0,0.6,0.3,0.1,0\n"
                  "3,1,0.6,0.3,0.1,0\n")
  p = read_predictions_csv(path)
  assert p.class_names == ("a", "b", "c")
  np.testing.assert_array_equal(p.labels, [2, 0, 1])
  assert p.labels.dtype == np.int64


@pytest.mark.parametrize("names", [("1", "0", "2"), ("0", "1", "2"), ("10", "3")])
def test_class_names_that_are_integers(tmp_path, names):
  """Class names like '1', '0' (a folder of numbered classes): the new file (names) and an
  old one (indices) of the same predictions both read back as the same indices."""
  k = len(names)
  probs = _probs(6, k, seed=1)
  labels = np.arange(6) % k
  new = read_predictions_csv(write_predictions_csv(tmp_path / "n.csv", range(6), labels, probs,
                                                   names))
  np.testing.assert_array_equal(new.labels, labels)
  old = tmp_path / "o.csv"
  rows = [f"{i},{labels[i]},{','.join(repr(float(x)) for x in probs[i])},{probs[i].argmax()}"
          for i in range(6)]
  old.write_text("image_id,label," + ",".join(f"p_{c}" for c in names) + ",pred\n"
                 + "\n".join(rows) + "\n")
  np.testing.assert_array_equal(read_predictions_csv(old).labels, labels)


def test_numpy_and_bytes_ids(tmp_path):
  ids = [np.int64(7), np.bytes_(b"ISIC_0000001"), b"ISIC_2", np.str_("x")]
  p = read_predictions_csv(write_predictions_csv(tmp_path / "p.csv", ids, None, _probs(4), NAMES))
  assert p.image_ids == ("7", "ISIC_0000001", "ISIC_2", "x")


def test_unknown_labels(tmp_path):
  path = write_predictions_csv(
    tmp_path / "p.csv", ["ISIC_1", "ISIC_2"], None, _probs(2, 3), ["a", "b", "c"]
  )
  rows = list(csv.reader(pathlib.Path(path).read_text().splitlines()))
  assert rows[1][1] == "" and rows[2][1] == ""
  p = read_predictions_csv(path)
  assert p.labels is None and p.probs.shape == (2, 3)


def test_write_rejects_bad_input(tmp_path):
  with pytest.raises(ValueError, match="shape"):
    write_predictions_csv(tmp_path / "p.csv", [1, 2], [0, 1], _probs(3), NAMES)
  with pytest.raises(ValueError, match=r"labels must be integers in \[0, 7\)"):
    write_predictions_csv(tmp_path / "p.csv", [1, 2], [0, 7], _probs(2), NAMES)
  with pytest.raises(ValueError, match="unique"):
    write_predictions_csv(tmp_path / "p.csv", [1, 1], [0, 1], _probs(2), NAMES)
  assert not (tmp_path / "p.csv").exists()


def _good_file(tmp_path):
  return write_predictions_csv(
    tmp_path / "p.csv", [1, 2, 3], [0, 1, 2], _probs(3, 3), ["a", "b", "c"]
  )


@pytest.mark.parametrize(
  "edit, message",
  [
    (lambda lines: ["id,label,p_a,p_b,p_c,pred"] + lines[1:], r":1: bad header"),
    (lambda lines: lines[:2] + [lines[2] + ",0.5"] + lines[3:], r":3: expected 6 cells, got 7"),
    (
      lambda lines: lines[:3] + [lines[3].replace(lines[3].split(",")[2], "abc", 1)],
      r":4: p_a is not a number",
    ),
    (
      lambda lines: lines[:3] + [lines[3].replace(lines[3].split(",")[2], "nan", 1)],
      r":4: p_a is not finite",
    ),
    (lambda lines: lines[:1] + ["1,7" + lines[1][3:]] + lines[2:], r":2: label 7 outside \[0, 3\)"),
    (lambda lines: lines[:1] + ["1,zz" + lines[1][3:]] + lines[2:], r":2: label 'zz' is neither"),
    (
      lambda lines: lines[:2] + ["1" + lines[2][1:]] + lines[3:],
      r":3: duplicate image_id '1' \(first on line 2\)",
    ),
    (
      lambda lines: lines[:2] + ["2," + lines[2][3:]] + lines[3:],
      r":3: the label column is blank on some rows only",
    ),
    (lambda lines: [], r":1: empty file"),
  ],
)
def test_malformed_files_name_file_and_line(tmp_path, edit, message):
  path = _good_file(tmp_path)
  lines = pathlib.Path(path).read_text().splitlines()
  with open(path, "w") as f:
    f.write("\n".join(edit(lines)) + "\n" if edit(lines) else "")
  with pytest.raises(PredictionsError, match=message) as e:
    read_predictions_csv(path)
  assert str(path) in str(e.value)


def test_missing_file(tmp_path):
  with pytest.raises(PredictionsError, match="missing predictions file"):
    read_predictions_csv(tmp_path / "nope.csv")


def test_isic_submission_columns(tmp_path):
  probs = _probs(2)
  path = write_isic_submission_csv(
    tmp_path / "s18.csv", ["ISIC_0000001", "ISIC_0000002"], probs, NAMES
  )
  rows = list(csv.reader(pathlib.Path(path).read_text().splitlines()))
  assert rows[0] == ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
  assert rows[1][0] == "ISIC_0000001"
  got = np.array(rows[1][1:], dtype=float)
  want = probs[0, [NAMES.index(c) for c in ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")]]
  np.testing.assert_array_equal(got, want)

  # Class order of the model does not matter; 2019 adds AK naming, SCC and UNK = 0.
  order = ("nv", "mel", "vasc", "df", "bkl", "bcc", "akiec")
  shuffled = probs[:, [NAMES.index(c) for c in order]]
  path = write_isic_submission_csv(tmp_path / "s19.csv", ["a", "b"], shuffled, order, fmt="2019")
  rows = list(csv.reader(pathlib.Path(path).read_text().splitlines()))
  assert rows[0] == ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
  np.testing.assert_array_equal(
    np.array(rows[2][1:8], dtype=float),
    probs[1, [NAMES.index(c) for c in ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")]],
  )
  assert rows[2][8:] == ["0.0", "0.0"]


def test_isic_submission_errors(tmp_path):
  with pytest.raises(ValueError, match="fmt"):
    write_isic_submission_csv(tmp_path / "s.csv", ["a"], _probs(1), NAMES, fmt="2020")
  with pytest.raises(ValueError, match=r"lack \['vasc'\]"):
    write_isic_submission_csv(tmp_path / "s.csv", ["a"], _probs(1, 6), NAMES[:6])
  with pytest.raises(ValueError, match="no column"):
    write_isic_submission_csv(tmp_path / "s.csv", ["a"], _probs(1, 8), NAMES + ("scc",), fmt="2018")
