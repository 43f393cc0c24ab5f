"""Tests for k-NN evaluation of a representation (derm_jax/evaluation/knn.py)."""

import numpy as np
import pytest

from derm_jax.evaluation import knn


def _clusters(n_per_class, num_classes, dim, spread, seed):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(num_classes, dim))
  labels = np.repeat(np.arange(num_classes), n_per_class)
  feats = centers[labels] + spread * rng.normal(size=(len(labels), dim))
  return feats.astype(np.float32), labels


def test_planted_clusters_are_classified_perfectly():
  train, ytrain = _clusters(50, 4, 64, 0.2, seed=0)
  # Unequal class sizes in the queries: balanced accuracy is computed, not copied.
  query, yquery = _clusters(30, 4, 64, 0.2, seed=0)
  query, yquery = query[20:], yquery[20:]
  m = knn.knn_metrics(train, ytrain, query * 5.0, yquery, k=20, num_classes=4, chunk_size=16)
  assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0 and m["macro_auc"] == 1.0


def test_shuffled_labels_give_about_chance():
  train, ytrain = _clusters(250, 4, 32, 0.5, seed=1)
  query, yquery = _clusters(250, 4, 32, 0.5, seed=1)
  shuffled = np.random.default_rng(2).permutation(ytrain)
  m = knn.knn_metrics(train, shuffled, query, yquery, k=20, num_classes=4)
  assert abs(m["accuracy"] - 0.25) < 0.06 and abs(m["balanced_accuracy"] - 0.25) < 0.06
  assert knn.knn_metrics(train, ytrain, query, yquery, k=20, num_classes=4)["accuracy"] > 0.9


def test_k1_is_the_brute_force_nearest_neighbour():
  rng = np.random.default_rng(3)
  train = rng.normal(size=(120, 16)).astype(np.float32) * rng.uniform(0.1, 10, (120, 1))
  labels = rng.integers(0, 5, 120)
  query = rng.normal(size=(50, 16)).astype(np.float32)
  scores = knn.knn_predict(train, labels, query, k=1, num_classes=5, chunk_size=7)
  cos = (query / np.linalg.norm(query, axis=1, keepdims=True)) @ (
      train / np.linalg.norm(train, axis=1, keepdims=True)).T
  np.testing.assert_array_equal(scores, np.eye(5)[labels[np.argmax(cos, axis=1)]])


def test_votes_are_weighted_by_exp_similarity_over_temperature():
  # Query along x; neighbours at cosine 0.9 (class 0) and 0.6, 0.6 (class 1); one far (class 2).
  train = np.array([[0.9, np.sqrt(1 - 0.81)], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]])
  labels = np.array([0, 1, 1, 2])
  query = np.array([[2.0, 0.0]])
  for t, k in ((0.07, 3), (1.0, 3), (1.0, 10)):
    w = np.exp(np.array([0.9, 0.6, 0.6, -1.0]) / t)[:min(k, 4)]
    expected = np.bincount(labels[:len(w)], weights=w, minlength=3) / w.sum()
    np.testing.assert_allclose(knn.knn_predict(train, labels, query, k, 3, temperature=t)[0],
                               expected, rtol=1e-6)
  # Sharp temperature: one close neighbour outvotes two farther ones; flat: they win.
  assert knn.knn_predict(train, labels, query, 3, 3, temperature=0.07)[0].argmax() == 0
  assert knn.knn_predict(train, labels, query, 3, 3, temperature=1.0)[0].argmax() == 1


def test_bad_inputs_are_refused():
  x = np.ones((3, 4), np.float32)
  with pytest.raises(ValueError, match="feature size"):
    knn.knn_predict(x, [0, 1, 0], np.ones((2, 5)), 1, 2)
  with pytest.raises(ValueError, match="differ in length"):
    knn.knn_predict(x, [0, 1], x, 1, 2)
  with pytest.raises(ValueError, match=r"\[0, 2\)"):
    knn.knn_predict(x, [0, 1, 2], x, 1, 2)
