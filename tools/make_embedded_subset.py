"""Makes the packaged DermaMNIST mini subset (derm_jax/data/embedded/dermamnist_mini.npz).

The subset is a seeded, stratified sample of a full DermaMNIST npz in the official MedMNIST
layout (`{train,val,test}_images` (N, S, S, 3) uint8 and `{split}_labels` (N, 1)). Every
split is sampled only from the same split of the source, so official split membership is
kept. Per class the sample is proportional to the class's share of that split, with at
least `--min-per-class` images of every class (or all of them when a class has fewer).
Within a split the kept images stay in source order. The output has the same six keys and
dtypes as the source and is written with `np.savez_compressed`; the script fails if the
file is larger than `--max-bytes`.

Usage:
  python tools/make_embedded_subset.py \
      --source /path/to/dermamnist.npz \
      --out derm_jax/data/embedded/dermamnist_mini.npz
"""

from __future__ import annotations

import argparse
import io
import os
import sys

import numpy as np

SPLITS = ("train", "val", "test")
NUM_CLASSES = 7
DEFAULT_COUNTS = {"train": 1700, "val": 250, "test": 500}


def allocate(class_counts: np.ndarray, total: int, min_per_class: int) -> np.ndarray:
  """Per-class sample sizes summing to `total`: proportional, at least `min_per_class`.

  Largest-remainder rounding of the proportional share, then every class is raised to its
  minimum (capped by what exists) and the surplus is taken back from the classes that are
  furthest above their minimum, largest first.
  """
  class_counts = np.asarray(class_counts, np.int64)
  if total > class_counts.sum():
    raise ValueError(f"asked for {total} images but the split has {class_counts.sum()}")
  share = class_counts / class_counts.sum() * total
  alloc = np.floor(share).astype(np.int64)
  order = np.argsort(-(share - alloc), kind="stable")
  alloc[order[: total - alloc.sum()]] += 1
  floor = np.minimum(class_counts, min_per_class)
  alloc = np.maximum(alloc, floor)
  while alloc.sum() > total:
    c = int(np.argmax(alloc - floor))
    if alloc[c] <= floor[c]:
      raise ValueError(f"cannot fit {min_per_class} per class into {total} images")
    alloc[c] -= 1
  return np.minimum(alloc, class_counts)


def make_subset(source: dict[str, np.ndarray], counts: dict[str, int], seed: int,
                min_per_class: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Returns (subset arrays in the npz key layout, source indices kept per split)."""
  out: dict[str, np.ndarray] = {}
  kept: dict[str, np.ndarray] = {}
  for s_i, split in enumerate(SPLITS):
    labels = source[f"{split}_labels"].reshape(-1).astype(np.int64)
    per_class = np.bincount(labels, minlength=NUM_CLASSES)
    alloc = allocate(per_class, counts[split], min_per_class)
    rng = np.random.default_rng([seed, s_i])
    chosen = []
    for c in range(NUM_CLASSES):
      members = np.flatnonzero(labels == c)
      chosen.append(rng.choice(members, size=int(alloc[c]), replace=False))
    idx = np.sort(np.concatenate(chosen))
    kept[split] = idx
    out[f"{split}_images"] = source[f"{split}_images"][idx]
    out[f"{split}_labels"] = source[f"{split}_labels"][idx]
  return out, kept


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--source", required=True, help="the full official dermamnist.npz")
  p.add_argument("--out", default=os.path.join(
      os.path.dirname(__file__), "..", "derm_jax", "data", "embedded", "dermamnist_mini.npz"))
  p.add_argument("--seed", type=int, default=20250522)
  p.add_argument("--train", type=int, default=DEFAULT_COUNTS["train"])
  p.add_argument("--val", type=int, default=DEFAULT_COUNTS["val"])
  p.add_argument("--test", type=int, default=DEFAULT_COUNTS["test"])
  p.add_argument("--min-per-class", type=int, default=8)
  p.add_argument("--max-bytes", type=int, default=5_000_000)
  args = p.parse_args(argv)

  with np.load(args.source) as f:
    source = {k: f[k] for k in f.files}
  counts = {"train": args.train, "val": args.val, "test": args.test}
  subset, _ = make_subset(source, counts, args.seed, args.min_per_class)

  buf = io.BytesIO()
  np.savez_compressed(buf, **subset)
  data = buf.getvalue()
  if len(data) > args.max_bytes:
    print(f"error: subset is {len(data)} bytes, over --max-bytes={args.max_bytes}; "
          "lower the counts", file=sys.stderr)
    return 1
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  tmp = args.out + ".tmp"
  with open(tmp, "wb") as fh:
    fh.write(data)
  os.replace(tmp, args.out)

  print(f"wrote {args.out}: {len(data)} bytes, seed {args.seed}")
  print("split  total  " + "  ".join(f"{c:>5d}" for c in range(NUM_CLASSES)))
  for split in SPLITS:
    bc = np.bincount(subset[f"{split}_labels"].reshape(-1), minlength=NUM_CLASSES)
    print(f"{split:5s}  {bc.sum():5d}  " + "  ".join(f"{n:5d}" for n in bc))
  return 0


if __name__ == "__main__":
  sys.exit(main())
