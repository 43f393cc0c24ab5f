"""A label-fraction member of a study (derm_jax/train/loop.py:member_pool) trains on its
class-stratified subset of the training labels, and only on it: the indices the training
loop feeds it are that subset (data/label_fractions.py), every image of it each epoch,
while a full-label member of the same program draws from the whole split."""

import numpy as np
from conftest import tiny_classify_config

from derm_jax.data import label_fractions
from derm_jax.tasks import classifier as classifier_task
from derm_jax.train import feed as feed_lib
from derm_jax.train.population import Member


def test_a_fraction_member_is_fed_its_subset_only(data_dir, tmp_path):
  config = tiny_classify_config(data_dir, **{"init.source": "scratch"})
  task = classifier_task.build(config)
  labels = np.asarray(task.train_labels)

  def member(fraction, seed):
    c = tiny_classify_config(data_dir, **{"init.source": "scratch", "seed": seed,
                                          "label_fraction": fraction})
    return Member(f"{fraction}/{seed}", str(tmp_path / f"{fraction}_{seed}"), c)

  members = [member(0.1, 0), member(0.1, 1), member(1.0, 0)]
  source, split = feed_lib.training_split(task)
  assert split is not None  # the embedded subset is held on the device
  pool = label_fractions.fraction_indices(labels, 0.1, 0)
  assert 0 < len(pool) < len(labels) // 5
  assert feed_lib.member_pool(task, members[0].config).tolist() == pool.tolist()
  assert feed_lib.member_pool(task, members[2].config) is None
  b = task.batch_size
  steps = -(-2 * len(pool) // b)  # two epochs of the subset
  feed = feed_lib.Feed(task, members, source, split, steps, 0)
  fed = np.asarray(feed.xs(0, steps)["indices"])  # (steps, members, batch)
  assert fed.shape == (steps, 3, b)
  for m, seed in ((0, 0), (1, 1)):
    own = label_fractions.fraction_indices(labels, 0.1, seed)
    drawn = fed[:, m].ravel()
    assert set(drawn.tolist()) == set(own.tolist())  # its subset, all of it
    first = drawn[:len(own)]  # one epoch: each image of the subset once
    assert sorted(first.tolist()) == sorted(own.tolist())
    # Class-stratified: every class of the split is in the subset.
    assert set(labels[own].tolist()) == set(labels.tolist())
  assert set(fed[:, 0].ravel().tolist()) != set(fed[:, 1].ravel().tolist())  # seeded
  full = set(fed[:, 2].ravel().tolist())
  assert len(full) > 2 * len(pool) and not full <= set(pool.tolist())
  # The Grain stream (a split too large for the device) draws from the same subset.
  ds = feed_lib.train_dataset(task, source, members[0].config)
  in_pool = {source[int(i)]["image"].tobytes() for i in pool}
  images = np.concatenate([np.asarray(ds[s]["image"]) for s in range(len(pool) // b)])
  assert len(images) >= len(pool) // 2 and all(x.tobytes() in in_pool for x in images)
