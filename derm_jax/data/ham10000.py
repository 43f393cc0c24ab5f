"""HAM10000 at full resolution (`config.data.name='ham10000'`), from the official download.

Bring the files from the Harvard Dataverse (https://doi.org/10.7910/DVN/DBW86T) into one
folder, `config.data.manual_dir`:

  HAM10000_metadata.csv        lesion_id,image_id,dx,dx_type,age,sex,localization
  HAM10000_images_part_1/      ISIC_xxxxxxx.jpg (600x450)
  HAM10000_images_part_2/      ISIC_xxxxxxx.jpg

(either image folder may be missing when the CSV lists only images of the other one).
The dx codes are the DermaMNIST classes, in DermaMNIST order: akiec, bcc, bkl, df, mel,
nv, vasc. Images of one lesion (lesion_id) always share a split; splits are stratified by
class and seeded (`data.split_seed`, `data.val_fraction`, `data.test_fraction`). Each
example keeps its metadata (`Dataset.metadata(split)`): image_id, lesion_id, dx_type,
sex, localization, age (NaN when empty). 'id' is the row index in the metadata CSV.
See fullres.py for how the records are stored and named.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import ClassVar

from derm_jax.data import fullres
from derm_jax.data.errors import DataError
from derm_jax.data.registry import HAM10000_CLASSES

CLASS_NAMES = HAM10000_CLASSES  # HAM10000 dx codes, in DermaMNIST order
METADATA_CSV = "HAM10000_metadata.csv"
IMAGE_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2")
COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")

_CITATION = """\
@article{tschandl2018ham10000,
  title={The HAM10000 dataset, a large collection of multi-source dermatoscopic images of
         common pigmented skin lesions},
  author={Tschandl, Philipp and Rosendahl, Cliff and Kittler, Harald},
  journal={Scientific Data}, volume={5}, pages={180161}, year={2018}}
"""


def read_listing(manual_dir: str) -> fullres.Listing:
  """Validates the HAM10000 download in `manual_dir` and lists its images.

  Raises DataError (naming the file and line) for: a missing metadata CSV or column, an
  empty or repeated image_id, an empty lesion_id, an unknown dx code, a bad age, an image
  listed in the CSV but found in none of the image folders, and no image folder at all.
  """
  csv_path = os.path.join(manual_dir, METADATA_CSV)
  rows = fullres.read_csv(csv_path, COLUMNS)
  folders = [os.path.join(manual_dir, d) for d in IMAGE_DIRS]
  present = [f for f in folders if os.path.isdir(f)]
  if not present:
    raise DataError(f"{manual_dir}: none of the image folders {list(IMAGE_DIRS)} exists "
                    f"(the official HAM10000 layout; {METADATA_CSV} lists the images).")
  images = fullres.find_images(present)
  records = []
  seen: dict[str, int] = {}
  for index, (line, row) in enumerate(rows):
    image_id, lesion_id, dx = row["image_id"], row["lesion_id"], row["dx"].lower()
    if not image_id:
      raise DataError(f"{csv_path}: line {line}: empty image_id.")
    if image_id in seen:
      raise DataError(f"{csv_path}: line {line}: image_id {image_id!r} already listed on "
                      f"line {seen[image_id]}.")
    seen[image_id] = line
    if not lesion_id:
      raise DataError(f"{csv_path}: line {line} (image {image_id!r}): empty lesion_id.")
    if dx not in CLASS_NAMES:
      raise DataError(f"{csv_path}: line {line} (image {image_id!r}): unknown diagnosis "
                      f"code dx={row['dx']!r}; expected one of {list(CLASS_NAMES)}.")
    path = images.get(image_id)
    if path is None:
      raise DataError(f"{csv_path}: line {line}: image {image_id!r} not found as "
                      f"{image_id}.jpg in {present}.")
    records.append(fullres.Record(
        id=index, path=path, label=CLASS_NAMES.index(dx), group=lesion_id,
        csv_path=csv_path, line=line,
        metadata={"image_id": image_id, "lesion_id": lesion_id, "dx_type": row["dx_type"],
                  "sex": row["sex"], "localization": row["localization"],
                  "age": fullres.parse_age(csv_path, line, row["age"])}))
  per_class = Counter(r.label for r in records)
  summary = {"csv": csv_path, "rows": len(rows), "used": len(records), "skipped": 0,
             "lesions": len({r.group for r in records}),
             "per_class": {c: per_class.get(i, 0) for i, c in enumerate(CLASS_NAMES)},
             "image_folders": [os.path.basename(f) for f in present]}
  return fullres.Listing(manual_dir=manual_dir, records=tuple(records),
                         input_files=(csv_path,), image_dirs=tuple(present), summary=summary)


class Ham10000(fullres.FullResBuilder, skip_registration=True):
  """HAM10000: 10,015 dermoscopic images of 7,470 lesions, 7 classes, with metadata."""

  name = "ham10000"
  CLASS_NAMES: ClassVar[tuple[str, ...]] = CLASS_NAMES
  DESCRIPTION: ClassVar[str] = (
      "HAM10000 dermoscopy images, 7 classes in DermaMNIST order "
      f"{', '.join(CLASS_NAMES)}, lesion-grouped class-stratified splits.")
  HOMEPAGE: ClassVar[str] = "https://doi.org/10.7910/DVN/DBW86T"
  CITATION: ClassVar[str] = _CITATION
  read_listing = staticmethod(read_listing)


class Dataset(fullres.FullResDataset):
  """HAM10000 through the dataset registry (`config.data.name='ham10000'`)."""

  builder_cls = Ham10000
