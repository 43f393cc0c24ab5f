"""The MICLe partner sampler that training uses (`pairs.sample_partners_np`, called by
derm_jax/tasks/simclr.py `LesionPartners` with `np.random.default_rng([seed, step])`), over a real lesion
table: a partner is another image of the same lesion whenever the lesion has one, the image
itself otherwise, and never an image of another split (the table is per split)."""

import numpy as np

from derm_jax.data import pairs, splits


def _lesions(rng: np.random.Generator) -> np.ndarray:
  """Lesion ids of ~400 images: singletons and lesions of 2-5 images, shuffled."""
  sizes = np.concatenate([np.ones(120, int), rng.integers(2, 6, 80)])
  ids = np.repeat(np.arange(len(sizes)), sizes)
  return ids[rng.permutation(len(ids))]


def test_host_partners_are_other_images_of_the_lesion_within_the_split():
  rng = np.random.default_rng(0)
  lesion = _lesions(rng)
  labels = lesion % 3
  assignment = splits.grouped_stratified_split(labels, lesion, seed=0)
  for name, positions in splits.split_indices(assignment).items():
    table = pairs.sibling_table(lesion[positions])  # the split's table, over its positions
    group = lesion[positions]
    size = np.bincount(group, minlength=lesion.max() + 1)[group]  # images of i's lesion
    idx = np.arange(len(positions))
    for step in range(60):
      batch = rng.permutation(idx)[:64]
      p = pairs.sample_partners_np(np.random.default_rng([7, step]), batch, table)
      assert p.dtype == np.int32 and p.shape == batch.shape
      assert p.min() >= 0 and p.max() < len(positions), name  # inside the split
      assert (group[p] == group[batch]).all(), name  # the same lesion
      alone = size[batch] == 1
      assert (p[alone] == batch[alone]).all()  # no sibling: the image itself
      assert (p[~alone] != batch[~alone]).all(), name  # a sibling: never the image itself
      # The split's images are the only candidates (positions map back to the dataset).
      assert (assignment[positions[p]] == splits.SPLIT_NAMES.index(name)).all()


def test_host_partners_are_uniform_and_a_function_of_seed_and_step():
  table = pairs.sibling_table(["x"] * 5 + ["y"] * 2 + [None])
  idx = np.arange(8)
  draws = np.stack([pairs.sample_partners_np(np.random.default_rng([0, s]), idx, table)
                    for s in range(2000)])
  for i in range(5):
    counts = np.bincount(draws[:, i], minlength=5)[:5]
    assert counts[i] == 0
    chi2 = ((np.delete(counts, i) - 500.0) ** 2 / 500.0).sum()
    assert chi2 < 16.3, (i, counts)  # chi-square, 3 dof: p = 0.001
  assert (draws[:, 5] == 6).all() and (draws[:, 6] == 5).all() and (draws[:, 7] == 7).all()
  again = pairs.sample_partners_np(np.random.default_rng([0, 3]), idx, table)
  np.testing.assert_array_equal(again, draws[3])
