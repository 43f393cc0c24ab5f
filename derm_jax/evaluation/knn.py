"""k-nearest-neighbour evaluation of a frozen representation (numpy, on the host).

What self-supervised pretraining is watched with: embed the training split and a query
split (val) with the backbone (pooled features), classify each query by a vote of its k
most cosine-similar training examples, and score the votes. The vote is the common SSL
practice (Wu et al. 2018's instance discrimination, used by DINO and others): neighbour j
adds exp(cos(q, x_j) / temperature) to its class, and the scores are normalised to sum
to 1, so they can be read as class probabilities (and scored by
derm_jax.metrics, AUC included).

Queries go in chunks of `chunk_size`, so memory stays at chunk_size x num_train floats
(~40 MB for 1k x 10k) however many queries there are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from derm_jax import metrics


def _normalized(x: Any, name: str) -> np.ndarray:
  x = np.asarray(x, dtype=np.float32)
  if x.ndim != 2:
    raise ValueError(f"{name} must be 2-D (N, D) pooled features, got shape {x.shape}.")
  norm = np.sqrt(np.sum(np.square(x, dtype=np.float64), axis=1, keepdims=True))
  return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def knn_predict(train_feats: Any, train_labels: Any, query_feats: Any, k: int,
                num_classes: int, temperature: float = 0.07,
                chunk_size: int = 1024) -> np.ndarray:
  """(Q, num_classes) float64 class scores (rows sum to 1) of each query by weighted k-NN.

  Args:
    train_feats: (N, D) features of the labelled set (any float array, jax arrays too).
    train_labels: (N,) integer labels in [0, num_classes).
    query_feats: (Q, D) features to classify.
    k: neighbours per query (min(k, N) are used).
    num_classes: number of classes K.
    temperature: the vote of a neighbour at cosine similarity s is exp(s / temperature).
    chunk_size: queries scored at a time.
  """
  train = _normalized(train_feats, "train_feats")
  query = _normalized(query_feats, "query_feats")
  labels = np.asarray(train_labels).astype(np.int64).reshape(-1)
  if labels.shape[0] != train.shape[0]:
    raise ValueError(f"train_labels ({labels.shape[0]}) and train_feats ({train.shape[0]}) "
                     "differ in length.")
  if train.shape[1] != query.shape[1]:
    raise ValueError(f"train_feats (D={train.shape[1]}) and query_feats "
                     f"(D={query.shape[1]}) differ in feature size.")
  if train.shape[0] == 0:
    raise ValueError("knn_predict needs at least one training example.")
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"train_labels must lie in [0, {num_classes}).")
  if k < 1 or temperature <= 0:
    raise ValueError(f"k={k} must be >= 1 and temperature={temperature} > 0.")
  k = min(int(k), train.shape[0])
  scores = np.zeros((query.shape[0], num_classes), np.float64)
  for lo in range(0, query.shape[0], chunk_size):
    sim = query[lo:lo + chunk_size] @ train.T  # (c, N) cosine similarities
    rows = np.arange(sim.shape[0])[:, None]
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < sim.shape[1] else \
        np.broadcast_to(np.arange(sim.shape[1]), sim.shape)
    top_sim = sim[rows, top].astype(np.float64)
    # exp((s - max) / T): the same normalised votes, without overflow at small T.
    w = np.exp((top_sim - top_sim.max(axis=1, keepdims=True)) / temperature)
    chunk = scores[lo:lo + chunk_size]
    np.add.at(chunk, (np.broadcast_to(rows, top.shape), labels[top]), w)
    chunk /= chunk.sum(axis=1, keepdims=True)
  return scores


def knn_metrics(train_feats: Any, train_labels: Any, query_feats: Any, query_labels: Any,
                k: int, num_classes: int, temperature: float = 0.07,
                chunk_size: int = 1024) -> dict[str, float | None]:
  """{'accuracy', 'balanced_accuracy', 'macro_f1', 'macro_auc'} of `knn_predict` on labelled
  queries, as `metrics.classification_metrics` computes them (JSON-safe)."""
  scores = knn_predict(train_feats, train_labels, query_feats, k, num_classes,
                       temperature=temperature, chunk_size=chunk_size)
  m = metrics.classification_metrics(np.asarray(query_labels).reshape(-1), scores, num_classes)
  return {key: m[key] for key in metrics.HEADLINE}


# ----------------------------------------------------------------------------- evaluator

# Seed of the k-NN neighbour subset (`stratified_subset`): one fixed subset for every
# member and every evaluation of a run, so k-NN curves compare across steps and members.
SUBSET_SEED = 0


def stratified_subset(labels: Any, max_size: int, seed: int = SUBSET_SEED) -> np.ndarray:
  """Sorted positions of at most `max_size` examples (all when max_size <= 0 or >= N),
  each class keeping its share of `labels`: class c gets floor(max_size * n_c / N) places,
  the places left over go to the largest remainders, and every class present keeps at
  least one example when max_size allows. Within a class the examples are drawn uniformly
  (numpy's generator seeded by `seed`): the same labels give the same subset."""
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  n = labels.shape[0]
  if max_size <= 0 or max_size >= n:
    return np.arange(n)
  classes, counts = np.unique(labels, return_counts=True)
  exact = counts * (max_size / n)
  take = np.floor(exact).astype(np.int64)
  if max_size >= len(classes):
    take = np.maximum(take, 1)
  while take.sum() > max_size:  # the minimum of one came out of the largest classes
    take[np.argmax(take)] -= 1
  for i in np.argsort(-(exact - take), kind="stable")[:max_size - take.sum()]:
    take[i] += 1  # the places left over, by largest remainder (below n_c: max_size < N)
  rng = np.random.default_rng(seed)
  picked = [rng.choice(np.flatnonzero(labels == c), size=t, replace=False)
            for c, t in zip(classes, take, strict=True)]
  return np.sort(np.concatenate(picked))


class _Subset:
  """Positions `indices` of a random-access source, as a source of their own."""

  def __init__(self, source: Any, indices: np.ndarray):
    self.source, self.indices = source, np.asarray(indices)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return self.source[int(self.indices[int(i)])]


class KnnEvaluator:
  """k-NN accuracy of each member's frozen features: what self-supervised pretraining is
  watched with.

    ev = KnnEvaluator(dataset.source('train'), dataset.source('val'), train_labels=...,
                      num_classes=7, batch_size=128, mesh=mesh, k=20, max_train=5000)
    ev.run(run.predict)  # [{'knn_accuracy', 'knn_balanced_accuracy'}] per member

  `predict(batch)` is a population's eval step, giving per-example pooled features
  {feature_key: (B, M, D)}; both the labelled neighbours (the training split, or its
  `stratified_subset` of `max_train` examples, the same at every evaluation) and the
  queries go through it (`common.collect`), then each member's queries are classified by
  `knn_metrics` against that member's own neighbours.
  """

  def __init__(self, train_source: Any, query_source: Any, *, train_labels: Any,
               num_classes: int, batch_size: int, mesh, k: int = 20, max_train: int = 0,
               temperature: float = 0.07, feature_key: str = "features"):
    train_labels = np.asarray(train_labels)
    if len(train_labels) != len(train_source):
      raise ValueError(f"train_labels ({len(train_labels)}) and train_source "
                       f"({len(train_source)}) differ in length.")
    keep = stratified_subset(train_labels, int(max_train))
    self.train_source = (train_source if len(keep) == len(train_source)
                         else _Subset(train_source, keep))
    self.query_source = query_source
    self.num_classes, self.batch_size, self.mesh = num_classes, batch_size, mesh
    self.k, self.temperature, self.feature_key = int(k), float(temperature), feature_key

  def run(self, predict) -> list[dict[str, float]]:
    from derm_jax.evaluation import common
    bank = common.collect(predict, self.train_source, batch_size=self.batch_size,
                          mesh=self.mesh)
    query = common.collect(predict, self.query_source, batch_size=self.batch_size,
                           mesh=self.mesh)
    results = []
    for m in range(bank[self.feature_key].shape[1]):
      scores = knn_metrics(bank[self.feature_key][:, m], bank["label"],
                           query[self.feature_key][:, m], query["label"], k=self.k,
                           num_classes=self.num_classes, temperature=self.temperature)
      results.append({"knn_accuracy": scores["accuracy"],
                      "knn_balanced_accuracy": scores["balanced_accuracy"]})
    return results


def monitor(config, dataset, mesh):
  """A self-supervised task's `make_evaluator`: k-NN accuracy of the frozen features of
  each query split against the labelled training split (`config.knn.*`: k, a fixed
  class-stratified subset of at most `max_train` neighbours, the vote temperature)."""
  train_labels = np.asarray(dataset.labels("train"))

  def make_evaluator(source, has_labels: bool = True):
    del has_labels  # k-NN scores labelled queries only
    return KnnEvaluator(dataset.source("train"), source, train_labels=train_labels,
                        num_classes=dataset.meta.num_classes,
                        batch_size=config.eval_batch_size, mesh=mesh, k=config.knn.k,
                        max_train=config.knn.get("max_train", 0),
                        temperature=config.knn.get("temperature", 0.07))

  return make_evaluator
