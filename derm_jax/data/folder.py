"""Your own images as a dataset (`config.data.name='folder'`, `config.data.path=DIR`).

DIR holds one of two layouts:

1. ``DIR/labels.csv`` with a header and the columns

     image         path of the image file, relative to DIR and inside it (an absolute
                   path, or one whose '..' leaves DIR, is refused; to use images kept
                   elsewhere, put a link to them inside DIR)
     label         the class name, as you call it ('melanoma', 'Nevus', 'BCC', ...)
     group         optional: patient or lesion id; images of one group never sit in two
                   splits (an empty cell: the image is its own group)
     split         optional: train, val or test for every row; then these splits are used
                   as given (seed and fractions are not), and a group may not span two
     sex, age, localization
                   optional: kept per image for the subgroup metrics (age in years)

   Any other column is refused (so that a misspelt 'group' never silently splits a
   patient's images).
2. One subfolder per class: ``DIR/<class>/**/*.jpg`` (.jpeg .png .bmp .tif .tiff too,
   searched recursively; hidden files and folders are skipped, files directly in DIR
   ignored). The folder name is the class; every image is its own group.

Classes: the names found in the data, sorted (Python string order), give the label order,
unless `config.data.classes` (a tuple) fixes it; it must then name every class of the data
and nothing else. Without a `split` column the splits are seeded (`data.split_seed`),
stratified by class (`data.val_fraction`, `data.test_fraction` of each class) and grouped
(derm_jax/data/splits.py); every class needs images in at least three groups.

Stored like HAM10000 (derm_jax/data/fullres.py): centred square crops of
`data.stored_size`, JPEG, ArrayRecord, in
``data_dir/folder/<size>px_seed<s>_val<v>_test<t>_<fingerprint>/1.0.0`` (or
``<size>px_given_<fingerprint>`` with a split column). The fingerprint covers labels.csv,
the path, size and mtime of every image, the layout and the class order, so any change to
the data or the classes prepares anew. Per-image metadata (`Dataset.metadata(split)`):
image_id (the labels.csv path, or '<class folder>/<path>'), lesion_id (the group, '' when
none), sex, localization, age, dx_type (''), so the leakage audit (derm_jax/data/audit.py)
and the subgroup metrics work as for HAM10000. 'id' is the row index in labels.csv (or
the image's index in sorted path order).

Everything wrong with the input is one DataError naming the file (and line) before
anything is written: a duplicate image, a missing image or a file that is not an image, an
empty label, labels or class folders that differ only in case or whitespace, a split value
other than train/val/test, a group spanning the given splits, a class with too few images
(or groups) to stratify, `config.data.classes` naming a class without images or missing
one with images, fewer than two classes.

`config.data.unlabeled` adds unlabelled images for pretraining (derm_jax/data/unlabeled.py,
`Dataset.unlabeled_source()`); with the subfolder layout such a folder may not sit inside
DIR (it would be a class).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from absl import logging
from PIL import Image

from derm_jax.data import fullres, isic, splits
from derm_jax.data.errors import DataError
from derm_jax.data.unlabeled import IMAGE_EXTENSIONS, configured_folders

LABELS_CSV = "labels.csv"
SPLITS = fullres.SPLITS
MIN_GROUPS_PER_CLASS = len(SPLITS)  # one for each of train, val and test


def _metadata(image_id: str, group: str, fields: dict[str, str], csv_path: str,
              line: int) -> dict[str, Any]:
  age = fields.get("age", "")
  return {"image_id": image_id, "lesion_id": group, "dx_type": "",
          "sex": fields.get("sex", ""), "localization": fields.get("localization", ""),
          "age": fullres.parse_age(csv_path, line, age) if age else float("nan")}


def order_classes(counts: dict[str, int], requested: Sequence[str], where: str
                  ) -> tuple[str, ...]:
  """The label order: `requested` (config.data.classes) if given, checked against the
  classes found (name -> images), else the found names sorted."""
  requested = tuple(str(c) for c in requested)
  if requested:
    dupes = sorted(c for c, n in Counter(requested).items() if n > 1)
    if dupes:
      raise DataError(f"config.data.classes={requested!r} names {dupes} twice.")
    for c in requested:
      if c not in counts:
        near = [f for f in counts if f.strip().casefold() == c.strip().casefold()]
        hint = (f"; the data have {near[0]!r}, which differs only in case/whitespace" if near
                else f"; the classes with images are {sorted(counts)}")
        raise DataError(f"config.data.classes names {c!r}, which has no images in "
                        f"{where}{hint}.")
    lacking = [c for c in sorted(counts) if c not in requested]
    if lacking:
      raise DataError(f"config.data.classes={requested!r} lacks {lacking[0]!r}, which has "
                      f"{counts[lacking[0]]} image(s) in {where}; name every class of the "
                      "data (or remove those images).")
    names = requested
  else:
    names = tuple(sorted(counts))
  if len(names) < 2:
    raise DataError(f"{where}: only one class ({list(names)}); a classifier needs at least "
                    "two.")
  return names


def _check_stratifiable(records: Sequence[fullres.Record], names: Sequence[str],
                        where: str) -> None:
  labels = [r.label for r in records]
  per_class = splits.groups_per_class(labels, [r.group for r in records], len(names))
  images = np.bincount(labels, minlength=len(names))
  grouped = any(not r.group.startswith("image:") for r in records)
  for c, name in enumerate(names):
    if per_class[c] < MIN_GROUPS_PER_CLASS:
      have = (f"{images[c]} image(s) in {per_class[c]} group(s)" if grouped
              else f"{images[c]} image(s)")
      unit = "groups (patients/lesions)" if grouped else "images"
      raise DataError(f"{where}: class {name!r} has too few images to stratify: {have}; "
                      f"at least {MIN_GROUPS_PER_CLASS} {unit} per class are needed (one "
                      "for each of train, val and test), or give the splits in a 'split' "
                      f"column of {LABELS_CSV}.")


def _from_csv(root: str, requested: Sequence[str]) -> fullres.Listing:
  csv_path = os.path.join(root, LABELS_CSV)
  table = isic.read_labels_csv(csv_path)
  paths = []
  top = os.path.normpath(os.path.abspath(root))
  for r in table.rows:
    path = os.path.normpath(os.path.join(root, r.image))
    if os.path.isabs(r.image) or not _inside(os.path.abspath(path), top):
      raise DataError(f"{csv_path}: line {r.line}: image {r.image!r} lies outside {root}; "
                      f"the paths in {LABELS_CSV} are relative to its folder (to use images "
                      "kept elsewhere, put a link to them inside the folder).")
    if not os.path.isfile(path):
      what = "is a folder, not an image" if os.path.isdir(path) else "not found"
      raise DataError(f"{csv_path}: line {r.line}: image {r.image!r} {what} ({path}).")
    paths.append(path)
  names = order_classes(dict(Counter(r.label for r in table.rows)), requested, csv_path)
  index = {c: i for i, c in enumerate(names)}
  given = "split" in table.columns
  grouped = "group" in table.columns
  records = []
  where_group: dict[str, tuple[str, int]] = {}
  for i, (r, path) in enumerate(zip(table.rows, paths, strict=True)):
    group = r.fields.get("group", "")
    split = ""
    if given:
      raw = r.fields["split"]
      split = raw.lower()
      if split not in SPLITS:
        raise DataError(f"{csv_path}: line {r.line} (image {r.image!r}): split {raw!r} is "
                        f"not one of {', '.join(SPLITS)}.")
      if group:
        first = where_group.setdefault(group, (split, r.line))
        if first[0] != split:
          raise DataError(f"{csv_path}: group {group!r} spans the given splits: "
                          f"{first[0]!r} (line {first[1]}) and {split!r} (line {r.line}); "
                          "all images of one group (patient/lesion) must share a split.")
    records.append(fullres.Record(
        id=i, path=path, label=index[r.label], group=group or f"image:{r.image}",
        csv_path=csv_path, line=r.line, split=split,
        metadata=_metadata(r.image, group, r.fields, csv_path, r.line)))
  if given:
    empty = [s for s in SPLITS if not any(r.split == s for r in records)]
    if empty:
      raise DataError(f"{csv_path}: the 'split' column gives no images to {empty}; every "
                      "one of train, val and test needs some.")
  else:
    _check_stratifiable(records, names, csv_path)
  return _listing(root, records, names, given, grouped,
                  {"form": LABELS_CSV, "csv": csv_path, "columns": list(table.columns)},
                  input_files=(csv_path,))


def _inside(path: str, top: str) -> bool:
  """Whether the absolute, normalised `path` is `top` or lies under it (by name: a link
  inside `top` counts as inside)."""
  return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def _images_under(folder: str) -> list[str]:
  found = []
  for parent, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in files:
      if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
        found.append(os.path.join(parent, name))
  return sorted(found, key=lambda p: os.path.relpath(p, folder))


def _from_subfolders(root: str, requested: Sequence[str]) -> fullres.Listing:
  try:
    entries = sorted(os.listdir(root))
  except OSError as e:
    raise DataError(f"{root}: cannot be listed ({e}).") from e
  folders = [d for d in entries if not d.startswith(".") and os.path.isdir(os.path.join(root, d))]
  if not folders:
    raise DataError(f"{root}: neither a {LABELS_CSV} (columns image,label) nor class "
                    "subfolders (DIR/<class>/*.jpg) found (config.data.path).")
  if len(folders) == 1 and not requested:
    raise DataError(f"{root}: no {LABELS_CSV} found, and one subfolder ({folders[0]!r}), "
                    f"which would be the only class; give {LABELS_CSV} (columns image,label) "
                    "in this folder, or one subfolder per class (at least two).")
  isic.check_name_variants({d: f"folder {os.path.join(root, d)}" for d in folders},
                           "class folders", root)
  images: dict[str, list[str]] = {}
  for d in folders:
    images[d] = _images_under(os.path.join(root, d))
    if not images[d]:
      raise DataError(f"{os.path.join(root, d)}: class folder holds no "
                      f"{'/'.join(IMAGE_EXTENSIONS)} images (every subfolder of "
                      f"{root} is a class).")
  names = order_classes({d: len(v) for d, v in images.items()}, requested, root)
  records = []
  for d in sorted(folders):
    for path in images[d]:
      image_id = os.path.relpath(path, root).replace(os.sep, "/")
      records.append(fullres.Record(
          id=len(records), path=path, label=names.index(d), group=f"image:{image_id}",
          csv_path="", line=0, metadata=_metadata(image_id, "", {}, "", 0)))
  _check_stratifiable(records, names, root)
  return _listing(root, records, names, False, False, {"form": "subfolders"})


def _listing(root: str, records: list[fullres.Record], names: tuple[str, ...], given: bool,
             grouped: bool, form: dict[str, Any], input_files: tuple[str, ...] = ()
             ) -> fullres.Listing:
  per_class = Counter(r.label for r in records)
  summary = {**form, "images": len(records), "used": len(records), "skipped": 0,
             "grouped": grouped, "given_splits": given,
             "groups": len({r.group for r in records}) if grouped else None,
             "per_class": {c: per_class.get(i, 0) for i, c in enumerate(names)}}
  if given:
    for s in SPLITS:
      lacking = [c for i, c in enumerate(names)
                 if not any(r.split == s and r.label == i for r in records)]
      if lacking:
        logging.warning("%s: the given '%s' split has no images of %s.", root, s, lacking)
  extra = json.dumps({"form": form["form"], "classes": list(names)})
  return fullres.Listing(manual_dir=root, records=tuple(records), input_files=input_files,
                         image_dirs=(), summary=summary, class_names=names,
                         given_splits=given, files=tuple(r.path for r in records), extra=extra)


def read_listing(root: str, class_names: Sequence[str] = ()) -> fullres.Listing:
  """Validates DIR (`root`) in either layout (module docstring) and lists its images, in
  the class order of `class_names` (config.data.classes) or of the data (sorted)."""
  if isinstance(class_names, str):
    class_names = (class_names,)
  if os.path.lexists(os.path.join(root, LABELS_CSV)):
    return _from_csv(root, class_names)
  return _from_subfolders(root, class_names)


def check_images(listing: fullres.Listing) -> None:
  """DataError naming the first listed file that is not an image (its header cannot be
  read); a damaged image body is found while writing, which then leaves nothing behind."""
  for r in listing.records:
    try:
      with Image.open(r.path):
        pass  # opening parses the header
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
      where = f"{r.csv_path}: line {r.line}: " if r.csv_path else ""
      raise DataError(f"{where}{r.path}: not an image file ({e}).") from e


class Folder(fullres.FullResBuilder, skip_registration=True):
  """A user's own images: labels.csv or one subfolder per class; classes from the data."""

  name = "folder"
  CLASS_NAMES: ClassVar[tuple[str, ...]] = ()
  DESCRIPTION: ClassVar[str] = (
      "A user's own images (labels.csv or one subfolder per class), classes from the data, "
      "grouped class-stratified splits or the given ones.")
  ROOT_FIELD: ClassVar[str] = "path"
  ROOT_HELP: ClassVar[str] = (
      f"the folder of your images (DIR/{LABELS_CSV} with columns image,label, or one "
      "subfolder per class); set config.data.path=DIR")
  read_listing = staticmethod(read_listing)

  @classmethod
  def list_inputs(cls, root: str, class_names: Sequence[str] = ()) -> fullres.Listing:
    return read_listing(root, class_names)

  @classmethod
  def check_before_writing(cls, listing: fullres.Listing) -> None:
    check_images(listing)


class Dataset(fullres.FullResDataset):
  """A folder of the user's images through the registry (`config.data.name='folder'`)."""

  builder_cls = Folder

  def __init__(self, data_config: Any):
    root = os.fspath(fullres.field(data_config, "path", ""))
    if root and not os.path.lexists(os.path.join(root, LABELS_CSV)):
      top = os.path.realpath(os.path.expanduser(root))
      for u in configured_folders(data_config):
        real = os.path.realpath(os.path.expanduser(u))
        if real == top or real.startswith(top + os.sep):
          raise DataError(f"{u}: the unlabelled folder is inside config.data.path={root}, "
                          "where every subfolder is a class; move it out (or use a "
                          f"{LABELS_CSV}).")
    super().__init__(data_config)

  def describe(self) -> dict[str, Any]:
    out = super().describe()
    listing = out["listing"]
    out["lesion_grouped"] = bool(listing.get("grouped"))
    out["given_splits"] = bool(listing.get("given_splits"))
    if out["given_splits"]:
      out["split_seed"] = out["val_fraction"] = out["test_fraction"] = None
    return out
