"""Probes of a frozen representation that cost seconds: a closed-form ridge-regression linear
probe and a cosine k-NN, on cached features, and label efficiency (1% .. 100% of the
training labels) from the same features without any SGD run.

Numpy only (no jax). The features come from derm_jax/tasks/features.py (a run's
starting backbone over train/val/test); `python -m derm_jax.probes` runs this for every arm
and seed of a study.

Ridge probe (`ridge_probe`), as big_vision's few-shot evaluator does it:
  * features standardised with the mean and std of the TRAINING (sub)set (a feature whose
    std is below 1e-6 is only centred);
  * targets one-hot {0, 1} (the ±1 targets of big_vision give the same argmax, and each
    class's scores differ only by the affine map s -> 2 s - 1: identical accuracies and
    AUCs). The scores are the raw regression outputs, not probabilities: argmax gives the
    prediction, and per-class AUCs rank them;
  * W = (Xc^T D Xc + λ I)^-1 Xc^T D Yc with an unregularised intercept by centring
    (Xc, Yc: centred by their (weighted) means; D: the sample weights). This is
    scikit-learn's `Ridge(alpha=λ)` (with `sample_weight=D`), which the tests check;
  * class-balanced by default (`class_balanced=True`): each example weighs n / (K n_c), as
    the SGD classifier's `class_weighted_loss` weighs its loss, so every class counts the
    same in the squared error. Least squares on one-hot targets otherwise leans on the
    majority class far more than a cross-entropy probe does (on DermaMNIST, 67% 'nv', the
    unweighted ridge scored 36.5% balanced accuracy where the balanced one scored 58.0%,
    same features); `class_balanced=False` gives plain ridge (D = 1);
  * one eigendecomposition of the smaller Gram matrix (Xc^T D Xc, d x d, when n >= d, else
    the n x n kernel), in float64, gives W for every λ of the grid: W(λ) = A diag(1 / (e +
    λ)) C (`RidgePath`);
  * λ from `DEFAULT_LAMBDAS` (10^-4 .. 10^6, half decades: 21 values) chosen by the
    balanced accuracy (the study's headline metric) on the validation split; ties go to the
    larger λ (more regularised). `lambda_at_grid_edge` says when the best λ is the
    smallest or largest of the grid.

k-NN (`knn_probe`), as derm_jax/evaluation/knn.py votes (the SSL practice): features
L2-normalised, the k training examples of highest cosine similarity vote exp(cos / T) (T =
0.07) for their class, scores normalised to sum to 1. The neighbours are the first k in the
order (similarity descending, training index ascending): a tie in similarity at the k-th
place goes to the LOWER training index (knn.knn_predict leaves it to np.argpartition, so
this module has its own vote, which equals knn_predict wherever there is no such tie). k
from `DEFAULT_KS` (1, 5, 10, 20, 50; capped at the number of training examples), chosen on
validation by balanced accuracy, ties to the larger k. One similarity pass serves every k.

Label efficiency (`label_efficiency`): for each fraction and subset seed, the class-
stratified subset `data.label_fractions.fraction_indices(train_labels, fraction, seed)` (the
nested subsets the SGD label-fraction runs train on; the SGD run of seed s uses subset seed
s) -> ridge and k-NN fitted on it, λ / k chosen on the FULL validation split, scored on
test with `metrics.classification_metrics`. `table_rows` turns a study's
closed_form_probes.json into one row per arm and fraction for a report.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from derm_jax import metrics
from derm_jax.data import label_fractions

DEFAULT_LAMBDAS = tuple(float(10.0 ** (e / 2)) for e in range(-8, 13))  # 1e-4 .. 1e6
DEFAULT_KS = (1, 5, 10, 20, 50)
DEFAULT_TEMPERATURE = 0.07  # knn.py's vote
DEFAULT_FRACTIONS = (0.01, 0.1, 0.25, 1.0)
DEFAULT_SUBSET_SEEDS = (0, 1, 2)
# Scores of a probe's test predictions kept in the results (the rest is per-class detail).
HEADLINE = metrics.HEADLINE
_MIN_STD = 1e-6


# ----------------------------------------------------------------------------- helpers


def _features(x: Any, name: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{name} must be 2-D (N, D) features, got shape {x.shape}.")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} has non-finite values (NaN or inf).")
  return x


def _labels(y: Any, n: int, num_classes: int, name: str) -> np.ndarray:
  y = np.asarray(y).reshape(-1)
  if y.shape[0] != n:
    raise ValueError(f"{name} has {y.shape[0]} labels for {n} feature rows.")
  if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0
                 or y.max() >= num_classes):
    raise ValueError(f"{name} must be integers in [0, {num_classes}).")
  return y.astype(np.int64)


def class_balanced_weights(labels: Any, num_classes: int) -> np.ndarray:
  """(N,) weights n / (K_present n_c): every present class weighs the same in total, and
  the weights average to 1 (the SGD classifier's class_weighted_loss, per example)."""
  labels = np.asarray(labels, np.int64)
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  present = int((counts > 0).sum())
  return labels.size / (present * counts[labels])


def balanced_accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
  """Mean recall over the classes present in `labels` of argmax(scores) (ties: the lower
  class, as metrics.classification_metrics)."""
  preds = np.argmax(scores, axis=1)
  recalls = [np.mean(preds[labels == c] == c) for c in np.unique(labels)]
  return float(np.mean(recalls))


def _select(values: Sequence[float]) -> int:
  """Index of the best value; ties go to the LAST one (the grids are ascending: the larger
  λ or k, the more regularised)."""
  best = max(values)
  return max(i for i, v in enumerate(values) if v == best)


def _headline(labels: np.ndarray, scores: np.ndarray, num_classes: int) -> dict[str, Any]:
  m = metrics.classification_metrics(labels, scores, num_classes)
  out = {k: m[k] for k in HEADLINE}
  out["per_class_recall"] = m["per_class_recall"]
  return out


@dataclasses.dataclass
class ProbeResult:
  """A probe fitted on a training set, its hyperparameter chosen on validation.

  param: the chosen λ (ridge) or k (k-NN); val_balanced_accuracy: {param: balanced accuracy
  on validation} for the whole grid; test_scores: (N_test, K) scores (ridge: regression
  outputs; k-NN: vote shares summing to 1), None without a test set; test_metrics: their
  headline metrics (JSON-safe), None without test labels."""

  param: float | int
  val_balanced_accuracy: dict[float | int, float]
  test_scores: np.ndarray | None
  test_metrics: dict[str, Any] | None

  def summary(self, name: str) -> dict[str, Any]:
    grid = list(self.val_balanced_accuracy)
    out = {name: self.param, "val_balanced_accuracy": self.val_balanced_accuracy[self.param],
           f"{name}_at_grid_edge": len(grid) > 1 and self.param in (grid[0], grid[-1])}
    if self.test_metrics is not None:
      out["test"] = self.test_metrics
    return metrics.to_jsonable(out)


# ----------------------------------------------------------------------------- ridge


@dataclasses.dataclass
class RidgePath:
  """Ridge regression of one-hot targets on standardised features for every λ at once.

  With Z = (X - mean) / scale (the training set's statistics), z0 / y0 the (weighted)
  means of Z and Y, and Xc = sqrt(D)(Z - z0), Yc = sqrt(D)(Y - y0):
    coef(λ) = A diag(1 / (eigvals + λ)) C,  intercept(λ) = y0 - z0 coef(λ),
  where (primal, n >= d) Xc^T Xc = V E V^T, A = V, C = V^T Xc^T Yc, or (dual, n < d)
  Xc Xc^T = U E U^T, A = Xc^T U, C = U^T Yc."""

  mean: np.ndarray       # (d,) of the training features
  scale: np.ndarray      # (d,) their std (1 where below _MIN_STD)
  z_offset: np.ndarray   # (d,) weighted mean of the standardised training features
  y_offset: np.ndarray   # (K,) weighted mean of the one-hot targets
  basis: np.ndarray      # A: (d, r)
  eigvals: np.ndarray    # (r,)
  projected: np.ndarray  # C: (r, K)

  @classmethod
  def fit(cls, x: Any, labels: Any, num_classes: int,
          sample_weight: Any | None = None) -> RidgePath:
    x = _features(x, "train features").astype(np.float64)
    n, d = x.shape
    if n < 2:
      raise ValueError(f"ridge needs at least 2 training examples, got {n}.")
    y = _labels(labels, n, num_classes, "train labels")
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    scale = np.where(std < _MIN_STD, 1.0, std)
    z = (x - mean) / scale
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
    if w.shape != (n,) or np.any(w < 0) or not np.any(w > 0):
      raise ValueError(f"sample_weight must be (N,) = ({n},) non-negative weights, not all 0.")
    onehot = np.eye(num_classes)[y]
    z0 = w @ z / w.sum()
    y0 = w @ onehot / w.sum()
    root = np.sqrt(w)[:, None]
    xc = root * (z - z0)
    yc = root * (onehot - y0)
    if n >= d:
      eigvals, v = np.linalg.eigh(xc.T @ xc)
      basis, projected = v, v.T @ (xc.T @ yc)
    else:
      eigvals, u = np.linalg.eigh(xc @ xc.T)
      basis, projected = xc.T @ u, u.T @ yc
    return cls(mean=mean, scale=scale, z_offset=z0, y_offset=y0, basis=basis,
               eigvals=np.maximum(eigvals, 0.0), projected=projected)

  def standardized(self, x: Any) -> np.ndarray:
    return (np.asarray(x, np.float64) - self.mean) / self.scale

  def _inner(self, lam: float) -> np.ndarray:
    if not lam > 0:
      raise ValueError(f"ridge λ={lam!r} must be > 0.")
    return self.projected / (self.eigvals + float(lam))[:, None]

  def coef(self, lam: float) -> np.ndarray:
    """(d, K) weights on the standardised features."""
    return self.basis @ self._inner(lam)

  def intercept(self, lam: float) -> np.ndarray:
    return self.y_offset - self.z_offset @ self.coef(lam)

  def scores(self, x: Any, lambdas: Iterable[float]) -> dict[float, np.ndarray]:
    """{λ: (N, K) regression outputs} of raw features `x`; one projection for all λ."""
    p = (self.standardized(x) - self.z_offset) @ self.basis
    return {float(lam): p @ self._inner(lam) + self.y_offset for lam in lambdas}


def ridge_probe(train: tuple[Any, Any], val: tuple[Any, Any],
                test: tuple[Any, Any | None] | None, num_classes: int,
                lambdas: Sequence[float] = DEFAULT_LAMBDAS,
                class_balanced: bool = True) -> ProbeResult:
  """Ridge probe fitted on `train` (X, y), λ chosen by balanced accuracy on `val` (X, y)
  (ties: the larger λ), scored on `test` (X, y or None: scores only)."""
  lambdas = sorted(float(v) for v in lambdas)
  if not lambdas:
    raise ValueError("ridge_probe needs at least one λ.")
  x, y = train
  y = np.asarray(y).reshape(-1)
  weights = class_balanced_weights(y, num_classes) if class_balanced else None
  path = RidgePath.fit(x, y, num_classes, weights)
  val_x = _features(val[0], "val features")
  val_y = _labels(val[1], val_x.shape[0], num_classes, "val labels")
  curve = {lam: balanced_accuracy(val_y, s) for lam, s in path.scores(val_x, lambdas).items()}
  best = lambdas[_select(list(curve.values()))]
  return _finish(best, curve, test, num_classes, lambda q: path.scores(q, [best])[best])


def _finish(best, curve, test, num_classes, score_fn) -> ProbeResult:
  if test is None:
    return ProbeResult(best, curve, None, None)
  test_x = _features(test[0], "test features")
  scores = score_fn(test_x)
  if test[1] is None:
    return ProbeResult(best, curve, scores, None)
  test_y = _labels(test[1], test_x.shape[0], num_classes, "test labels")
  return ProbeResult(best, curve, scores, _headline(test_y, scores, num_classes))


# ----------------------------------------------------------------------------- k-NN


def _l2_normalized(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  norm = np.sqrt(np.sum(np.square(x, dtype=np.float64), axis=1, keepdims=True))
  return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def nearest(train_x: Any, query_x: Any, k: int, chunk_size: int = 1024
            ) -> tuple[np.ndarray, np.ndarray]:
  """(indices, similarities), both (Q, k'), k' = min(k, N): each query's k most cosine-
  similar training examples in the order (similarity descending, index ascending)."""
  train = _l2_normalized(_features(train_x, "train features"))
  query = _l2_normalized(_features(query_x, "query features"))
  if train.shape[1] != query.shape[1]:
    raise ValueError(f"train (D={train.shape[1]}) and query (D={query.shape[1]}) features "
                     "differ in size.")
  n = train.shape[0]
  if n == 0:
    raise ValueError("k-NN needs at least one training example.")
  k = min(int(k), n)
  idx = np.zeros((query.shape[0], k), np.int64)
  sims = np.zeros((query.shape[0], k), np.float32)
  for lo in range(0, query.shape[0], chunk_size):
    sim = query[lo:lo + chunk_size] @ train.T  # (c, N) float32
    rows = np.arange(sim.shape[0])[:, None]
    if k < n:
      top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
      kth = sim[rows, top].min(axis=1)
      # A similarity equal to the k-th one outside the chosen k: pick by index instead.
      for r in np.flatnonzero((sim >= kth[:, None]).sum(axis=1) > k):
        top[r] = np.lexsort((np.arange(n), -sim[r]))[:k]
    else:
      top = np.broadcast_to(np.arange(n), sim.shape).copy()
    order = np.lexsort((top, -sim[rows, top]))  # by -sim, then index (last axis)
    top = np.take_along_axis(top, order, axis=1)
    idx[lo:lo + chunk_size] = top
    sims[lo:lo + chunk_size] = sim[rows, top]
  return idx, sims


def knn_scores(train_x: Any, train_y: Any, query_x: Any, ks: Iterable[int], num_classes: int,
               temperature: float = DEFAULT_TEMPERATURE) -> dict[int, np.ndarray]:
  """{k: (Q, K) vote shares} of the weighted k-NN for each k (capped at N), from one
  similarity pass: neighbour j votes exp(cos_j / T) for its class, shares sum to 1."""
  ks = sorted({min(int(k), np.asarray(train_x).shape[0]) for k in ks})
  if not ks or ks[0] < 1 or not temperature > 0:
    raise ValueError(f"k-NN needs ks >= 1 (got {ks}) and temperature > 0 (got {temperature}).")
  x = _features(train_x, "train features")
  y = _labels(train_y, x.shape[0], num_classes, "train labels")
  idx, sims = nearest(x, query_x, ks[-1])
  votes = np.exp((sims.astype(np.float64) - sims[:, :1]) / temperature)  # max first: no overflow
  onehot = np.eye(num_classes)[y[idx]] * votes[..., None]  # (Q, kmax, K)
  cumulative = np.cumsum(onehot, axis=1)
  out = {}
  for k in ks:
    s = cumulative[:, k - 1]
    out[k] = s / s.sum(axis=1, keepdims=True)
  return out


def knn_probe(train: tuple[Any, Any], val: tuple[Any, Any], test: tuple[Any, Any | None] | None,
              num_classes: int, ks: Sequence[int] = DEFAULT_KS,
              temperature: float = DEFAULT_TEMPERATURE) -> ProbeResult:
  """Weighted cosine k-NN on `train`, k chosen by balanced accuracy on `val` (ties: the
  larger k), scored on `test`."""
  x, y = train
  val_x = _features(val[0], "val features")
  val_y = _labels(val[1], val_x.shape[0], num_classes, "val labels")
  curve = {k: balanced_accuracy(val_y, s)
           for k, s in knn_scores(x, y, val_x, ks, num_classes, temperature).items()}
  grid = list(curve)
  best = grid[_select(list(curve.values()))]
  return _finish(best, curve, test, num_classes,
                 lambda q: knn_scores(x, y, q, [best], num_classes, temperature)[best])


# ----------------------------------------------------------------------------- label efficiency


def fraction_key(fraction: float) -> str:
  """How a fraction is written in keys and folder names (the study's fractions/<f>/)."""
  return format(float(fraction), "g")


def label_efficiency(features: Mapping[str, tuple[Any, Any]],
                     fractions: Sequence[float] = DEFAULT_FRACTIONS,
                     subset_seeds: Sequence[int] = DEFAULT_SUBSET_SEEDS,
                     num_classes: int | None = None,
                     lambdas: Sequence[float] = DEFAULT_LAMBDAS,
                     ks: Sequence[int] = DEFAULT_KS,
                     temperature: float = DEFAULT_TEMPERATURE,
                     class_balanced: bool = True) -> list[dict[str, Any]]:
  """Ridge and k-NN test metrics for each fraction x subset seed of the training labels.

  Args:
    features: {'train': (X, y), 'val': (X, y), 'test': (X, y)}.
    fractions: in (0, 1]; subset seeds: seeds of `fraction_indices` (nested across
      fractions for one seed; the fraction 1.0 subset is the whole split for every seed,
      computed once and repeated with `same_as_subset_seed`).
    num_classes: K (default: 1 + the largest label of any split).
  Returns a JSON-safe list, one record per (fraction, subset seed) in that order:
    {'fraction', 'subset_seed', 'n_train', 'train_class_counts',
     'ridge': {'lambda', 'lambda_at_grid_edge', 'val_balanced_accuracy', 'test': {...}},
     'knn': {'k', 'k_at_grid_edge', 'val_balanced_accuracy', 'test': {...}},
     'seconds', ['same_as_subset_seed']}
  where 'test' holds accuracy, balanced_accuracy, macro_f1, macro_auc, per_class_recall.
  """
  missing = [s for s in ("train", "val", "test") if s not in features]
  if missing:
    raise ValueError(f"label_efficiency needs features of the splits {missing}.")
  for f in fractions:  # fails before any work, naming the bad value
    label_fractions.fraction_indices(np.zeros((1,), np.int64), f, 0)
  train_x = _features(features["train"][0], "train features")
  train_y = np.asarray(features["train"][1]).reshape(-1).astype(np.int64)
  if num_classes is None:
    num_classes = 1 + max(int(np.max(features[s][1])) for s in ("train", "val", "test"))
  val, test = features["val"], features["test"]
  records, done = [], {}
  for f in fractions:
    for seed in subset_seeds:
      idx = label_fractions.fraction_indices(train_y, f, int(seed))
      key = idx.tobytes()
      record = {"fraction": float(f), "subset_seed": int(seed), "n_train": int(idx.size),
                "train_class_counts": np.bincount(train_y[idx], minlength=num_classes)}
      if key in done:  # the same examples (fraction 1.0): the same probes
        first = done[key]
        record.update({k: first[k] for k in ("ridge", "knn", "seconds")})
        record["same_as_subset_seed"] = first["subset_seed"]
      else:
        start = time.perf_counter()
        sub = (train_x[idx], train_y[idx])
        ridge = ridge_probe(sub, val, test, num_classes, lambdas, class_balanced)
        knn = knn_probe(sub, val, test, num_classes, ks, temperature)
        record["ridge"] = ridge.summary("lambda")
        record["knn"] = knn.summary("k")
        record["seconds"] = time.perf_counter() - start
        done[key] = record
      records.append(metrics.to_jsonable(record))
  return records


# ----------------------------------------------------------------------------- report rows


def _mean(values: list[float]) -> float | None:
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def _sd(values: list[float]) -> float | None:
  values = [v for v in values if v is not None]
  return float(np.std(values, ddof=1)) if len(values) > 1 else None


def _median(values: list[float]) -> float | None:
  values = [v for v in values if v is not None]
  return float(np.median(values)) if values else None


def table_rows(probes: Mapping[str, Any]) -> list[dict[str, Any]]:
  """One row per (arm, fraction) of a closed_form_probes.json dict (derm_jax/probes.py), in
  the file's arm order, fractions ascending. Each row is a flat dict:

    arm, fraction (float), n_train (mean over records), num_seeds, num_records,
    ridge_balanced_accuracy, ridge_balanced_accuracy_sd, ridge_accuracy, ridge_macro_auc,
    ridge_lambda (median of the chosen λ),
    knn_balanced_accuracy, knn_balanced_accuracy_sd, knn_accuracy, knn_macro_auc,
    knn_k (median of the chosen k),
    sgd_probe_balanced_accuracy, sgd_probe_runs, sgd_classifier_balanced_accuracy,
    sgd_classifier_runs, ridge_minus_sgd_probe, knn_minus_sgd_probe

  Closed-form means and sds (ddof 1) run over every (seed, subset seed) record; SGD means
  over the seeds that have such a run (test_metrics.json). `*_minus_sgd_probe` is the mean
  over those seeds of (closed-form on the subset the SGD run used, i.e. subset seed = seed,
  else the mean over subset seeds) - (SGD probe). Numbers are None where undefined."""
  rows = []
  for arm, arm_entry in probes.get("arms", {}).items():
    seeds = arm_entry.get("seeds", {})
    by_fraction: dict[float, dict[str, Any]] = {}
    for seed, entry in seeds.items():
      for r in entry.get("records", []):
        by_fraction.setdefault(float(r["fraction"]), {}).setdefault(seed, []).append(r)
      for kind in ("probe", "classifier"):
        for f in entry.get("sgd", {}).get(kind, {}):
          by_fraction.setdefault(float(f), {}).setdefault(seed, [])
    for f in sorted(by_fraction):
      per_seed = by_fraction[f]
      recs = [r for rs in per_seed.values() for r in rs]

      def metric(method: str, key: str, rs=recs) -> list[float]:
        return [(r.get(method) or {}).get("test", {}).get(key) for r in rs]

      row: dict[str, Any] = {
          "arm": arm, "fraction": f, "n_train": _mean([r["n_train"] for r in recs]),
          "num_seeds": sum(1 for rs in per_seed.values() if rs), "num_records": len(recs)}
      for method, param in (("ridge", "lambda"), ("knn", "k")):
        row[f"{method}_balanced_accuracy"] = _mean(metric(method, "balanced_accuracy"))
        row[f"{method}_balanced_accuracy_sd"] = _sd(metric(method, "balanced_accuracy"))
        row[f"{method}_accuracy"] = _mean(metric(method, "accuracy"))
        row[f"{method}_macro_auc"] = _mean(metric(method, "macro_auc"))
        row[f"{method}_{param}"] = _median([(r.get(method) or {}).get(param) for r in recs])
      for kind in ("probe", "classifier"):
        values = [((seeds[s].get("sgd", {}).get(kind) or {}).get(fraction_key(f)) or {})
                  .get("balanced_accuracy") for s in per_seed]
        row[f"sgd_{kind}_balanced_accuracy"] = _mean(values)
        row[f"sgd_{kind}_runs"] = sum(v is not None for v in values)
      for method in ("ridge", "knn"):
        diffs = []
        for s, rs in per_seed.items():
          sgd = ((seeds[s].get("sgd", {}).get("probe") or {}).get(fraction_key(f)) or {})
          sgd = sgd.get("balanced_accuracy")
          same = [r for r in rs if str(r.get("subset_seed")) == str(s)]
          ours = _mean(metric(method, "balanced_accuracy", same or rs))
          if sgd is not None and ours is not None:
            diffs.append(ours - sgd)
        row[f"{method}_minus_sgd_probe"] = _mean(diffs)
      rows.append(row)
  return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """A plain-text table of `table_rows` (balanced accuracy, %): arm, fraction, n_train,
  ridge (± sd), k-NN (± sd), SGD probe and SGD classifier where the study has them."""
  def pct(v: float | None, sd: float | None = None) -> str:
    if v is None:
      return "-"
    return f"{100 * v:.1f}" + (f" ±{100 * sd:.1f}" if sd is not None else "")

  header = ("arm", "fraction", "n_train", "ridge BA", "λ", "k-NN BA", "k", "SGD probe BA",
            "SGD classifier BA")
  lines = [header]
  for r in rows:
    lines.append((r["arm"], fraction_key(r["fraction"]),
                  "-" if r["n_train"] is None else str(int(round(r["n_train"]))),
                  pct(r["ridge_balanced_accuracy"], r["ridge_balanced_accuracy_sd"]),
                  "-" if r["ridge_lambda"] is None else f"{r['ridge_lambda']:.3g}",
                  pct(r["knn_balanced_accuracy"], r["knn_balanced_accuracy_sd"]),
                  "-" if r["knn_k"] is None else f"{r['knn_k']:g}",
                  pct(r["sgd_probe_balanced_accuracy"]),
                  pct(r["sgd_classifier_balanced_accuracy"])))
  widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
  out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                   for i, (c, w) in enumerate(zip(line, widths, strict=True)))
         for line in lines]
  out.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(out)
