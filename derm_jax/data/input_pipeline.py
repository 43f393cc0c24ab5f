"""Grain input pipelines: sharded, seeded, resumable training batches and padded eval batches.

Training: the source's indices -> seeded global shuffle (reshuffled every epoch) or
class-balanced draws -> repeat forever -> this process's slice of each global batch ->
batches of `batch_size // process_count` indices -> one read per batch (a NumPy gather
when the split is held in memory, `memory_source.py`): uint8 images at the stored
resolution, which the device augments and resizes (`aug.on_device`, the default). With
`aug.on_device=False` each example is read and augmented on the host instead
(`augment.train_transform`, seeded by the element's position in the global stream).
The whole pipeline is a `grain.MapDataset` indexed by global batch, so where a run is in
its data is the number of steps it has taken: a run resumed at step s starts the stream at
batch s (`from_step`) and sees exactly the batches an uninterrupted run would, whatever
the number of processes or Grain workers before and after (no iterator state is saved).

Evaluation: every example exactly once, in order, the last batch padded and marked with
`mask == 0` so metrics ignore the padding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import grain
import jax
import numpy as np

from derm_jax.data import augment, memory_source


def _process_slice(ds: grain.MapDataset, index: int, count: int,
                   local_batch: int) -> grain.MapDataset:
  """This process's part of each global batch of the (global, endless) stream `ds`: global
  batch b is stream positions [b*G, (b+1)*G), G = count * local_batch, and process `index`
  takes [b*G + index*local_batch, b*G + (index+1)*local_batch). So the global batches, and
  the training, are the same whatever the number of processes."""
  if count == 1:
    return ds
  global_batch = count * local_batch

  def pick(k):
    b, j = divmod(int(k), local_batch)
    return ds[b * global_batch + index * local_batch + j]

  return grain.MapDataset.range(len(ds) // count).map(pick)


def balanced_indices(labels: np.ndarray, seed: int, epoch: int) -> np.ndarray:
  """One epoch of class-balanced sampling with replacement (each class equally likely)."""
  labels = np.asarray(labels)
  counts = np.bincount(labels)
  weights = 1.0 / counts[labels]
  rng = np.random.default_rng([seed, epoch])
  return rng.choice(len(labels), size=len(labels), replace=True, p=weights / weights.sum())


class _BalancedIndices:
  """Random-access, practically endless stream of indices: position i of epoch i // n is a
  class-balanced draw.

  Its length is `n * max_epochs` (not `n`) because Grain reads a repeated dataset modulo
  its length, which would lose the epoch number that seeds each epoch's draw.
  """

  def __init__(self, labels: np.ndarray, seed: int, max_epochs: int = 1_000_000):
    self._labels, self._seed = np.asarray(labels), seed
    self._max_epochs = max_epochs
    self._cache: dict[int, np.ndarray] = {}

  def __len__(self):
    return len(self._labels) * self._max_epochs

  def __getitem__(self, i: int) -> int:
    n = len(self._labels)
    epoch, j = divmod(int(i), n)
    idx = self._cache.get(epoch)
    if idx is None:
      idx = balanced_indices(self._labels, self._seed, epoch)
      self._cache = {epoch: idx}
    return int(idx[j])


class _ReadExample:
  """index -> the source's example (picklable, for Grain worker processes)."""

  def __init__(self, source):
    self.source = source

  def __call__(self, i) -> dict:
    return self.source[int(i)]


class _ReadBatch:
  """A batch of indices -> {'image': uint8 (B,S,S,3), 'label': int32 (B,)}."""

  def __init__(self, source):
    self.source = source

  def __call__(self, indices) -> dict:
    if hasattr(self.source, "read_batch"):
      return self.source.read_batch(indices)
    return memory_source.stack_examples(memory_source.read_examples(self.source, indices))


def train_dataset(source, *, global_batch_size: int, image_size: int, aug, seed: int,
                  labels: Sequence[int] | None = None, balanced: bool = False,
                  process_index: int | None = None,
                  process_count: int | None = None) -> grain.MapDataset:
  """Infinite, shuffled, augmented, batched training dataset for this process; element s is
  global batch s, the one step s + 1 trains on."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if global_batch_size % process_count:
    raise ValueError(f"batch_size={global_batch_size} is not divisible by the "
                     f"{process_count} processes.")
  local_batch = global_batch_size // process_count
  if len(source) // process_count < local_batch:
    raise ValueError(f"Training split has {len(source)} examples, fewer than one batch of "
                     f"{local_batch} per process.")
  # One global stream, the same on every process (and for any number of processes):
  # shuffled (reshuffled every epoch) or class-balanced, then augmented per element.
  if balanced:
    if labels is None:
      raise ValueError("Balanced sampling needs the labels of the training split.")
    ds = grain.MapDataset.source(_BalancedIndices(labels, seed)).seed(seed)
  else:
    ds = grain.MapDataset.range(len(source)).seed(seed).shuffle().repeat(None)
  if aug.get("on_device", False):
    # uint8 at the stored resolution, one read per batch; the train step augments and
    # resizes on the device.
    ds = _process_slice(ds, process_index, process_count, local_batch)
    return ds.batch(local_batch, drop_remainder=True).map(_ReadBatch(source))
  ds = ds.map(_ReadExample(source)).random_map(
      lambda ex, rng: augment.train_transform(ex, rng, image_size=image_size, aug=aug))
  ds = _process_slice(ds, process_index, process_count, local_batch)
  return ds.batch(local_batch, drop_remainder=True)


def from_step(ds: grain.MapDataset, step: int) -> grain.MapDataset:
  """The training stream `ds` of `train_dataset` as a run resumed after `step` reads it."""
  return ds[step:] if step else ds


def train_iterator(ds: grain.MapDataset, num_threads: int = 2, prefetch: int = 4,
                   num_workers: int = 0):
  """An iterator over `ds` that prefetches in threads and, with
  `num_workers` > 0, decodes and batches in that many worker processes (the same batches
  in the same order either way)."""
  read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  it = ds.to_iter_dataset(read)
  if num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(it)


def eval_batches(source, *, global_batch_size: int, image_size: int | None,
                 process_index: int | None = None, process_count: int | None = None,
                 num_threads: int = 2) -> Iterator[dict]:
  """Yields padded batches {'image','label','index','id','mask'} covering this process's
  share once; 'index' is the example's position in `source`, 'id' its own id. Images are
  float32 resized to `image_size` on the host, or (image_size=None) uint8 as stored."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local_batch = global_batch_size // process_count
  n = len(source)
  per_process = math.ceil(n / process_count)
  num_batches = max(1, math.ceil(per_process / local_batch))
  start = process_index * per_process
  stop = min(n, start + per_process)
  def transform(i, ex):
    if image_size is None:  # uint8 as stored: the eval step resizes on the device
      out = {"image": np.asarray(ex["image"], np.uint8), "label": np.int32(ex["label"])}
    else:
      out = augment.eval_transform(ex, image_size=image_size)
    out["index"] = np.int32(start + i)  # position in `source`, so outputs can be reordered
    out["id"] = np.int32(ex.get("id", start + i))
    return out

  ds = grain.MapDataset.source(source)[start:stop].map_with_index(transform)
  ds = ds.batch(local_batch, drop_remainder=False)
  read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4)
  it = iter(ds.to_iter_dataset(read)) if len(ds) else iter(())
  for b in range(num_batches):
    batch = next(it, None)
    if batch is None:  # this process has run out: a fully padded batch keeps hosts in step
      shape = ((0, image_size, image_size, 3) if image_size is not None
               else (0, *source[0]["image"].shape))
      batch = {"image": np.zeros(shape, np.float32 if image_size is not None else np.uint8),
               "label": np.zeros((0,), np.int32), "index": np.zeros((0,), np.int32),
               "id": np.zeros((0,), np.int32)}
    k = batch["label"].shape[0]
    mask = np.zeros((local_batch,), np.float32)
    mask[:k] = 1.0
    pad = local_batch - k
    yield {
        "image": np.pad(batch["image"], ((0, pad), (0, 0), (0, 0), (0, 0))),
        "label": np.pad(batch["label"], (0, pad)),
        "index": np.pad(batch["index"], (0, pad)),
        "id": np.pad(batch["id"], (0, pad)),
        "mask": mask,
    }
