"""Per-image prediction files: the CSV every classifier run writes, and ISIC submission CSVs.

Prediction CSV (`write_predictions_csv` / `read_predictions_csv`), one row per image:

  image_id,label,p_akiec,p_bcc,p_bkl,p_df,p_mel,p_nv,p_vasc,pred
  17,nv,0.01,0.02,0.05,0.001,0.12,0.79,0.009,nv

  * image_id: the image's id (string or integer, written as text);
  * label: the true class's name, or an empty cell when the ground truth is unknown (then
    every row's label is empty);
  * p_<class>: the predicted probability of each class, in the label order, written
    with Python's shortest round-trip float repr (so reading returns the exact values);
  * pred: the name of the class of highest probability (ties -> the first in label order).
The class names (and their order, the index of `Predictions.labels`) are recovered from the
p_<class> header. Files written before class names were used hold integer indices in
label and pred; `read_predictions_csv` reads both (see `_class_cells` for class names that
are themselves integers). Files are written atomically
(`fileio.atomic_write_text`: a temporary file in the same folder then os.replace, or one
object upload for a `gs://` path), so a reader never sees half a file.

ISIC challenge submission CSV (`write_isic_submission_csv`): the official column order of
the ISIC 2018 task 3 or ISIC 2019 challenge, mapped from the DermaMNIST class codes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from derm_jax import fileio
from derm_jax.errors import DermJaxError

__all__ = [
  "ISIC_2018_COLUMNS",
  "ISIC_2019_COLUMNS",
  "Predictions",
  "PredictionsError",
  "read_predictions_csv",
  "write_isic_submission_csv",
  "write_predictions_csv",
]

PROB_PREFIX = "p_"

# ISIC column -> DermaMNIST class code (None = no DermaMNIST counterpart, written as 0.0
# unless the class names include the code in brackets).
ISIC_2018_COLUMNS = (
  ("MEL", "mel"),
  ("NV", "nv"),
  ("BCC", "bcc"),
  ("AKIEC", "akiec"),
  ("BKL", "bkl"),
  ("DF", "df"),
  ("VASC", "vasc"),
)
ISIC_2019_COLUMNS = (
  ("MEL", "mel"),
  ("NV", "nv"),
  ("BCC", "bcc"),
  ("AK", "akiec"),
  ("BKL", "bkl"),
  ("DF", "df"),
  ("VASC", "vasc"),
  ("SCC", "scc"),
  ("UNK", None),
)
# Classes an ISIC 2019 file may score as 0.0 when the model does not know them.
_OPTIONAL_2019 = ("scc",)


class PredictionsError(DermJaxError, ValueError):
  """A malformed predictions file (the message names the file and line)."""


@dataclasses.dataclass(frozen=True)
class Predictions:
  """The content of a predictions CSV.

  image_ids: one id per row, as text; labels: (N,) int64 true classes, or None when the
  file holds no ground truth; probs: (N, K) float64; class_names: the K class names.
  """

  image_ids: tuple[str, ...]
  labels: np.ndarray | None
  probs: np.ndarray
  class_names: tuple[str, ...]

  @property
  def preds(self) -> np.ndarray:
    """(N,) int64 argmax of probs (ties -> lowest index)."""
    if self.probs.shape[0] == 0:
      return np.zeros((0,), np.int64)
    return np.argmax(self.probs, axis=1).astype(np.int64)

  def __len__(self) -> int:
    return len(self.image_ids)


def _check_class_names(class_names: Sequence[str]) -> tuple[str, ...]:
  names = tuple(str(c) for c in class_names)
  if not names:
    raise ValueError("class_names must not be empty")
  if len(set(names)) != len(names):
    raise ValueError(f"class_names must be unique, got {names}")
  for c in names:
    if not c or any(ch in c for ch in ',"\r\n'):
      raise ValueError(
        f"class name {c!r} must be non-empty and free of commas, quotes and newlines"
      )
  return names


def _id_text(image_id: Any) -> str:
  """An image id as text: bytes (e.g. from a TFDS/Grain source) are decoded as UTF-8."""
  if isinstance(image_id, (bytes, np.bytes_)):
    return bytes(image_id).decode("utf-8")
  if isinstance(image_id, np.generic):
    image_id = image_id.item()
  return str(image_id)


def _check_probs(probs: Any, n: int, k: int) -> np.ndarray:
  probs = np.asarray(probs, dtype=np.float64)
  if probs.shape != (n, k):
    raise ValueError(f"probs must have shape (N, K) = ({n}, {k}), got {probs.shape}")
  if not np.all(np.isfinite(probs)):
    raise ValueError("probs must be finite")
  return probs


def write_predictions_csv(
  path: str | os.PathLike,
  ids: Sequence[Any],
  labels: Any | None,
  probs: Any,
  class_names: Sequence[str],
) -> str:
  """Writes the predictions CSV described in the module docstring, atomically; returns `path`.

  ids: N image ids (str, int, numpy scalars; bytes are decoded as UTF-8); labels: N integer
  classes in [0, K), or None when the ground truth is unknown; probs: (N, K) probabilities,
  K = len(class_names).
  """
  names = _check_class_names(class_names)
  ids = [_id_text(i) for i in ids]
  n, k = len(ids), len(names)
  for i in ids:
    if not i or any(ch in i for ch in "\r\n"):
      raise ValueError(f"image id {i!r} must be non-empty and on one line")
  if len(set(ids)) != n:
    raise ValueError("image ids must be unique")
  probs = _check_probs(probs, n, k)
  if labels is not None:
    labels = np.asarray(labels)
    if labels.shape != (n,):
      raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if n and (not np.all(labels == np.round(labels)) or labels.min() < 0 or labels.max() >= k):
      raise ValueError(f"labels must be integers in [0, {k})")
    labels = labels.astype(np.int64)
  preds = np.argmax(probs, axis=1) if n else np.zeros((0,), np.int64)
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(["image_id", "label", *[PROB_PREFIX + c for c in names], "pred"])
  for r in range(n):
    w.writerow(
      [
        ids[r],
        "" if labels is None else names[int(labels[r])],
        *[repr(float(p)) for p in probs[r]],
        names[int(preds[r])],
      ]
    )
  return fileio.atomic_write_text(path, buf.getvalue())


def read_predictions_csv(path: str | os.PathLike) -> Predictions:
  """Reads a file written by `write_predictions_csv` (class names in label and pred), or by
  an older version (integer class indices there); labels come back as indices either way.

  Raises PredictionsError naming the file and line for: a missing or empty file, a bad
  header, a row with the wrong number of cells, a non-finite or non-numeric probability,
  a label or pred outside [0, K), duplicate image ids, or a label column that is blank on
  some rows only.
  """
  path = os.fspath(path)
  if not fileio.isfile(path):
    raise PredictionsError(f"missing predictions file: {path}")
  with fileio.open(path, newline="") as f:
    rows = list(csv.reader(f))
  if not rows:
    raise PredictionsError(f"{path}:1: empty file (expected a header line)")
  header = [h.strip() for h in rows[0]]
  if (
    len(header) < 4
    or header[0] != "image_id"
    or header[1] != "label"
    or header[-1] != "pred"
    or not all(h.startswith(PROB_PREFIX) and len(h) > len(PROB_PREFIX) for h in header[2:-1])
  ):
    raise PredictionsError(
      f"{path}:1: bad header {','.join(header)!r}; expected "
      f"image_id,label,{PROB_PREFIX}<class>...,pred"
    )
  names = tuple(h[len(PROB_PREFIX) :] for h in header[2:-1])
  if len(set(names)) != len(names):
    raise PredictionsError(f"{path}:1: duplicate class columns in the header")
  k = len(names)
  ids: list[str] = []
  label_cells: list[str] = []
  pred_cells: list[str] = []
  probs = np.zeros((max(len(rows) - 1, 0), k), dtype=np.float64)
  seen: dict[str, int] = {}
  lines: list[int] = []
  n = 0
  for line, row in enumerate(rows[1:], start=2):
    if not row or (len(row) == 1 and not row[0].strip()):
      continue  # blank line
    if len(row) != k + 3:
      raise PredictionsError(f"{path}:{line}: expected {k + 3} cells, got {len(row)}")
    image_id = row[0].strip()
    if not image_id:
      raise PredictionsError(f"{path}:{line}: empty image_id")
    if image_id in seen:
      raise PredictionsError(
        f"{path}:{line}: duplicate image_id {image_id!r} (first on line {seen[image_id]})"
      )
    seen[image_id] = line
    label_cells.append(row[1].strip())
    for j, cell in enumerate(row[2 : 2 + k]):
      try:
        p = float(cell)
      except ValueError:
        raise PredictionsError(
          f"{path}:{line}: {header[2 + j]} is not a number: {cell!r}"
        ) from None
      if not math.isfinite(p):
        raise PredictionsError(f"{path}:{line}: {header[2 + j]} is not finite: {cell!r}")
      probs[n, j] = p
    pred_cells.append(row[-1].strip())
    ids.append(image_id)
    lines.append(line)
    n += 1
  probs = probs[:n]
  by_name = _class_cells(label_cells, pred_cells, names, probs)
  labels: list[int | None] = [
    _parse_class(t, names, path, line, "label", by_name) if t else None
    for t, line in zip(label_cells, lines, strict=True)
  ]
  for t, line in zip(pred_cells, lines, strict=True):
    _parse_class(t, names, path, line, "pred", by_name)
  known = [x is not None for x in labels]
  if any(known) and not all(known):
    i = next(i for i, x in enumerate(labels) if x is None) if known[0] else known.index(True)
    raise PredictionsError(
      f"{path}:{lines[i]}: the label column is blank on some rows only (here "
      f"{'blank' if labels[i] is None else 'set'}, on line {lines[0]} "
      f"{'set' if known[0] else 'blank'})"
    )
  label_arr = np.asarray(labels, dtype=np.int64) if (n and all(known)) else None
  return Predictions(image_ids=tuple(ids), labels=label_arr, probs=probs, class_names=names)


def _as_index(text: str) -> int | None:
  try:
    return int(text)
  except ValueError:
    return None


def _class_cells(label_cells: Sequence[str], pred_cells: Sequence[str],
                 names: tuple[str, ...], probs: np.ndarray) -> bool:
  """Whether the file's label and pred cells are class names (this version's files) rather
  than class indices (older files). Decided once per file: names when every non-blank cell
  is a class name. Only where class names are themselves integers ('0', '1', ...) in an
  order that is not their index can a cell be read both ways differently; then the reading
  under which pred is the argmax of the probabilities on more rows wins."""
  cells = [t for t in (*label_cells, *pred_cells) if t]
  if not all(t in names for t in cells):
    return False
  if all(_as_index(t) is None or names.index(t) == _as_index(t) for t in cells):
    return True  # no cell means something else as an index
  if not all(_as_index(t) is not None and 0 <= _as_index(t) < len(names) for t in cells):
    return True  # not an index file
  argmax = np.argmax(probs, axis=1) if len(pred_cells) else np.zeros((0,), np.int64)
  as_name = sum(names.index(t) == a for t, a in zip(pred_cells, argmax, strict=True))
  as_index = sum(_as_index(t) == a for t, a in zip(pred_cells, argmax, strict=True))
  return as_name >= as_index


def _parse_class(text: str, names: tuple[str, ...], path: str, line: int, what: str,
                 by_name: bool = False) -> int:
  if by_name:
    return names.index(text)
  try:
    v = int(text)
  except ValueError:
    if text in names:  # a class name among indices
      return names.index(text)
    raise PredictionsError(
      f"{path}:{line}: {what} {text!r} is neither a class index nor a class name"
    ) from None
  if not 0 <= v < len(names):
    raise PredictionsError(f"{path}:{line}: {what} {v} outside [0, {len(names)})")
  return v


def isic_submission_problem(class_names: Sequence[str], fmt: str) -> str | None:
  """Why the run's classes cannot fill an ISIC `fmt` submission ('2018' or '2019'), or None
  when they can (what `write_isic_submission_csv` needs)."""
  if fmt not in ("2018", "2019"):
    return f"the outside set is not in an ISIC layout ({fmt!r})"
  columns = ISIC_2018_COLUMNS if fmt == "2018" else ISIC_2019_COLUMNS
  taken = {code for _, code in columns if code is not None}
  extra = [c for c in class_names if c not in taken]
  missing = [code for _, code in columns if code is not None and code not in class_names
             and not (fmt == "2019" and code in _OPTIONAL_2019)]
  if extra or missing:
    return (f"the run's classes {list(class_names)} are not the ISIC {fmt} columns' "
            f"(extra {extra}, missing {missing})")
  return None


def write_isic_submission_csv(
  path: str | os.PathLike,
  image_ids: Sequence[Any],
  probs: Any,
  class_names: Sequence[str],
  fmt: str = "2018",
) -> str:
  """Writes an ISIC challenge submission CSV (atomically); returns `path`.

  fmt '2018' (task 3): columns image,MEL,NV,BCC,AKIEC,BKL,DF,VASC.
  fmt '2019': columns image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK; SCC is the 'scc' column
  when class_names has one, else 0.0; UNK is always 0.0.
  class_names are DermaMNIST codes (akiec, bcc, bkl, df, mel, nv, vasc, in any order);
  every code an ISIC column needs must be present, and a class that no column takes
  is an error (its probability would silently be dropped).
  """
  if fmt not in ("2018", "2019"):
    raise ValueError(f"fmt must be '2018' or '2019', got {fmt!r}")
  names = _check_class_names(class_names)
  ids = [_id_text(i) for i in image_ids]
  probs = _check_probs(probs, len(ids), len(names))
  columns = ISIC_2018_COLUMNS if fmt == "2018" else ISIC_2019_COLUMNS
  taken = {code for _, code in columns if code is not None}
  extra = [c for c in names if c not in taken]
  if extra:
    raise ValueError(f"classes {extra} have no column in the ISIC {fmt} format")
  missing = [
    code
    for _, code in columns
    if code is not None and code not in names and not (fmt == "2019" and code in _OPTIONAL_2019)
  ]
  if missing:
    raise ValueError(f"class_names {names} lack {missing}, needed for the ISIC {fmt} columns")
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(["image", *[col for col, _ in columns]])
  index = [names.index(code) if code in names else None for _, code in columns]
  for r, image_id in enumerate(ids):
    w.writerow([image_id, *[("0.0" if j is None else repr(float(probs[r, j]))) for j in index]])
  return fileio.atomic_write_text(path, buf.getvalue())
