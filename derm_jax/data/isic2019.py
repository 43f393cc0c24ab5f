"""ISIC 2019 training set at full resolution (`config.data.name='isic2019'`), 8 classes.

Bring the ISIC 2019 challenge training files (https://challenge.isic-archive.com/data/#2019)
into one folder, `config.data.manual_dir`:

  ISIC_2019_Training_Input/            <image>.jpg (sizes vary, 600x450 to 1024x1024+)
  ISIC_2019_Training_GroundTruth.csv   image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK (one-hot)
  ISIC_2019_Training_Metadata.csv      image,age_approx,anatom_site_general,lesion_id,sex

Classes, in this order: akiec, bcc, bkl, df, mel, nv, vasc, scc. The first seven are the
DermaMNIST/HAM10000 classes in DermaMNIST order (2019 column AK -> akiec, MEL -> mel,
NV -> nv, BCC -> bcc, BKL -> bkl, DF -> df, VASC -> vasc), so label k < 7 means the same
diagnosis as DermaMNIST label k. SCC (squamous cell carcinoma) has no HAM10000 class and
is label 7: a seven-class model scored on this data should drop label 7 (or count it as
akiec, its nearest class: akiec includes intraepithelial carcinoma, i.e. SCC in situ) and
say which. Rows labelled UNK are skipped and counted (`describe()['listing']`).

Images sharing a `lesion_id` always share a split; rows without a lesion_id (many
non-HAM images) are their own group. Metadata per example (`Dataset.metadata(split)`):
image_id, lesion_id ('' when none), sex, localization (= anatom_site_general), age
(= age_approx, NaN when empty), dx_type ('' : not in ISIC 2019). 'id' is the row index in
the ground-truth CSV. The ground-truth CSV is read with `isic.read_ground_truth`.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import ClassVar

from derm_jax.data import fullres, isic
from derm_jax.data.errors import DataError
from derm_jax.data.registry import HAM10000_CLASSES

CLASS_NAMES = HAM10000_CLASSES + ("scc",)
# ISIC 2019 ground-truth column -> class name here (None: skipped).
COLUMN_CLASSES = {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AK": "akiec", "BKL": "bkl",
                  "DF": "df", "VASC": "vasc", "SCC": "scc", "UNK": None}
IMAGE_DIR = "ISIC_2019_Training_Input"
GROUND_TRUTH_CSV = "ISIC_2019_Training_GroundTruth.csv"
METADATA_CSV = "ISIC_2019_Training_Metadata.csv"
METADATA_COLUMNS = ("image", "age_approx", "anatom_site_general", "lesion_id", "sex")

_CITATION = """\
@article{tschandl2018ham10000, title={The HAM10000 dataset, a large collection of
  multi-source dermatoscopic images of common pigmented skin lesions},
  author={Tschandl, Philipp and Rosendahl, Cliff and Kittler, Harald},
  journal={Scientific Data}, volume={5}, pages={180161}, year={2018}}
@inproceedings{codella2018isic, title={Skin lesion analysis toward melanoma detection: A
  challenge at the 2017 International Symposium on Biomedical Imaging (ISBI), hosted by
  the International Skin Imaging Collaboration (ISIC)}, author={Codella, Noel C. F. and
  others}, booktitle={ISBI}, year={2018}}
@article{combalia2019bcn20000, title={BCN20000: Dermoscopic lesions in the wild},
  author={Combalia, Marc and others}, journal={arXiv:1908.02288}, year={2019}}
"""


def read_listing(manual_dir: str) -> fullres.Listing:
  """Validates the ISIC 2019 training download in `manual_dir` and lists its images.

  Raises DataError (naming the file and line) for everything `isic.read_ground_truth`
  rejects (missing or unexpected class columns, values other than 0/1, rows with no or
  several labels, ...), a ground truth that is not in the 2019 layout, a missing metadata
  column or row, and an image listed but not found in ISIC_2019_Training_Input/.
  """
  gt_path = os.path.join(manual_dir, GROUND_TRUTH_CSV)
  meta_path = os.path.join(manual_dir, METADATA_CSV)
  image_dir = os.path.join(manual_dir, IMAGE_DIR)
  gt = isic.read_ground_truth(gt_path, CLASS_NAMES)
  if gt.format != "2019":
    what = "the ISIC 2018 columns" if gt.format == "2018" else "the labels.csv columns"
    raise DataError(f"{gt_path}: has {what}; expected the 2019 layout "
                    f"image,{','.join(COLUMN_CLASSES)}.")
  # (line, image_id, class name) of every row, in file order; UNK rows are counted only.
  rows = [(line, image_id, CLASS_NAMES[label])
          for line, image_id, label in zip(gt.lines, gt.image_ids, gt.labels.tolist(), strict=True)]
  rows += [(s.line, s.image_id, COLUMN_CLASSES[s.reason]) for s in gt.skipped]
  rows.sort()
  meta_rows = fullres.read_csv(meta_path, METADATA_COLUMNS)
  meta: dict[str, tuple[int, dict[str, str]]] = {}
  for line, row in meta_rows:
    if not row["image"]:
      raise DataError(f"{meta_path}: line {line}: empty image id.")
    if row["image"] in meta:
      raise DataError(f"{meta_path}: line {line}: image {row['image']!r} already listed on "
                      f"line {meta[row['image']][0]}.")
    meta[row["image"]] = (line, row)
  if not os.path.isdir(image_dir):
    raise DataError(f"{image_dir}: image folder not found (the ISIC 2019 training layout).")
  images = fullres.find_images([image_dir])
  records = []
  skipped: Counter[str] = Counter()
  for index, (line, image_id, cls) in enumerate(rows):
    if cls is None:
      skipped["UNK"] += 1
      continue
    if image_id not in meta:
      raise DataError(f"{meta_path}: no row for image {image_id!r} (listed in {gt_path} "
                      f"line {line}).")
    mline, m = meta[image_id]
    path = images.get(image_id)
    if path is None:
      raise DataError(f"{gt_path}: line {line}: image {image_id!r} not found as "
                      f"{image_id}.jpg in {image_dir}.")
    lesion_id = m["lesion_id"]
    records.append(fullres.Record(
        id=index, path=path, label=CLASS_NAMES.index(cls),
        group=lesion_id or f"image:{image_id}", csv_path=gt_path, line=line,
        metadata={"image_id": image_id, "lesion_id": lesion_id, "dx_type": "",
                  "sex": m["sex"], "localization": m["anatom_site_general"],
                  "age": fullres.parse_age(meta_path, mline, m["age_approx"])}))
  if not records:
    raise DataError(f"{gt_path}: no usable rows ({sum(skipped.values())} UNK rows skipped).")
  per_class = Counter(r.label for r in records)
  summary = {"csv": gt_path, "metadata_csv": meta_path, "rows": len(rows),
             "used": len(records), "skipped": sum(skipped.values()),
             "skipped_by_reason": dict(skipped),
             "lesions": len({r.group for r in records if r.metadata["lesion_id"]}),
             "images_without_lesion_id": sum(1 for r in records if not r.metadata["lesion_id"]),
             "per_class": {c: per_class.get(i, 0) for i, c in enumerate(CLASS_NAMES)}}
  return fullres.Listing(manual_dir=manual_dir, records=tuple(records),
                         input_files=(gt_path, meta_path), image_dirs=(image_dir,),
                         summary=summary)


class Isic2019(fullres.FullResBuilder, skip_registration=True):
  """ISIC 2019 training set: 25,331 dermoscopic images, 8 classes (+ UNK, skipped)."""

  name = "isic2019"
  CLASS_NAMES: ClassVar[tuple[str, ...]] = CLASS_NAMES
  DESCRIPTION: ClassVar[str] = (
      "ISIC 2019 training images, 8 classes (DermaMNIST order + scc), lesion-grouped "
      "class-stratified splits; UNK rows skipped.")
  HOMEPAGE: ClassVar[str] = "https://challenge.isic-archive.com/data/#2019"
  CITATION: ClassVar[str] = _CITATION
  read_listing = staticmethod(read_listing)


class Dataset(fullres.FullResDataset):
  """ISIC 2019 through the dataset registry (`config.data.name='isic2019'`)."""

  builder_cls = Isic2019
