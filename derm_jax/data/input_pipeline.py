"""The training stream (indices), Grain input pipelines over it, and padded eval batches.

Training: one global, endless stream of example indices, `TrainIndices` (epoch e is a
seeded permutation of the split, or of a subset `pool` of it, or n class-balanced draws).
Global batch s is stream positions [s*G, (s+1)*G) (G = the global batch size); step s + 1
trains on it. The stream is what a run's data order IS, so both ways of feeding it give
the same batches:
  * on the device (derm_jax/data/device_data.py): the split lives in accelerator memory
    and each step gathers its batch there from `TrainIndices.global_batches`;
  * through Grain (`train_dataset`, for splits that do not fit): the stream -> this
    process's slice of each global batch -> batches of indices -> one read per batch (a
    NumPy gather when the split is held in host memory, `memory_source.py`): uint8 images
    at the stored resolution, which the device augments and resizes (`aug.on_device`, the
    default). With `aug.on_device=False` each example is read and augmented on the host
    instead (`augment.train_transform`, seeded by the element's position in the stream).
Where a run is in its data is the number of steps it has taken: a run resumed at step s
starts the stream at batch s (`from_step`) and sees exactly the batches an uninterrupted
run would, whatever the number of processes or Grain workers before and after (no
iterator state is saved).

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
from derm_jax.data.errors import DataError
from derm_jax.errors import ConfigError


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


class TrainIndices:
  """The endless training stream as indices into a split: random access, vectorised.

  Epoch e (stream positions [e*n, (e+1)*n), n = len(pool)) is a permutation of `pool` (all
  of the split's indices by default; a label fraction's subset otherwise) drawn from
  `np.random.default_rng([seed, e])`, or with `balanced` n class-balanced draws with
  replacement from it. `[i]` is position i (a Grain source); `global_batches(first, count,
  batch_size)` the (count, batch_size) indices of global batches first..first+count-1.
  Its length is n * max_epochs: Grain reads a source modulo its length, which would lose
  the epoch number that seeds each epoch.
  """

  def __init__(self, num_examples: int, seed: int, *, pool: Sequence[int] | None = None,
               labels: Sequence[int] | None = None, balanced: bool = False,
               max_epochs: int = 1_000_000):
    self.pool = (np.arange(num_examples, dtype=np.int64) if pool is None
                 else np.asarray(pool, np.int64))
    if len(self.pool) == 0:
      raise ValueError("The training stream has no examples to draw from.")
    if balanced and labels is None:
      raise ValueError("Balanced sampling needs the labels of the training split.")
    self.seed, self.balanced, self.max_epochs = int(seed), bool(balanced), max_epochs
    self._pool_labels = None if labels is None else np.asarray(labels)[self.pool]
    self._cache: dict[int, np.ndarray] = {}

  def epoch(self, e: int) -> np.ndarray:
    """The split indices of epoch e, in stream order."""
    idx = self._cache.get(e)
    if idx is None:
      if self.balanced:
        order = balanced_indices(self._pool_labels, self.seed, e)
      else:
        order = np.random.default_rng([self.seed, e]).permutation(len(self.pool))
      idx = self.pool[order]
      if len(self._cache) > 4:
        self._cache.pop(min(self._cache))
      self._cache[e] = idx
    return idx

  def __len__(self) -> int:
    return len(self.pool) * self.max_epochs

  def __getitem__(self, i: int) -> int:
    e, j = divmod(int(i), len(self.pool))
    return int(self.epoch(e)[j])

  def positions(self, start: int, stop: int) -> np.ndarray:
    """Split indices at stream positions [start, stop)."""
    n = len(self.pool)
    first, last = start // n, (stop - 1) // n
    parts = [self.epoch(e) for e in range(first, last + 1)]
    flat = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return flat[start - first * n: stop - first * n]

  def global_batches(self, first: int, count: int, batch_size: int) -> np.ndarray:
    """(count, batch_size) split indices of global batches first, ..., first + count - 1."""
    flat = self.positions(first * batch_size, (first + count) * batch_size)
    return flat.reshape(count, batch_size)


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
                  pool: Sequence[int] | None = None, process_index: int | None = None,
                  process_count: int | None = None) -> grain.MapDataset:
  """Infinite, shuffled, augmented, batched training dataset for this process; element s is
  global batch s, the one step s + 1 trains on (this process's slice of it)."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if global_batch_size % process_count:
    raise ConfigError(f"batch_size={global_batch_size} is not divisible by the "
                     f"{process_count} processes.")
  local_batch = global_batch_size // process_count
  n = len(source) if pool is None else len(pool)
  if n // process_count < local_batch:
    raise DataError(f"Training split has {n} examples, fewer than one batch of "
                     f"{local_batch} per process.")
  # One global stream, the same on every process (and for any number of processes).
  stream = TrainIndices(len(source), seed, pool=pool, labels=labels, balanced=balanced)
  ds = grain.MapDataset.source(stream).seed(seed)
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
