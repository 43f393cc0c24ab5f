"""MICLe positive pairs: another image of the same lesion, drawn on the device.

Multi-Instance Contrastive Learning (Azizi et al., ICCV 2021) pairs two *different* images
of one lesion (e.g. HAM10000's lesion_id) as a positive pair; an image without such a
sibling falls back to SimCLR's second augmented view of itself.

Host side, once per split: `sibling_table(group_ids)` from the group id of each example of
ONE split (indexed by the example's position in that split, like batch['index']). Device
side, in the train step: `sample_partners(key, batch['index'], table)` gives each index a
uniformly drawn different member of its group, or the index itself when it has none. A
table only knows the examples it was built from, so partners never cross splits.

  table = pairs.sibling_table(train_lesion_ids)          # numpy, host
  partner = pairs.sample_partners(key, batch["index"], table)  # jnp, inside jit
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class SiblingTable(NamedTuple):
  """Groups of one split in compressed form (int32 arrays; a pytree, so it passes into jit).

  `members` lists the split's indices sorted by group (each group a contiguous block, its
  members in ascending order). Example i's group is members[start[i] : start[i] + count[i]
  + 1], where it sits at position rank[i]; its siblings are the other count[i] entries.
  count[i] == 0: no sibling (no group, or a group of one).
  """
  start: np.ndarray    # (N,) offset of example i's group block in `members`
  count: np.ndarray    # (N,) number of siblings of example i (group size - 1)
  rank: np.ndarray     # (N,) position of example i inside its group block
  members: np.ndarray  # (N,) split indices sorted by group


def _is_missing(g) -> bool:
  if g is None:
    return True
  if isinstance(g, (str, bytes)):
    return len(g) == 0
  return isinstance(g, (float, np.floating)) and math.isnan(g)


def sibling_table(group_ids: Sequence[object] | np.ndarray) -> SiblingTable:
  """The sibling table of one split from the group id of each of its examples.

  Args:
    group_ids: (N,) group key of example i of the split (lesion id, any hashable: str, int,
      ...). None, '' and NaN mean "no group": such examples have no sibling.

  Returns:
    A SiblingTable over the split's positions 0..N-1 (O(N) memory, whatever the group sizes).
  """
  ids = np.asarray(group_ids, dtype=object).reshape(-1).tolist()
  n = len(ids)
  index_of: dict[object, int] = {}
  group = np.empty(n, dtype=np.int64)
  for i, g in enumerate(ids):
    # Real groups are numbered 0.. < n; an example without one gets a group of its own,
    # n + i (size 1: no sibling).
    group[i] = n + i if _is_missing(g) else index_of.setdefault(g, len(index_of))
  order = np.argsort(group, kind="stable")  # groups contiguous, members ascending
  sorted_groups = group[order]
  first = np.flatnonzero(np.diff(sorted_groups, prepend=-1))  # where each block starts
  sizes = np.diff(np.r_[first, n])
  block = np.repeat(np.arange(first.size), sizes)  # block of each sorted position
  start = np.empty(n, np.int64)
  count = np.empty(n, np.int64)
  rank = np.empty(n, np.int64)
  start[order] = first[block]
  count[order] = sizes[block] - 1
  rank[order] = np.arange(n) - first[block]
  return SiblingTable(start=start.astype(np.int32), count=count.astype(np.int32),
                      rank=rank.astype(np.int32), members=order.astype(np.int32))


def num_with_sibling(table: SiblingTable) -> int:
  """How many examples of the split have at least one sibling (a MICLe pair of two images)."""
  return int(np.count_nonzero(np.asarray(table.count)))


def sample_partners(key, indices, table: SiblingTable) -> jax.Array:
  """For each split index, a uniformly drawn sibling (another image of its group), else itself.

  Args:
    key: a jax PRNG key (e.g. fold_in of the step's rng with a stream of its own).
    indices: int (B,) positions in the split the table was built from, in [0, N).
    table: `sibling_table` of that split (numpy or jnp arrays).

  Returns:
    int32 (B,) partner indices, in the same split. Index i draws with fold_in(key, i), so the
    partner of an example depends only on (key, its index): not on its batch position or on
    how the batch is sharded (the same index twice in one batch gets the same partner).
  """
  idx = jnp.asarray(indices).astype(jnp.int32)
  start, count, rank = (jnp.asarray(a)[idx] for a in (table.start, table.count, table.rank))
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx.astype(jnp.uint32))
  r = jax.vmap(lambda k, c: jax.random.randint(k, (), 0, jnp.maximum(c, 1)))(keys, count)
  r = r + (r >= rank)  # skip the example itself: uniform over the count other members
  partner = jnp.asarray(table.members)[start + r]
  return jnp.where(count > 0, partner, idx).astype(jnp.int32)


def sample_partners_np(rng: np.random.Generator, indices: np.ndarray,
                       table: SiblingTable) -> np.ndarray:
  """`sample_partners` on the host, with a NumPy generator: for each split index a
  uniformly drawn sibling, else itself (int32, the shape of `indices`). The training loop
  draws a member's partners with `np.random.default_rng([seed, step])`, so they are a pure
  function of the member's seed and the step, like its batches."""
  idx = np.asarray(indices, np.int64)
  start, count, rank = (np.asarray(a)[idx] for a in (table.start, table.count, table.rank))
  r = np.floor(rng.random(idx.shape) * np.maximum(count, 1)).astype(np.int64)
  r = r + (r >= rank)  # skip the example itself: uniform over the count other members
  partner = np.asarray(table.members)[np.where(count > 0, start + r, 0)]
  return np.where(count > 0, partner, idx).astype(np.int32)
