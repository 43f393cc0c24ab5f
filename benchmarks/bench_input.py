"""Input speed benchmark (not a test): decoded + augmented images/s per CPU core at 224 px.

  python benchmarks/bench_input.py --manual_dir=PATH/TO/HAM10000 [--stored_size=256]
      [--image_size=224] [--seconds=10] [--data_dir=DIR]

Prepares (once, like training) the HAM10000 records at `stored_size` from the download in
`--manual_dir` (default: the 82-image sample in tests/data/ham10000_sample, whose images
are downscaled 150x112 copies; the shared 600x450 originals give the realistic JPEG
content), then, in this one process pinned to one CPU core, times three loops over random
indices:

  read+decode   `source[i]`: ArrayRecord read + JPEG decode (PIL) of a stored_size image
  minimal aug   + random square crop (80-100% of the side) and flips in numpy, PIL
                bilinear resize to image_size (uint8)
  train aug     + derm_jax.data.augment.train_transform with the default config.aug and
                random_resized_crop on (float32 output, colour jitter, rot90)

and prints images per CPU-second of the process (= per core; wall-clock rates are printed
too, and match it on an idle machine) and the cores needed to feed an H100 at 3,700 img/s (the
EfficientNet-Lite0 step, fp32, device-resident) and 2,200 img/s (ConvNeXt-T, bf16).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from derm_jax import config_lib
from derm_jax.data import augment, ham10000

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"EfficientNet-Lite0 fp32 (H100)": 3700, "ConvNeXt-T bf16 (H100)": 2200}


def minimal_aug(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
  s = image.shape[0]
  side = int(rng.integers(int(0.8 * s), s + 1))
  y, x = rng.integers(0, s - side + 1, size=2)
  crop = image[y:y + side, x:x + side]
  if rng.random() < 0.5:
    crop = crop[:, ::-1]
  if rng.random() < 0.5:
    crop = crop[::-1]
  return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(
      (size, size), Image.Resampling.BILINEAR))


def timed(fn, seconds: float) -> tuple[float, float]:
  """(images per CPU-second of this process, images per wall-clock second) of calling fn()
  repeatedly for about `seconds` (after 20 warm-up calls). On a shared machine the
  CPU-time rate is the per-core figure: other processes' time slices are not counted."""
  for _ in range(20):
    fn()
  n, start, cpu0 = 0, time.perf_counter(), time.process_time()
  while True:
    for _ in range(50):
      fn()
    n += 50
    elapsed = time.perf_counter() - start
    if elapsed >= seconds:
      return n / (time.process_time() - cpu0), n / elapsed


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--manual_dir", default=str(REPO / "tests" / "data" / "ham10000_sample"))
  p.add_argument("--data_dir", default="")
  p.add_argument("--stored_size", type=int, default=256)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--seconds", type=float, default=10.0)
  args = p.parse_args()
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
  data_dir = args.data_dir or tempfile.mkdtemp(prefix="bench_input_")
  ds = ham10000.Dataset(SimpleNamespace(
      manual_dir=args.manual_dir, data_dir=data_dir, stored_size=args.stored_size,
      split_seed=0, val_fraction=0.1, test_fraction=0.2))
  src = ds.source("train")
  rng = np.random.default_rng(0)
  aug = config_lib.augmentation()
  aug.random_resized_crop = True
  n = len(src)

  def read():
    return src[int(rng.integers(n))]

  def read_minimal():
    return minimal_aug(read()["image"], rng, args.image_size)

  def read_train():
    return augment.train_transform(read(), rng, image_size=args.image_size, aug=aug)

  timings = {name: timed(fn, args.seconds) for name, fn in (
      ("read+decode", read), ("minimal aug", read_minimal), ("train aug", read_train))}
  results = {name: cpu for name, (cpu, _) in timings.items()}
  print(f"stored {args.stored_size}px JPEG -> {args.image_size}px, 1 process on 1 core, "
        f"{n} distinct images from {args.manual_dir}; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
  for name, (cpu, wall) in timings.items():
    print(f"  {name:12s} {cpu:8.0f} img/s per CPU-second ({wall:.0f} img/s wall clock)")
  print("Cores to keep one H100 fed (img/s needed / img/s per core):")
  for model, need in TARGETS.items():
    for name in ("minimal aug", "train aug"):
      r = results[name]
      print(f"  {model}: {need} / {r:.0f} ({name}) = {need / r:.1f} -> {math.ceil(need / r)} "
            "cores")
  print(json.dumps({"per_core_img_s": {k: round(v, 1) for k, v in results.items()},
                    "wall_img_s": {k: round(w, 1) for k, (_, w) in timings.items()},
                    "stored_size": args.stored_size, "image_size": args.image_size,
                    "cores_needed": {m: {k: math.ceil(need / results[k])
                                         for k in ("minimal aug", "train aug")}
                                     for m, need in TARGETS.items()}}))


if __name__ == "__main__":
  main()
