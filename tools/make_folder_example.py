"""Builds a small worked example of "bring your own data" from the HAM10000 sample.

  python tools/make_folder_example.py OUT [--sample tests/data/ham10000_sample]

writes

  OUT/labelled/labels.csv          image,label,group,sex,age,localization
  OUT/labelled/images/<id>.jpg     the labelled images
  OUT/unlabelled/<dx-free name>.jpg  images without labels, for pretraining

The labelled images are re-labelled into three custom classes, as a clinic might name
them: 'benign_nevus' (HAM10000 dx nv), 'melanoma' (mel) and 'other' (bkl and bcc); the
group is the HAM10000 lesion_id, so images of one lesion stay in one split. The images of
the remaining diagnoses (akiec, df, vasc) become the unlabelled pool, their file names
numbered so the diagnosis is not visible. Then:

  python -m derm_jax.main --config=configs/classify.py --workdir=RUN \\
      --config.data.name=folder --config.data.path=OUT/labelled \\
      --config.data.unlabeled="('OUT/unlabelled',)" ...

OUT must not exist yet (or be an empty folder); it is written in a temporary folder next
to it and renamed when complete, so a failure leaves nothing behind.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SAMPLE = os.path.join(REPO, "tests", "data", "ham10000_sample")
METADATA_CSV = "HAM10000_metadata.csv"
IMAGE_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2")
# HAM10000 dx code -> the example's class name; codes not listed go to the unlabelled pool.
RELABEL = {"nv": "benign_nevus", "mel": "melanoma", "bkl": "other", "bcc": "other"}
LABELS_COLUMNS = ("image", "label", "group", "sex", "age", "localization")


def _find_image(sample: str, image_id: str) -> str:
  for d in IMAGE_DIRS:
    path = os.path.join(sample, d, f"{image_id}.jpg")
    if os.path.isfile(path):
      return path
  raise SystemExit(f"error: {sample}: image {image_id}.jpg not found in {list(IMAGE_DIRS)}.")


def build(sample: str, out: str) -> dict[str, int]:
  """Writes the example into `out` (a folder that must not exist or be empty); returns
  counts per class and the number of unlabelled images."""
  meta_path = os.path.join(sample, METADATA_CSV)
  if not os.path.isfile(meta_path):
    raise SystemExit(f"error: {meta_path}: not found (expected the HAM10000 layout).")
  out = os.path.abspath(out)
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise SystemExit(f"error: {out} already exists and is not an empty folder.")
  with open(meta_path, newline="") as f:
    rows = list(csv.DictReader(f))
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
  counts: dict[str, int] = {}
  try:
    labelled, pool = os.path.join(tmp, "labelled"), os.path.join(tmp, "unlabelled")
    os.makedirs(os.path.join(labelled, "images"))
    os.makedirs(pool)
    table = []
    n_pool = 0
    for row in sorted(rows, key=lambda r: r["image_id"]):
      src = _find_image(sample, row["image_id"])
      label = RELABEL.get(row["dx"])
      if label is None:
        n_pool += 1
        shutil.copyfile(src, os.path.join(pool, f"unlabelled_{n_pool:04d}.jpg"))
        continue
      rel = f"images/{row['image_id']}.jpg"
      shutil.copyfile(src, os.path.join(labelled, rel))
      table.append({"image": rel, "label": label, "group": row["lesion_id"],
                    "sex": row["sex"], "age": row["age"],
                    "localization": row["localization"]})
      counts[label] = counts.get(label, 0) + 1
    with open(os.path.join(labelled, "labels.csv"), "w", newline="") as f:
      w = csv.DictWriter(f, fieldnames=LABELS_COLUMNS)
      w.writeheader()
      w.writerows(table)
    if os.path.isdir(out):
      os.rmdir(out)  # empty, checked above
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return {**counts, "unlabelled": n_pool}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out", help="output folder (must not exist, or be empty)")
  parser.add_argument("--sample", default=DEFAULT_SAMPLE,
                      help="a folder in the HAM10000 layout (default: the repo's sample)")
  args = parser.parse_args(argv)
  counts = build(args.sample, args.out)
  out = os.path.abspath(args.out)
  print(f"{out}/labelled: {sum(v for k, v in counts.items() if k != 'unlabelled')} labelled "
        f"images ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()) if k != 'unlabelled')}"
        f"); {out}/unlabelled: {counts['unlabelled']} unlabelled images.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
