"""A split decoded once and held in host memory, so training batches are array gathers.

Reading a TFDS record costs ~0.4 ms of Python (deserialise, PNG/JPEG decode), so a Grain
pipeline that decodes every example every epoch is bound by the GIL: on a 16-core H100
host it fed ~2,500 images/s with 8 threads (results/h100_2026-11-27), a third of what a
bf16 EfficientNet-Lite0 step takes there. `InMemorySource.load`
decodes the split once (in threads) into one uint8 array when it fits under a size limit
(`config.input.cache_mb`); `read_batch(indices)` is then one NumPy gather per batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from absl import logging

from derm_jax.data.errors import DataError


def read_examples(source, indices: Sequence[int]) -> list[dict[str, Any]]:
  """`source`'s examples at `indices` (one batched read where the source has one)."""
  if hasattr(source, "__getitems__"):
    return list(source.__getitems__([int(i) for i in indices]))
  return [source[int(i)] for i in indices]


def stack_examples(examples: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
  """A uint8 image batch and int32 labels from decoded examples of one shape."""
  return {"image": np.stack([np.asarray(ex["image"], np.uint8) for ex in examples]),
          "label": np.asarray([int(ex["label"]) for ex in examples], np.int32)}


class InMemorySource:
  """Random-access split held as arrays: [i] -> {'image', 'label', 'id'} like the source it
  was read from, plus `read_batch(indices)` -> {'image': uint8 (B,S,S,3), 'label': int32}."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, ids: np.ndarray,
               name: str = "in-memory"):
    if not (len(images) == len(labels) == len(ids)):
      raise ValueError(f"{len(images)} images, {len(labels)} labels, {len(ids)} ids.")
    self.images, self.ids, self.name = images, ids, name
    self.labels = np.asarray(labels, np.int32)  # as batches carry them

  @classmethod
  def load(cls, source, max_mb: float, num_threads: int = 8,
           chunk: int = 256) -> InMemorySource | None:
    """`source` decoded into memory, or None when its images would take more than `max_mb`
    MB (or `max_mb` <= 0). Every image must have the first image's shape."""
    n = len(source)
    if max_mb <= 0 or n == 0:
      return None
    first = np.asarray(source[0]["image"], np.uint8)
    nbytes = n * first.nbytes
    if nbytes > max_mb * 2**20:
      logging.info("Training split not held in memory: %d images would take %.0f MB, over "
                   "input.cache_mb=%s.", n, nbytes / 2**20, max_mb)
      return None
    t0 = time.perf_counter()
    images = np.empty((n, *first.shape), np.uint8)
    labels = np.empty((n,), np.int32)
    ids = np.empty((n,), np.int64)

    def fill(start: int) -> None:
      idx = range(start, min(n, start + chunk))
      for i, ex in zip(idx, read_examples(source, idx), strict=True):
        image = np.asarray(ex["image"], np.uint8)
        if image.shape != first.shape:
          raise DataError(f"example {i} of {source!r} has an image of shape {image.shape}, "
                          f"the first has {first.shape}: the split cannot be held as one "
                          "array (set --config.input.cache_mb=0).")
        images[i], labels[i], ids[i] = image, int(ex["label"]), int(ex.get("id", i))

    with ThreadPoolExecutor(max(1, num_threads)) as pool:
      list(pool.map(fill, range(0, n, chunk)))  # list(): re-raises a worker's error
    logging.info("Training split decoded into memory: %d images of %s, %.0f MB, in %.1f s.",
                 n, first.shape, nbytes / 2**20, time.perf_counter() - t0)
    return cls(images, labels, ids, name=repr(source))

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    return {"image": self.images[i], "label": int(self.labels[i]), "id": int(self.ids[i])}

  def read_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    indices = np.asarray(indices, np.int64)
    return {"image": self.images[indices], "label": self.labels[indices]}

  @property
  def nbytes(self) -> int:
    return self.images.nbytes

  def __repr__(self) -> str:
    mb = math.ceil(self.nbytes / 2**20)
    return f"InMemorySource({self.name}, n={len(self)}, {mb} MB)"
