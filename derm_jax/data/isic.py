"""Outside test data (ISIC challenge layouts or a labels.csv), read as DermaMNIST-like
examples with labels in a run's class order.

Three ground-truth layouts, told apart by the CSV header:

* ISIC 2018 Task 3: ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`` (one-hot);
* ISIC 2019: ``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK`` (plus ``score_weight`` in some
  files; one-hot);
* labels.csv: ``image,label`` (the `folder` dataset's form, derm_jax/data/folder.py; the
  optional columns group, split, sex, age, localization are allowed and not used here).
  ``image`` is a path relative to the images folder (`IsicSource`'s first argument; an
  absolute path also works); without an extension, .jpg/.jpeg/.png are tried.

Classes are mapped BY NAME to the run's class list (`class_names`, in its order; default
the HAM10000 seven, `registry.HAM10000_CLASSES`). The ISIC columns name HAM10000 codes
(AKIEC and AK -> akiec, MEL -> mel, ..., 2019's SCC -> scc); a labels.csv names its classes
itself (without `class_names` its own classes, sorted, are the order). A name matches
exactly, or else case-insensitively when that picks one class. Rows of a class the run
does not have (2019's SCC for a seven-class run, a clinic's extra diagnosis) and ISIC 2019
UNK rows are skipped and counted; `summary()` names the run's classes the set lacks
('classes_lacking') and the set's classes the run lacks ('classes_extra'), and
`IsicSource` logs them.

Images are made to look like DermaMNIST's: the DermaMNIST npz used here matches
a centred square crop of each 600x450 HAM10000 image (450x450) resized with PIL's
antialiased bilinear filter (measured against the HAM10000/ISIC 2018 sample: mean absolute
difference 0.45/255 after a JPEG round trip, against 8.6/255 for resizing the whole image),
so that is the default (`crop='center'`); `crop='none'` squashes the whole image instead.
Every PIL mode an image can decode into is made 8-bit RGB explicitly (`image_to_rgb`:
16-bit gray scaled by its bit depth, transparency composited onto black) or refused with a
DataError naming the file and the mode.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging
from PIL import Image

from derm_jax.data.errors import DataError
from derm_jax.data.registry import HAM10000_CLASSES

CLASS_NAMES = HAM10000_CLASSES  # the default class list (DermaMNIST order)
# CSV column -> HAM10000 class name, per format (None: UNK, never a class).
COLUMNS_2018 = {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AKIEC": "akiec", "BKL": "bkl",
                "DF": "df", "VASC": "vasc"}
COLUMNS_2019 = {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AK": "akiec", "BKL": "bkl",
                "DF": "df", "VASC": "vasc", "SCC": "scc", "UNK": None}
# Columns known to occur in official ground-truth files that carry no label.
IGNORED_COLUMNS = ("score_weight",)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
CROPS = ("center", "none")
# labels.csv: required columns, then the optional ones (see derm_jax/data/folder.py).
LABELS_FORMAT = "labels"
LABELS_COLUMNS = ("image", "label")
LABELS_OPTIONAL_COLUMNS = ("group", "split", "sex", "age", "localization")


@dataclasses.dataclass(frozen=True)
class SkippedRow:
  """A ground-truth row left out because its class is not one of the run's classes."""

  line: int
  image_id: str
  reason: str  # the ISIC class column (e.g. 'SCC', 'UNK'), or the labels.csv label


@dataclasses.dataclass(frozen=True)
class IsicGroundTruth:
  """The usable rows of a ground-truth CSV, labels indexing `class_names`."""

  csv_path: str
  format: str  # '2018', '2019' or 'labels'
  image_ids: tuple[str, ...]  # ISIC image id, or the labels.csv image path
  labels: np.ndarray  # int64, index into class_names
  lines: tuple[int, ...]  # CSV line of each kept row (header = line 1)
  skipped: tuple[SkippedRow, ...]
  class_names: tuple[str, ...] = CLASS_NAMES  # the run's classes (the label order)
  extra_classes: tuple[str, ...] = ()  # classes of this file that the run lacks (skipped)

  def __len__(self) -> int:
    return len(self.image_ids)

  @property
  def lacking_classes(self) -> tuple[str, ...]:
    """The run's classes with no row in this file."""
    counts = np.bincount(self.labels, minlength=len(self.class_names))
    return tuple(c for c, n in zip(self.class_names, counts, strict=True) if n == 0)

  def summary(self) -> dict[str, Any]:
    """Counts for reports: rows read, used, skipped (by reason), used per class, and the
    classes the file lacks or adds with respect to the run's class list."""
    per_class = np.bincount(self.labels, minlength=len(self.class_names))
    return {
        "csv": self.csv_path,
        "format": self.format,
        "rows": len(self.image_ids) + len(self.skipped),
        "used": len(self.image_ids),
        "skipped": len(self.skipped),
        "skipped_by_reason": dict(sorted(Counter(s.reason for s in self.skipped).items())),
        "per_class": {name: int(n) for name, n in zip(self.class_names, per_class,
                                                      strict=True)},
        "class_names": list(self.class_names),
        "classes_lacking": list(self.lacking_classes),
        "classes_extra": list(self.extra_classes),
    }


def match_classes(names: Sequence[str], class_names: Sequence[str]) -> dict[str, int]:
  """name -> index in `class_names` for each of `names` that matches one: the same text,
  or else the same text ignoring case and surrounding whitespace when exactly one class
  matches that way. Names without a match are left out."""
  exact = {c: i for i, c in enumerate(class_names)}
  loose: dict[str, list[int]] = {}
  for i, c in enumerate(class_names):
    loose.setdefault(c.strip().casefold(), []).append(i)
  out = {}
  for name in names:
    if name in exact:
      out[name] = exact[name]
    elif len(loose.get(name.strip().casefold(), ())) == 1:
      out[name] = loose[name.strip().casefold()][0]
  return out


def _detect_format(csv_path: str, header: Sequence[str]) -> tuple[str, dict[str, str | None]]:
  cols = set(header)
  if "AKIEC" in cols and "AK" in cols:
    raise DataError(f"{csv_path}: has both 'AKIEC' (ISIC 2018) and 'AK' (ISIC 2019) "
                    "columns; cannot tell the format.")
  is_2019 = bool(cols & {"AK", "SCC", "UNK"})
  fmt, mapping = ("2019", COLUMNS_2019) if is_2019 else ("2018", COLUMNS_2018)
  missing = [c for c in mapping if c not in cols]
  if missing:
    raise DataError(f"{csv_path}: missing class column(s) {missing} for the ISIC {fmt} "
                    f"layout (expected image,{','.join(mapping)}, or image,label for a "
                    f"labels.csv); header is {list(header)}.")
  unknown = [c for c in header if c not in mapping and c != "image"
             and c not in IGNORED_COLUMNS]
  if unknown:
    raise DataError(f"{csv_path}: unexpected column(s) {unknown} for the ISIC {fmt} layout "
                    f"(expected image,{','.join(mapping)}).")
  return fmt, mapping


def _one_hot_value(csv_path: str, line: int, image_id: str, col: str, raw: str | None) -> bool:
  text = (raw or "").strip()
  try:
    value = float(text)
  except ValueError:
    value = None
  if value not in (0.0, 1.0):
    raise DataError(f"{csv_path}: line {line} (image {image_id!r}): column {col} has value "
                    f"{text!r}, expected 0 or 1.")
  return value == 1.0


def read_csv_rows(path: str, what: str = "file") -> list[tuple[int, list[str]]]:
  """(line number, cells) of every non-blank row of a CSV file, header included; DataError
  naming the file if it is missing or unreadable (`what` names the kind of file)."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: {what} {_not_a_file(path)}.")
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.reader(f)
      rows = [(reader.line_num, row) for row in reader]
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise DataError(f"{path}: cannot be read as a CSV file ({e}).") from e
  return [(n, r) for n, r in rows if any(cell.strip() for cell in r)]  # drop blank lines


def _not_a_file(path: str) -> str:
  """Why `path`, which is not a regular file (nor a link to one), cannot be read."""
  import stat
  if not os.path.lexists(path):
    return "not found"
  if not os.path.exists(path):
    return f"is a broken link (to {os.readlink(path)!r})"
  mode = os.stat(path).st_mode
  kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
          else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
          else "a socket" if stat.S_ISSOCK(mode) else "a special file")
  link = f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""
  return f"is {kind}{link}, not a file"


def _header(csv_path: str, rows: list[tuple[int, list[str]]]) -> list[str]:
  if not rows:
    raise DataError(f"{csv_path}: empty file (no header).")
  header = [c.strip() for c in rows[0][1]]
  if "image" not in header:
    raise DataError(f"{csv_path}: no 'image' column; header is {header}.")
  dupes = sorted(c for c, n in Counter(header).items() if n > 1)
  if dupes:
    raise DataError(f"{csv_path}: repeated column(s) {dupes}.")
  return header


# ----------------------------------------------------------------------------- labels.csv


@dataclasses.dataclass(frozen=True)
class LabelsRow:
  """One row of a labels.csv: the image path and class name as written (stripped)."""

  line: int
  image: str
  label: str
  fields: dict[str, str]  # optional columns present -> stripped value ('' when empty)


@dataclasses.dataclass(frozen=True)
class LabelsCsv:
  """A validated labels.csv: its optional columns and rows, in file order."""

  path: str
  columns: tuple[str, ...]  # the optional columns present (of LABELS_OPTIONAL_COLUMNS)
  rows: tuple[LabelsRow, ...]

  @property
  def classes(self) -> tuple[str, ...]:
    """The class names used, sorted."""
    return tuple(sorted({r.label for r in self.rows}))


def image_key(path: str) -> str:
  """The key two spellings of one image path share ('./a/b.jpg', 'a//b.jpg' -> 'a/b.jpg';
  case-insensitive where the file system is)."""
  return os.path.normcase(os.path.normpath(path.replace("\\", "/")))


def check_name_variants(names: dict[str, str], what: str, where: str) -> None:
  """DataError when two of `names` (name as written -> where it occurs) differ only in
  case or surrounding whitespace, e.g. "labels 'Nevus ' (line 3) and 'nevus' (line 7)
  differ only in case/whitespace"."""
  first: dict[str, str] = {}
  for name in names:
    key = name.strip().casefold()
    other = first.setdefault(key, name)
    if other != name:
      raise DataError(f"{where}: {what} {other!r} ({names[other]}) and {name!r} "
                      f"({names[name]}) differ only in case/whitespace; use one spelling.")


def read_labels_csv(csv_path: str | os.PathLike) -> LabelsCsv:
  """Reads and checks a labels.csv (columns image,label; optional group, split, sex, age,
  localization).

  Raises DataError naming the file (and line) for: a missing or unreadable file, a missing
  or unknown or repeated column, a row with the wrong number of fields, an empty image or
  label, an image listed twice (however its path is spelled), labels that differ only in
  case or surrounding whitespace ('Nevus ' and 'nevus'), a label with a line break, and a
  file without rows.
  """
  csv_path = os.fspath(csv_path)
  rows = read_csv_rows(csv_path, "labels CSV")
  header = _header(csv_path, rows)
  missing = [c for c in LABELS_COLUMNS if c not in header]
  if missing:
    raise DataError(f"{csv_path}: missing column(s) {missing}; a labels.csv has columns "
                    f"{','.join(LABELS_COLUMNS)} (optional: {','.join(LABELS_OPTIONAL_COLUMNS)}"
                    f"); header is {header}.")
  unknown = [c for c in header if c not in LABELS_COLUMNS + LABELS_OPTIONAL_COLUMNS]
  if unknown:
    raise DataError(f"{csv_path}: unexpected column(s) {unknown}; a labels.csv has columns "
                    f"{','.join(LABELS_COLUMNS)} and optionally "
                    f"{','.join(LABELS_OPTIONAL_COLUMNS)} (remove the others).")
  optional = tuple(c for c in LABELS_OPTIONAL_COLUMNS if c in header)
  out: list[LabelsRow] = []
  seen: dict[str, int] = {}
  raw_labels: dict[str, str] = {}
  for line, row in rows[1:]:
    if len(row) != len(header):
      raise DataError(f"{csv_path}: line {line} has {len(row)} fields, the header has "
                      f"{len(header)}.")
    cells = dict(zip(header, row, strict=True))
    image, raw = cells["image"].strip(), cells["label"]
    if not image:
      raise DataError(f"{csv_path}: line {line}: empty image path.")
    key = image_key(image)
    if key in seen:
      raise DataError(f"{csv_path}: line {line}: image {image!r} already listed on line "
                      f"{seen[key]} (duplicate image).")
    seen[key] = line
    label = raw.strip()
    if not label:
      raise DataError(f"{csv_path}: line {line} (image {image!r}): empty label.")
    if any(ch in label for ch in "\r\n\t"):
      raise DataError(f"{csv_path}: line {line} (image {image!r}): label {label!r} holds a "
                      "line break or tab.")
    raw_labels.setdefault(raw, f"line {line}")
    out.append(LabelsRow(line=line, image=image, label=label,
                         fields={c: cells[c].strip() for c in optional}))
  if not out:
    raise DataError(f"{csv_path}: header only, no rows.")
  check_name_variants(raw_labels, "labels", csv_path)
  return LabelsCsv(path=csv_path, columns=optional, rows=tuple(out))


def _labels_ground_truth(csv_path: str, class_names: Sequence[str] | None) -> IsicGroundTruth:
  table = read_labels_csv(csv_path)
  names = tuple(class_names) if class_names is not None else table.classes
  index = match_classes(table.classes, names)
  image_ids, labels, lines, skipped = [], [], [], []
  for r in table.rows:
    if r.label in index:
      image_ids.append(r.image)
      labels.append(index[r.label])
      lines.append(r.line)
    else:
      skipped.append(SkippedRow(line=r.line, image_id=r.image, reason=r.label))
  return IsicGroundTruth(csv_path=csv_path, format=LABELS_FORMAT, image_ids=tuple(image_ids),
                         labels=np.asarray(labels, dtype=np.int64), lines=tuple(lines),
                         skipped=tuple(skipped), class_names=names,
                         extra_classes=tuple(sorted({s.reason for s in skipped})))


# ----------------------------------------------------------------------------- ISIC layouts


def read_ground_truth(csv_path: str | os.PathLike,
                      class_names: Sequence[str] | None = None) -> IsicGroundTruth:
  """Parses an ISIC 2018 Task 3 or ISIC 2019 one-hot ground-truth CSV, or a labels.csv
  (image,label), with labels indexing `class_names` (the run's classes; default: the
  HAM10000 seven for the ISIC layouts, the file's own classes, sorted, for a labels.csv).

  Rows whose class is not in `class_names`, and ISIC 2019 UNK rows, are skipped and
  counted. Raises DataError (naming the file, and the line and image id where that applies)
  for: a missing or unreadable file, no 'image' column, a missing class column, an
  unexpected column, an empty or repeated image id, a value other than 0/1, a row with no
  label or with several labels, and a file without rows (for a labels.csv, everything
  `read_labels_csv` rejects).
  """
  csv_path = os.fspath(csv_path)
  rows = read_csv_rows(csv_path, "ground-truth CSV")
  header = _header(csv_path, rows)
  if "label" in header:
    return _labels_ground_truth(csv_path, class_names)
  names = tuple(class_names) if class_names is not None else CLASS_NAMES
  fmt, mapping = _detect_format(csv_path, header)
  index = match_classes([c for c in mapping.values() if c is not None], names)
  col_index = {c: i for i, c in enumerate(header)}

  image_ids: list[str] = []
  labels: list[int] = []
  lines: list[int] = []
  skipped: list[SkippedRow] = []
  extra: set[str] = set()
  seen: dict[str, int] = {}
  for line, row in rows[1:]:
    if len(row) != len(header):
      raise DataError(f"{csv_path}: line {line} has {len(row)} fields, the header has "
                      f"{len(header)}.")
    image_id = row[col_index["image"]].strip()
    if not image_id:
      raise DataError(f"{csv_path}: line {line}: empty image id.")
    if image_id in seen:
      raise DataError(f"{csv_path}: line {line}: image {image_id!r} already listed on line "
                      f"{seen[image_id]}.")
    seen[image_id] = line
    hot = [c for c in mapping
           if _one_hot_value(csv_path, line, image_id, c, row[col_index[c]])]
    if not hot:
      raise DataError(f"{csv_path}: line {line} (image {image_id!r}): no label (all class "
                      "columns are 0).")
    if len(hot) > 1:
      raise DataError(f"{csv_path}: line {line} (image {image_id!r}): several labels "
                      f"{hot}; expected exactly one.")
    target = mapping[hot[0]]
    if target is None or target not in index:
      skipped.append(SkippedRow(line=line, image_id=image_id, reason=hot[0]))
      if target is not None:
        extra.add(target)
      continue
    image_ids.append(image_id)
    labels.append(index[target])
    lines.append(line)
  if not image_ids and not skipped:
    raise DataError(f"{csv_path}: header only, no rows.")
  return IsicGroundTruth(csv_path=csv_path, format=fmt, image_ids=tuple(image_ids),
                         labels=np.asarray(labels, dtype=np.int64), lines=tuple(lines),
                         skipped=tuple(skipped), class_names=names,
                         extra_classes=tuple(sorted(extra)))


# Transparent pixels are composited onto black, like the dark vignette of dermoscopy images.
BACKGROUND = (0, 0, 0)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_DIRECT_MODES = ("RGB", "L", "1", "CMYK", "YCbCr")
_ALPHA_MODES = ("RGBA", "LA", "RGBa", "La", "PA")
ACCEPTED_MODES = ("RGB", "RGBA", "L", "LA", "1", "P", "PA", "CMYK", "YCbCr", "I",
                  *_SIXTEEN_BIT_MODES)


def image_to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
  """`image` as 8-bit RGB, whatever PIL mode it was decoded into; DataError otherwise.

  * RGB, L (gray), 1 (bilevel), CMYK, YCbCr: PIL's conversion.
  * I;16, I;16L, I;16B, I;16N (16-bit gray, e.g. a 16-bit PNG): scaled by the 16-bit range,
    v8 = round(v * 255 / 65535), then gray to RGB. I (32-bit integers): taken as 16-bit
    if every value is in 0..65535, else refused.
  * RGBA, LA, PA, and P or L/RGB with a transparency key: alpha-composited onto black
    (`BACKGROUND`); P without transparency: its palette colours.
  * Any other mode (F floats, LAB, HSV, I;16S, ...): refused by name.

  `name` (the file) is used in the error message.
  """
  mode = image.mode
  if mode in ("P", "L", "RGB") and "transparency" in image.info:
    image = image.convert("RGBA")
  elif mode == "PA":
    image = image.convert("RGBA")
  mode = image.mode
  if mode in _ALPHA_MODES:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
  if mode == "P":
    return image.convert("RGB")
  if mode in _DIRECT_MODES:
    return image if mode == "RGB" else image.convert("RGB")
  if mode in _SIXTEEN_BIT_MODES or mode == "I":
    values = np.asarray(image).astype(np.int64)
    if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
      raise DataError(f"{name}: PIL mode 'I' (32-bit integer) image with values "
                      f"{values.min()}..{values.max()} outside the 16-bit range; convert it "
                      "to 8-bit RGB first.")
    gray = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")
  kind = {"F": "32-bit float"}.get(mode, "unsupported")
  raise DataError(f"{name}: PIL mode {mode!r} ({kind}) images are not supported; convert the "
                  f"file to 8-bit RGB (accepted modes: {', '.join(ACCEPTED_MODES)}).")


def resize_like_dermamnist(image: Image.Image, image_size: int,
                           crop: str = "center", name: str = "image") -> np.ndarray:
  """RGB uint8 (image_size, image_size, 3): centred square crop (or none), bilinear resize.

  Any accepted PIL mode is first made 8-bit RGB by `image_to_rgb` (DataError naming `name`
  and the mode otherwise)."""
  if crop not in CROPS:
    raise ValueError(f"crop={crop!r}; valid: {CROPS}")
  image = image_to_rgb(image, name)
  if crop == "center":
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    image = image.crop((left, top, left + s, top + s))
  image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
  return np.asarray(image, dtype=np.uint8)


def _find_image_files(images_dir: str, gt: IsicGroundTruth) -> list[str]:
  if gt.format == LABELS_FORMAT:
    return _find_listed_files(images_dir, gt)
  try:
    names = os.listdir(images_dir)
  except OSError as e:
    raise DataError(f"{images_dir}: image folder cannot be listed ({e}).") from e
  by_stem: dict[str, str] = {}
  for name in sorted(names):
    stem, ext = os.path.splitext(name)
    if ext.lower() in IMAGE_EXTENSIONS:
      prev = by_stem.get(stem)
      # Prefer the first extension in IMAGE_EXTENSIONS order (.jpg over .png).
      if prev is None or (IMAGE_EXTENSIONS.index(ext.lower())
                          < IMAGE_EXTENSIONS.index(os.path.splitext(prev)[1].lower())):
        by_stem[stem] = name
  paths: list[str] = []
  missing: list[tuple[int, str]] = []
  for image_id, line in zip(gt.image_ids, gt.lines, strict=True):
    name = by_stem.get(image_id)
    if name is None:
      missing.append((line, image_id))
    else:
      paths.append(os.path.join(images_dir, name))
  _raise_missing(gt, images_dir, missing)
  return paths


def _raise_missing(gt: IsicGroundTruth, images_dir: str, missing: list[tuple[int, str]]):
  if missing:
    shown = ", ".join(f"{i!r} (line {n})" for n, i in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise DataError(f"{gt.csv_path}: {len(missing)} image(s) not found in {images_dir} as "
                    f"{'/'.join(IMAGE_EXTENSIONS)}: {shown}{more}.")


def _find_listed_files(images_dir: str, gt: IsicGroundTruth) -> list[str]:
  """labels.csv: each image path relative to `images_dir` (or absolute); one without an
  extension is looked for with each of IMAGE_EXTENSIONS."""
  paths: list[str] = []
  missing: list[tuple[int, str]] = []
  for image, line in zip(gt.image_ids, gt.lines, strict=True):
    path = os.path.join(images_dir, image)
    if not os.path.isfile(path) and not os.path.splitext(image)[1]:
      path = next((path + e for e in IMAGE_EXTENSIONS if os.path.isfile(path + e)), path)
    if os.path.isfile(path):
      paths.append(path)
    else:
      missing.append((line, image))
  _raise_missing(gt, images_dir, missing)
  return paths


class IsicSource:
  """Random-access outside images as DermaMNIST-like examples.

  `source[i]` -> {'image': uint8 (image_size, image_size, 3), 'label': int (index into
  `class_names`, the run's classes), 'id': i (row index among the kept rows;
  `image_ids[i]` is the ISIC id or labels.csv path)}. The CSV is an ISIC 2018/2019
  ground truth or a labels.csv (module docstring); classes are mapped by name and rows of
  classes the run lacks are skipped (`summary()`, and a log line). All files are checked to
  exist when the source is made; images are decoded on access.
  """

  def __init__(self, images_dir: str | os.PathLike, csv_path: str | os.PathLike,
               image_size: int = 28, crop: str = "center",
               class_names: Sequence[str] | None = None):
    if crop not in CROPS:
      raise DataError(f"crop={crop!r} is not one of {CROPS}.")
    if int(image_size) < 1:
      raise DataError(f"image_size={image_size} must be positive.")
    self.images_dir = os.fspath(images_dir)
    self.image_size = int(image_size)
    self.crop = crop
    self.ground_truth = read_ground_truth(csv_path, class_names)
    if not os.path.isdir(self.images_dir):
      raise DataError(f"{self.images_dir}: image folder not found.")
    gt = self.ground_truth
    if len(gt) == 0:
      raise DataError(f"{gt.csv_path}: no rows with a class of the run "
                      f"({', '.join(gt.class_names)}); {len(gt.skipped)} skipped "
                      f"({', '.join(sorted({s.reason for s in gt.skipped}))}).")
    self.paths = _find_image_files(self.images_dir, gt)
    if gt.lacking_classes or gt.extra_classes:
      logging.warning(
          "Outside set %s: %d of %d rows used; the run's classes it lacks: %s; its classes "
          "the run lacks (rows skipped): %s.", gt.csv_path, len(gt),
          len(gt) + len(gt.skipped), list(gt.lacking_classes) or "none",
          list(gt.extra_classes) or "none")
    else:
      logging.info("Outside set %s: %d of %d rows used, every class of the run present.",
                   gt.csv_path, len(gt), len(gt) + len(gt.skipped))

  @property
  def image_ids(self) -> tuple[str, ...]:
    return self.ground_truth.image_ids

  @property
  def labels(self) -> np.ndarray:
    return self.ground_truth.labels

  @property
  def class_names(self) -> tuple[str, ...]:
    return self.ground_truth.class_names

  def summary(self) -> dict[str, Any]:
    return {**self.ground_truth.summary(), "images_dir": self.images_dir,
            "image_size": self.image_size, "crop": self.crop}

  def __len__(self) -> int:
    return len(self.paths)

  def load_image(self, i: int) -> np.ndarray:
    path = self.paths[i]
    try:
      with Image.open(path) as im:
        return resize_like_dermamnist(im, self.image_size, self.crop, name=path)
    except DataError:
      raise
    except (OSError, ValueError, Image.DecompressionBombError) as e:
      raise DataError(f"{path}: unreadable image (image {self.image_ids[i]!r}, CSV "
                      f"{self.ground_truth.csv_path} line {self.ground_truth.lines[i]}): "
                      f"{e}") from e

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    if i < 0:
      i += len(self)
    if not 0 <= i < len(self):
      raise IndexError(f"index {i} out of range for {len(self)} images")
    return {"image": self.load_image(i), "label": int(self.labels[i]), "id": i}

  def __repr__(self) -> str:
    return (f"IsicSource({self.images_dir!r}, {self.ground_truth.csv_path!r}, "
            f"image_size={self.image_size}, n={len(self)})")
