"""Tests for the probes that cost seconds: the closed-form ridge probe and cosine k-NN
(derm_jax/evaluation/closed_form.py), the cached starting-backbone features
(derm_jax/tasks/features.py) and `python -m derm_jax.probes`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import balanced_accuracy_score

from derm_jax import metrics
from derm_jax.data import label_fractions
from derm_jax.evaluation import closed_form as cf
from derm_jax.evaluation import knn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _random_features(n, d, num_classes, seed):
  rng = np.random.default_rng(seed)
  # Features of very different scales and offsets: standardisation matters.
  x = rng.normal(size=(n, d)) * rng.uniform(0.01, 20.0, size=d) + rng.normal(size=d) * 5
  return x.astype(np.float32), rng.integers(0, num_classes, size=n)


# ----------------------------------------------------------------------------- ridge


@pytest.mark.parametrize("n,d", [(150, 40), (25, 60)])  # primal (n >= d) and dual (n < d)
@pytest.mark.parametrize("balanced", [False, True])
def test_ridge_equals_sklearn_for_every_lambda_of_one_decomposition(n, d, balanced):
  x, y = _random_features(n, d, 4, seed=n + d)
  q, _ = _random_features(30, d, 4, seed=7)
  weights = cf.class_balanced_weights(y, 4) if balanced else None
  path = cf.RidgePath.fit(x, y, 4, weights)
  z = (x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)) / x.astype(np.float64).std(0)
  np.testing.assert_allclose(path.standardized(x), z, rtol=1e-9, atol=1e-9)
  lambdas = (1e-3, 0.1, 3.0, 100.0, 1e4)
  scores = path.scores(q, lambdas)  # every λ from the one eigendecomposition
  zq = path.standardized(q)
  for lam in lambdas:
    ref = Ridge(alpha=lam, fit_intercept=True).fit(z, np.eye(4)[y], sample_weight=weights)
    np.testing.assert_allclose(path.coef(lam), ref.coef_.T, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(path.intercept(lam), ref.intercept_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(scores[lam], ref.predict(zq), rtol=1e-6, atol=1e-8)
  if balanced:  # the weights: n / (K n_c), each class the same total weight
    totals = np.bincount(y, weights=weights, minlength=4)
    np.testing.assert_allclose(totals, np.full(4, n / 4))


def _imbalanced_clusters(n, seed, dim=30, sep=0.6):
  rng = np.random.default_rng(seed)
  means = np.random.default_rng(99).normal(size=(3, dim))
  y = rng.choice(3, size=n, p=[0.8, 0.15, 0.05])
  return (means[y] * sep + rng.normal(size=(n, dim))).astype(np.float32), y


def test_ridge_lambda_is_the_best_on_validation_balanced_accuracy():
  train, val, test = (_imbalanced_clusters(n, s) for n, s in ((400, 0), (300, 1), (500, 2)))
  lambdas = tuple(10.0 ** e for e in range(-3, 8))
  result = cf.ridge_probe(train, val, test, 3, lambdas, class_balanced=False)
  # The curve is sklearn's balanced accuracy of sklearn's Ridge at every λ.
  mean, std = train[0].mean(0), train[0].std(0)
  std_val = (val[0] - mean) / std
  expected = {}
  for lam in lambdas:
    ref = Ridge(alpha=lam).fit((train[0] - mean) / std, np.eye(3)[train[1]])
    expected[lam] = balanced_accuracy_score(val[1], ref.predict(std_val).argmax(1))
  assert list(result.val_balanced_accuracy) == list(lambdas)
  np.testing.assert_allclose(list(result.val_balanced_accuracy.values()),
                             list(expected.values()))
  best = max(expected.values())
  assert result.param == max(lam for lam, v in expected.items() if v == best)  # ties: larger
  # Planted: a huge λ shrinks every weight, the majority class wins (balanced acc. 1/3);
  # the chosen λ is well above that, so the selection is not the grid's edge.
  assert expected[lambdas[-1]] < 0.4 < best
  assert result.param != lambdas[-1]
  # Test metrics: those of classification_metrics on the returned test scores.
  m = metrics.classification_metrics(test[1], result.test_scores, 3)
  assert {k: m[k] for k in cf.HEADLINE} == {k: result.test_metrics[k] for k in cf.HEADLINE}
  assert result.summary("lambda")["lambda"] == result.param


# ----------------------------------------------------------------------------- k-NN


def _brute_force_knn(train, labels, query, k, num_classes, temperature):
  """Loops over queries: neighbours sorted by (-cosine, training index), float64."""
  train = train / np.linalg.norm(train, axis=1, keepdims=True)
  query = query / np.linalg.norm(query, axis=1, keepdims=True)
  out = np.zeros((len(query), num_classes))
  for i, q in enumerate(query):
    sims = [float(np.dot(q, t)) for t in train]
    order = sorted(range(len(train)), key=lambda j: (-sims[j], j))[:k]
    top = max(sims[j] for j in order)
    for j in order:
      out[i, labels[j]] += np.exp((sims[j] - top) / temperature)
    out[i] /= out[i].sum()
  return out


def test_knn_equals_brute_force_on_random_features():
  x, y = _random_features(200, 16, 5, seed=3)
  q, _ = _random_features(40, 16, 5, seed=4)
  ks = (1, 3, 10, 50, 500)  # 500 > N: capped at 200
  scores = cf.knn_scores(x, y, q, ks, 5, temperature=0.1)
  assert sorted(scores) == [1, 3, 10, 50, 200]
  for k, s in scores.items():
    np.testing.assert_allclose(s, _brute_force_knn(x.astype(np.float64), y, q, k, 5, 0.1),
                               rtol=1e-5, atol=1e-9)
    # Without ties, the vote of knn.py.
    np.testing.assert_allclose(s, knn.knn_predict(x, y, q, k, 5, temperature=0.1), rtol=1e-6)


def test_knn_ties_go_to_the_lower_training_index():
  # Binary vectors with four ones in eight dimensions: cosines are multiples of 1/4, exact
  # in float32, and many training examples tie (duplicates included).
  rng = np.random.default_rng(5)
  rows = [np.isin(np.arange(8), rng.choice(8, 4, replace=False)) for _ in range(60)]
  x = np.array(rows + rows[:20], np.float32)  # 20 exact duplicates
  y = rng.integers(0, 3, size=len(x))
  q = np.array([np.isin(np.arange(8), rng.choice(8, 4, replace=False)) for _ in range(25)],
               np.float32)
  idx, sims = cf.nearest(x, q, 7, chunk_size=4)
  for i in range(len(q)):
    cos = x @ q[i] / 4.0
    expected = sorted(range(len(x)), key=lambda j: (-cos[j], j))[:7]
    assert idx[i].tolist() == expected
    np.testing.assert_array_equal(sims[i], cos[expected])
  ties = sum(np.sum(x @ qi / 4.0 == np.sort(x @ qi / 4.0)[-7]) > 1 for qi in q)
  assert ties > 0  # the boundary ties this test is about do occur
  scores = cf.knn_scores(x, y, q, (1, 7, 15), 3, temperature=0.07)
  for k in (1, 7, 15):
    np.testing.assert_allclose(scores[k], _brute_force_knn(x.astype(np.float64), y, q, k, 3,
                                                           0.07), rtol=1e-6, atol=1e-12)


def test_knn_probe_chooses_k_on_validation_balanced_accuracy():
  train, val, test = (_imbalanced_clusters(n, s, sep=0.5) for n, s in
                      ((300, 10), (200, 11), (200, 12)))
  result = cf.knn_probe(train, val, test, 3, ks=(1, 5, 20))
  for k, v in result.val_balanced_accuracy.items():
    s = cf.knn_scores(*train, val[0], [k], 3)[k]
    assert v == pytest.approx(balanced_accuracy_score(val[1], s.argmax(1)))
  best = max(result.val_balanced_accuracy.values())
  assert result.param == max(k for k, v in result.val_balanced_accuracy.items() if v == best)
  np.testing.assert_allclose(result.test_scores, cf.knn_scores(*train, test[0],
                                                               [result.param], 3)[result.param])


# ----------------------------------------------------------------------------- label efficiency


def _planted(n, seed, sep=0.3, dim=64):
  rng = np.random.default_rng(seed)
  means = np.random.default_rng(123).normal(size=(4, dim))
  y = rng.choice(4, size=n, p=[0.55, 0.25, 0.12, 0.08])
  return (means[y] * sep + rng.normal(size=(n, dim))).astype(np.float32), y


def test_label_efficiency_rises_with_the_fraction_on_nested_stratified_subsets():
  feats = {s: _planted(n, seed) for s, n, seed in
           (("train", 3000, 0), ("val", 800, 1), ("test", 1500, 2))}
  fractions, seeds = (0.01, 0.05, 0.25, 1.0), (0, 1, 2)
  start = time.perf_counter()
  records = cf.label_efficiency(feats, fractions, seeds, num_classes=4)
  elapsed = time.perf_counter() - start
  assert elapsed < 15, f"{elapsed:.1f} s for 12 ridge + k-NN fits"  # ~1.5 s on 2 cores
  assert [(r["fraction"], r["subset_seed"]) for r in records] == [
      (f, s) for f in fractions for s in seeds]
  json.dumps(records)  # JSON-safe
  y = feats["train"][1]
  counts = np.bincount(y, minlength=4)
  for r in records:  # class-stratified: each class keeps its share (and at least one)
    want = [label_fractions.class_take_count(c, r["fraction"]) for c in counts]
    assert r["train_class_counts"] == want and r["n_train"] == sum(want)
  for s in seeds:  # the subsets the records were fitted on are nested
    subsets = [set(label_fractions.fraction_indices(y, f, s)) for f in fractions]
    assert all(a < b for a, b in zip(subsets, subsets[1:], strict=False))
  assert records[-1]["same_as_subset_seed"] == 0  # fraction 1: the same examples, once
  for method in ("ridge", "knn"):
    means = [np.mean([r[method]["test"]["balanced_accuracy"] for r in records
                      if r["fraction"] == f]) for f in fractions]
    assert all(a < b for a, b in zip(means, means[1:], strict=False)), (method, means)
  assert means[0] < 0.5 and np.mean([r["ridge"]["test"]["balanced_accuracy"]
                                     for r in records[-3:]]) > 0.6


def test_table_rows_pairs_the_sgd_probe_with_the_subset_it_trained_on():
  def rec(f, s, ridge, knn_ba):
    return {"fraction": f, "subset_seed": s, "n_train": 10 if f < 1 else 100,
            "ridge": {"lambda": 1.0, "test": {"balanced_accuracy": ridge, "accuracy": 0.9,
                                               "macro_auc": 0.8}},
            "knn": {"k": 5, "test": {"balanced_accuracy": knn_ba, "accuracy": 0.7,
                                     "macro_auc": 0.6}}}

  doc = {"arms": {"vae": {"seeds": {
      "0": {"records": [rec(0.1, 0, 0.40, 0.30), rec(0.1, 1, 0.50, 0.35), rec(1.0, 0, 0.60, 0.5)],
            "sgd": {"probe": {"0.1": {"balanced_accuracy": 0.45}, "1": {"balanced_accuracy": 0.55}},
                    "classifier": {"1": {"balanced_accuracy": 0.65}}}},
      "1": {"records": [rec(0.1, 0, 0.20, 0.30), rec(0.1, 1, 0.30, 0.35), rec(1.0, 0, 0.70, 0.5)],
            "sgd": {"probe": {"0.1": {"balanced_accuracy": 0.10}}}}}}}}
  rows = cf.table_rows(doc)
  assert [(r["arm"], r["fraction"]) for r in rows] == [("vae", 0.1), ("vae", 1.0)]
  low, full = rows
  assert low["ridge_balanced_accuracy"] == pytest.approx(np.mean([0.4, 0.5, 0.2, 0.3]))
  assert low["ridge_balanced_accuracy_sd"] == pytest.approx(np.std([0.4, 0.5, 0.2, 0.3], ddof=1))
  assert low["num_seeds"] == 2 and low["num_records"] == 4 and low["n_train"] == 10
  assert low["sgd_probe_balanced_accuracy"] == pytest.approx(0.275)
  assert low["sgd_probe_runs"] == 2 and low["sgd_classifier_runs"] == 0
  # seed 0 is paired with subset seed 0 (0.40 - 0.45), seed 1 with subset seed 1 (0.3 - 0.1)
  assert low["ridge_minus_sgd_probe"] == pytest.approx(np.mean([-0.05, 0.2]))
  assert full["ridge_minus_sgd_probe"] == pytest.approx(0.05)  # seed 1 has no SGD probe at 1
  assert full["sgd_classifier_balanced_accuracy"] == pytest.approx(0.65)
  assert full["ridge_balanced_accuracy_sd"] == pytest.approx(np.std([0.6, 0.7], ddof=1))
  assert "vae" in cf.format_table(rows)


# ----------------------------------------------------------------------------- features of a study


def test_feature_cache_of_a_study_run(study, tmp_path):
  from derm_jax import layout
  from derm_jax.data import registry
  from derm_jax.tasks import features
  run = study / "arms" / "vae" / "seed_0"
  config = layout.read_config(str(run), task="classify")
  dataset = registry.get(config.data)
  cache = tmp_path / "cache"
  first = features.run_features(str(run), cache_dir=str(cache), dataset=dataset)
  assert first.status == {s: "computed" for s in features.SPLITS}
  for s in features.SPLITS:
    x, y = first.splits[s]
    assert x.shape == (len(dataset.labels(s)), 1280) and x.dtype == np.float32
    np.testing.assert_array_equal(y, dataset.labels(s))
    assert np.all(np.isfinite(x)) and x.std() > 0
  mtimes = {s: os.stat(cache / f"{s}.npz").st_mtime_ns for s in features.SPLITS}

  again = features.run_features(str(run), cache_dir=str(cache), dataset=dataset)
  assert again.status == {s: "reused" for s in features.SPLITS}
  assert {s: os.stat(cache / f"{s}.npz").st_mtime_ns for s in features.SPLITS} == mtimes
  for s in features.SPLITS:
    np.testing.assert_array_equal(again.splits[s][0], first.splits[s][0])

  # A damaged file is recomputed (and rewritten), with the reason in its status.
  (cache / "train.npz").write_bytes(b"not a zip file at all")
  fixed = features.run_features(str(run), cache_dir=str(cache), dataset=dataset)
  assert fixed.status["train"].startswith("recomputed (unreadable cache file")
  assert fixed.status["val"] == fixed.status["test"] == "reused"
  np.testing.assert_allclose(fixed.splits["train"][0], first.splits["train"][0], rtol=1e-5,
                             atol=1e-5)
  assert features.run_features(str(run), cache_dir=str(cache),
                               dataset=dataset).status["train"] == "reused"

  # The same run at another image size: another fingerprint, so every split is recomputed.
  other = tmp_path / "other_run"
  shutil.copytree(run, other, ignore=shutil.ignore_patterns("checkpoints", "tensorboard",
                                                            "external", "features"))
  cfg = json.loads((other / "config.json").read_text())
  cfg["image_size"] = 64
  (other / "config.json").write_text(json.dumps(cfg))
  changed = features.run_features(str(other), cache_dir=str(cache), splits=("val",),
                                  dataset=dataset)
  assert changed.status == {"val": "recomputed (fingerprint changed: image_size)"}
  assert os.stat(cache / "val.npz").st_mtime_ns != mtimes["val"]
  assert not np.allclose(changed.splits["val"][0], first.splits["val"][0])


def test_features_are_the_frozen_backbone_the_classifier_started_from(study, tmp_path):
  import jax
  import jax.numpy as jnp

  from derm_jax import layout
  from derm_jax.data import device_augment, registry
  from derm_jax.models import registry as model_registry
  from derm_jax.tasks import features
  from derm_jax.tasks.contrastive import pool_features
  from derm_jax.train import checkpoint
  run = study / "arms" / "vae" / "seed_0"
  config = layout.read_config(str(run), task="classify")
  assert config.freeze_backbone  # the classifier's checkpoint keeps its starting backbone
  dataset = registry.get(config.data)
  fs = features.run_features(str(run), cache_dir=str(tmp_path / "c"), splits=("val",),
                             dataset=dataset)
  _, tree = checkpoint.restore_state_tree(str(run / "checkpoints"), without=("opt_state",))
  variables = {"params": tree["frozen"]["backbone"]}
  if tree.get("batch_stats"):
    variables["batch_stats"] = tree["batch_stats"]["backbone"]
  backbone = model_registry.get_backbone(config.model.backbone)
  source = dataset.source("val")
  images = np.stack([source[i]["image"] for i in range(8)])

  @jax.jit
  def pooled(v, images):
    x = device_augment.model_images(images, image_size=config.image_size)
    return pool_features(backbone.apply(v, x, train=False))

  expected = np.asarray(pooled(variables, jnp.asarray(images)))
  np.testing.assert_allclose(fs.splits["val"][0][:8], expected, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- the command


def _probes(*args):
  return subprocess.run([sys.executable, "-m", "derm_jax.probes", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600)


def test_probes_command_on_the_study(study, tmp_path):
  out = tmp_path / "probes.json"
  own = study / "closed_form_probes.json"  # the study's own, written after its classifiers
  assert own.exists()
  before = own.stat().st_mtime_ns
  r = _probes(f"--workdir={study}", f"--out={out}", f"--features_dir={tmp_path / 'f'}",
              "--fractions=0.1,1", "--subset_seeds=0,1")
  assert r.returncode == 0, r.stderr[-3000:]
  doc = json.loads(out.read_text())
  arms = sorted(os.listdir(study / "arms"))
  assert sorted(doc["arms"]) == arms
  assert own.stat().st_mtime_ns == before  # --out: the study is untouched
  for arm in arms:
    entry = doc["arms"][arm]["seeds"]["0"]
    assert [(r["fraction"], r["subset_seed"]) for r in entry["records"]] == [
        (0.1, 0), (0.1, 1), (1.0, 0), (1.0, 1)]
    assert entry["feature_dim"] == 1280 and (tmp_path / "f" / arm / "seed_0" / "train.npz").exists()
    for rec in entry["records"]:
      assert 0 <= rec["ridge"]["test"]["balanced_accuracy"] <= 1 and rec["knn"]["k"] >= 1
    # The study's own SGD classifier at fraction 1, side by side.
    sgd = json.loads((study / "arms" / arm / "seed_0" / "test_metrics.json").read_text())
    assert entry["sgd"]["classifier"]["1"]["balanced_accuracy"] == sgd["balanced_accuracy"]
    assert entry["sgd"]["probe"] == {}  # the session study trains no linear probe
  rows = cf.table_rows(doc)
  assert [(r["arm"], r["fraction"]) for r in rows] == [(a, f) for a in doc["arms"]
                                                       for f in (0.1, 1.0)]
  assert "ridge BA" in r.stdout and "Seconds per arm" in r.stdout
  for a in arms:  # computed here (their reuse: test_feature_cache_of_a_study_run)
    assert set(doc["arms"][a]["seeds"]["0"]["features"]["status"].values()) == {"computed"}


def test_sgd_runs_of_a_study_are_read_beside_the_closed_form_probe(study, tmp_path):
  from derm_jax.study import probes
  # The folders a study with linear_probe and label_fractions=(0.5, 1) writes, holding a
  # copy of a real run's test_metrics.json.
  metrics_file = study / "arms" / "vae" / "seed_0" / "test_metrics.json"
  for rel in ("arms/vae/seed_0", "probes/vae/seed_0", "fractions/0.5/probes/vae/seed_0",
              "fractions/0.5/arms/vae/seed_0"):
    (tmp_path / rel).mkdir(parents=True)
    shutil.copy(metrics_file, tmp_path / rel / "test_metrics.json")
  labels = np.random.default_rng(0).integers(0, 7, 1000)
  fractions = probes.study_fractions(str(tmp_path), {"label_fractions": [1.0]})
  assert fractions == [0.5, 1.0]
  sgd = probes.sgd_results(str(tmp_path), "vae", 0, fractions, labels)
  want = json.loads(metrics_file.read_text())["balanced_accuracy"]
  assert sorted(sgd["probe"]) == ["0.5", "1"] and sorted(sgd["classifier"]) == ["0.5", "1"]
  assert sgd["probe"]["0.5"]["balanced_accuracy"] == want
  assert sgd["probe"]["0.5"]["n_train"] == label_fractions.fraction_indices(labels, 0.5, 0).size
  assert sgd["classifier"]["1"]["n_train"] == 1000


def test_probes_command_refuses_a_folder_that_is_not_a_study(study, tmp_path):
  for workdir, says in ((tmp_path, "is not a study: it has no config.json"),
                        (study / "arms" / "vae" / "seed_0", "is not a study: its config.json"),
                        (tmp_path / "missing", "does not exist")):
    r = _probes(f"--workdir={workdir}")
    assert r.returncode == 1, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], r.stderr
  r = _probes(f"--workdir={study}", "--fractions=0,1", f"--out={tmp_path / 'x.json'}")
  assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith(
      "error: --fractions: fraction=0.0 must be in (0, 1]")
