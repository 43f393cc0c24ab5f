"""What the training loop feeds its members: the training split (in host memory and, where
it fits, on the devices), each member's stream of training indices (its seed, its label
fraction, balanced sampling) and the chunks of inputs of each dispatch.

  source, split = training_split(task)        # once per task (task.memo)
  feed = Feed(task, members, source, split, scan_len, start)
  xs = feed.xs(step, n)                        # inputs of steps step+1 .. step+n

With the split on the device a chunk's inputs are indices (the train program gathers the
images there); otherwise the chunk's batches come through Grain (derm_jax/data/input_pipeline.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from absl import logging

from derm_jax.data import device_data, input_pipeline, memory_source
from derm_jax.errors import ConfigError
from derm_jax.train import population
from derm_jax.train.population import Member
from derm_jax.train.task import Task


def training_split(task: Task):
  """(in-memory or streamed host source, device split or None) of the task's train data;
  loaded once per task (`task.memo`)."""
  return task.once("training_split", lambda: _load_training_split(task))


def _load_training_split(task: Task):
  c = task.config
  source = task.train_source
  if source is None:
    source = task.dataset.source("train")
  # Decoded once into host memory where it fits (input.cache_mb): the device copy is made
  # from it, and host batches become gathers. Grain worker processes (input.num_workers)
  # are the other way: they decode every epoch.
  if not c.input.get("num_workers", 0):
    source = memory_source.InMemorySource.load(
        source, c.input.get("cache_mb", 0), c.input.num_threads) or source
  split = device_data.DeviceSplit.load(source, task.mesh, c.input.get("device_data_mb", 0))
  return source, split


def member_pool(task: Task, member_config):
  """The training examples a member may draw (None: all of them): with
  `label_fraction` < 1, a class-stratified subset seeded by the member's seed, nested
  across fractions (the 1% subset lies inside the 10% one; data/label_fractions.py)."""
  fraction = float(member_config.get("label_fraction", 1.0) or 1.0)
  if fraction >= 1.0:
    return None
  from derm_jax.data import label_fractions
  pool = label_fractions.fraction_indices(task.train_labels, fraction, int(member_config.seed))
  logging.info("Label fraction %g, seed %d: the member trains on %d of the %d labelled "
               "training images.", fraction, int(member_config.seed), len(pool),
               len(task.train_labels))
  return pool


def train_stream(task: Task, member_config, source) -> input_pipeline.TrainIndices:
  """One member's stream of training indices (its seed sets the order)."""
  return input_pipeline.TrainIndices(len(source), int(member_config.seed),
                                     pool=member_pool(task, member_config),
                                     labels=task.train_labels,
                                     balanced=task.balanced_sampling)


def train_dataset(task: Task, source, member_config=None):
  """The Grain training stream of one member (for splits not held on the device)."""
  c = member_config if member_config is not None else task.config
  return input_pipeline.train_dataset(
      source, global_batch_size=c.batch_size, image_size=c.image_size, aug=c.aug,
      seed=int(c.seed), labels=task.train_labels, balanced=task.balanced_sampling,
      pool=member_pool(task, c))


def train_iterator(task: Task, ds):
  """The Grain iterator over `ds` (`train_dataset`, or a `from_step` of it), with the
  task's reader threads, prefetch and worker processes."""
  c = task.config
  return input_pipeline.train_iterator(ds, c.input.num_threads, c.input.prefetch,
                                       c.input.get("num_workers", 0))


class Feed:
  """The chunks' inputs: indices of every member's stream (data on the device), or their
  batches read through Grain, padded to `scan_len` steps with an `active` mask. A task's
  `extra_inputs` hook adds index arrays of other training images (MICLe's partners), each
  gathered on the device into the batch under its name."""

  def __init__(self, task: Task, members: Sequence[Member], source, split, scan_len: int,
               start: int):
    self.task, self.members, self.split, self.scan_len = task, list(members), split, scan_len
    self.batch = task.batch_size
    if task.extra_inputs is not None and split is None:
      raise ConfigError("This task's steps gather other training images than the batch's "
                        "(e.g. MICLe's pairs) from the training split held in device memory: "
                        "raise config.input.device_data_mb (the split does not fit).")
    if split is not None:
      self.streams = [train_stream(task, m.config, source) for m in members]
    else:
      self.iters = [train_iterator(task, input_pipeline.from_step(
          train_dataset(task, source, m.config), start)) for m in members]
    self.mesh = task.mesh

  def xs(self, step: int, n: int) -> dict:
    """Inputs of steps step+1 .. step+n (global batches step .. step+n-1)."""
    active = np.zeros((self.scan_len,), bool)
    active[:n] = True
    if self.split is not None:
      idx = np.stack([s.global_batches(step, n, self.batch) for s in self.streams], axis=1)
      idx = np.pad(idx, ((0, self.scan_len - n), (0, 0), (0, 0))).astype(np.int32)
      gathered = {"indices": idx}
      if self.task.extra_inputs is not None:
        gathered.update({k: np.asarray(v, np.int32) for k, v in
                         self.task.extra_inputs(self.members, idx, step, n).items()})
      sharding = self.split.index_sharding(3)
      out = {"active": population.replicate(active, self.mesh)}
      for k, v in gathered.items():
        local = v if sharding.spec == () or jax.process_count() == 1 else _local_cols(v)
        out[k] = jax.make_array_from_process_local_data(sharding, local, v.shape)
      return out
    steps = [[next(it) for it in self.iters] for _ in range(n)]
    batch = {k: np.stack([np.stack([s[m][k] for m in range(len(s))]) for s in steps])
             for k in steps[0][0]}
    batch = {k: np.pad(v, [(0, self.scan_len - n)] + [(0, 0)] * (v.ndim - 1))
             for k, v in batch.items()}
    sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(
        None, None, "data"))
    return {"active": population.replicate(active, self.mesh),
            "batch": {k: jax.make_array_from_process_local_data(sharding, v)
                      for k, v in batch.items()}}


def _local_cols(idx: np.ndarray) -> np.ndarray:
  """This process's columns of the global batch axis (the last)."""
  b = idx.shape[-1] // jax.process_count()
  p = jax.process_index()
  return idx[..., p * b:(p + 1) * b]
