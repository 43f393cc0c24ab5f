"""Tests for MICLe positive pairs (derm_jax/data/pairs.py): partners are other images of the same
lesion, drawn uniformly on the device, never from another split."""

import jax
import jax.numpy as jnp
import numpy as np

from derm_jax.data import pairs, splits

# Lesions: 'a' x3, 'b' x2, 'c' x1 (no sibling), missing ids (None, '', NaN), an int group.
GROUPS = ["a", "b", None, "a", "c", "", "b", "a", np.float32("nan"), 7, 7,
          float("nan")]
_sample = jax.jit(pairs.sample_partners)


def _groups_of(ids):
  """Expected siblings of each index, computed directly."""
  out = []
  for i, g in enumerate(ids):
    missing = g is None or g == "" or (isinstance(g, (float, np.floating)) and np.isnan(g))
    out.append(set() if missing else {j for j, h in enumerate(ids) if h == g and j != i})
  return out


def test_table_lists_each_examples_siblings():
  t = pairs.sibling_table(GROUPS)
  members = np.asarray(t.members)
  assert sorted(members.tolist()) == list(range(len(GROUPS)))
  for i, sib in enumerate(_groups_of(GROUPS)):
    assert t.count[i] == len(sib)
    block = members[t.start[i]:t.start[i] + t.count[i] + 1]
    if sib:
      assert block[t.rank[i]] == i and set(block.tolist()) - {i} == sib
  assert pairs.num_with_sibling(t) == 7  # a x3, b x2, 7 x2


def test_partners_are_siblings_or_self_and_jit_compatible():
  t = pairs.sibling_table(GROUPS)
  idx = np.arange(len(GROUPS), dtype=np.int32)
  expected = _groups_of(GROUPS)
  seen = [set() for _ in GROUPS]
  for s in range(40):
    p = np.asarray(_sample(jax.random.key(s), idx, t))
    assert p.dtype == np.int32 and p.shape == idx.shape
    for i, j in enumerate(p):
      if expected[i]:
        assert j != i and j in expected[i]
      else:
        assert j == i
      seen[i].add(int(j))
  # Every sibling shows up over 40 keys (a has 2 siblings per member).
  assert all(seen[i] == expected[i] for i in range(len(GROUPS)) if expected[i])


def test_partners_are_uniform_over_siblings():
  # One lesion of 5 images: each member's partner is uniform over its 4 siblings.
  t = pairs.sibling_table(["x"] * 5 + ["y"] * 2)
  idx = jnp.arange(5, dtype=jnp.int32)
  keys = jax.random.split(jax.random.key(0), 2000)
  p = np.asarray(jax.jit(jax.vmap(lambda k: pairs.sample_partners(k, idx, t)))(keys))
  for i in range(5):
    counts = np.bincount(p[:, i], minlength=5)
    assert counts[i] == 0
    others = np.delete(counts, i)
    chi2 = ((others - 500.0) ** 2 / 500.0).sum()
    assert chi2 < 16.3, (i, others)  # chi-square, 3 dof: p = 0.001


def test_partner_depends_on_index_not_batch_position():
  t = pairs.sibling_table(["x"] * 6)
  key = jax.random.key(3)
  a = np.asarray(_sample(key, np.array([0, 1, 2, 3], np.int32), t))
  b = np.asarray(_sample(key, np.array([3, 2, 1, 0], np.int32), t))
  np.testing.assert_array_equal(a, b[::-1])


def test_table_from_one_split_never_leaves_it():
  rng = np.random.default_rng(0)
  n = 300
  lesion = rng.integers(0, 90, n)  # ~3.3 images per lesion
  labels = lesion % 3
  assignment = splits.grouped_stratified_split(labels, lesion, seed=0)
  for name, positions in splits.split_indices(assignment).items():
    t = pairs.sibling_table(lesion[positions])  # the split's table, over its positions
    p = np.concatenate([np.asarray(_sample(jax.random.key(s), np.arange(len(positions)), t))
                        for s in range(5)])
    assert p.min() >= 0 and p.max() < len(positions), name
    src = np.tile(positions, 5)
    partner = positions[p]
    assert (assignment[partner] == splits.SPLIT_NAMES.index(name)).all()
    assert (lesion[partner] == lesion[src]).all()
    assert (partner != src).mean() > 0.5  # most images of a lesion do have a sibling


def test_no_groups_at_all():
  t = pairs.sibling_table([None, None, None])
  np.testing.assert_array_equal(np.asarray(_sample(jax.random.key(0), np.arange(3), t)),
                                [0, 1, 2])
  empty = pairs.sibling_table([])
  assert empty.count.shape == (0,) and pairs.num_with_sibling(empty) == 0
