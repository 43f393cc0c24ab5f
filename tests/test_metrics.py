"""Tests of derm_jax.metrics: hand-computed cases and randomized agreement with scikit-learn."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from derm_jax.metrics import (
  classification_metrics,
  majority_baseline,
  overfitting_gap,
)

# A 3-class example small enough to check on paper.
#   row  label  probs            pred
#   r0   0      .6 .3 .1         0
#   r1   0      .5 .3 .2         0
#   r2   0      .2 .5 .3         1
#   r3   1      .3 .5 .2         1
#   r4   1      .5 .2 .3         0
#   r5   2      .2 .3 .5         2
#   r6   1      .1 .2 .7         2
LABELS = np.array([0, 0, 0, 1, 1, 2, 1])
PROBS = np.array([
  [0.6, 0.3, 0.1],
  [0.5, 0.3, 0.2],
  [0.2, 0.5, 0.3],
  [0.3, 0.5, 0.2],
  [0.5, 0.2, 0.3],
  [0.2, 0.3, 0.5],
  [0.1, 0.2, 0.7],
])


def test_hand_computed_three_class_example():
  m = classification_metrics(LABELS, PROBS, 3, loss=0.25)
  # Confusion matrix (rows true, cols predicted).
  assert m["confusion_matrix"] == [[2, 1, 0], [1, 1, 1], [0, 0, 1]]
  # 4 of 7 correct.
  assert m["accuracy"] == pytest.approx(4 / 7)
  # Recalls 2/3, 1/3, 1/1 -> mean 2/3.
  assert m["per_class_recall"] == pytest.approx([2 / 3, 1 / 3, 1.0])
  assert m["balanced_accuracy"] == pytest.approx(2 / 3)
  # F1 = 2TP / (2TP + FP + FN): class 0: 4/6, class 1: 2/5, class 2: 2/3 -> 26/45.
  assert m["per_class_f1"] == pytest.approx([2 / 3, 2 / 5, 2 / 3])
  assert m["macro_f1"] == pytest.approx(26 / 45)
  # One-vs-rest AUC with ties counted 1/2:
  #   class 0: pos .6 .5 .2 vs neg .3 .5 .1 .2 -> 4 + 3.5 + 1.5 = 9 of 12 = 0.75
  #   class 1: pos .5 .2 .2 vs neg .3 .3 .5 .3 -> 3.5 + 0 + 0 = 3.5 of 12 = 7/24
  #   class 2: pos .5 vs neg .1 .2 .3 .2 .3 .7 -> 5 of 6
  # macro = (18/24 + 7/24 + 20/24) / 3 = 0.625
  assert m["macro_auc"] == pytest.approx(0.625)
  assert m["loss"] == 0.25
  assert m["support"] == [3, 3, 1]
  assert m["num_examples"] == 7


def _binary_auc(labels, scores):
  """The one-vs-rest AUC of class 1 out of `classification_metrics` (two classes: the
  macro AUC averages two equal AUCs)."""
  p1 = np.asarray(scores, np.float64)
  return classification_metrics(np.asarray(labels), np.stack([1 - p1, p1], 1), 2)["macro_auc"]


def test_auc_ties_and_undefined():
  assert _binary_auc([1, 0], [0.5, 0.5]) == 0.5
  assert _binary_auc([1, 1, 0, 0], [0.9, 0.4, 0.4, 0.1]) == pytest.approx(3.5 / 4)
  assert _binary_auc([1, 1], [0.2, 0.3]) is None
  assert _binary_auc([0, 0], [0.2, 0.3]) is None


def test_json_safe_and_absent_class_is_none():
  labels = np.array([0, 0, 2, 2])
  probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]], dtype=np.float32)
  m = classification_metrics(labels, probs, 3)
  assert m["per_class_recall"] == [0.5, None, 1.0]
  assert "loss" not in m
  text = json.dumps(m, allow_nan=False)  # no NaN, no numpy types
  assert json.loads(text) == m
  for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
    assert type(m[k]) is float
  assert all(type(x) is int for row in m["confusion_matrix"] for x in row)


def test_single_class_labels_auc_undefined():
  m = classification_metrics(np.array([1, 1, 1]), np.full((3, 3), 1 / 3), 3)
  assert m["macro_auc"] is None
  assert m["accuracy"] == 0.0  # argmax ties go to class 0


def _sklearn_reference(labels, probs, k):
  preds = probs.argmax(axis=1)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ref = {
      "accuracy": skm.accuracy_score(labels, preds),
      "balanced_accuracy": skm.balanced_accuracy_score(labels, preds),
      "macro_f1": skm.f1_score(labels, preds, labels=list(range(k)), average="macro", zero_division=0),
      "confusion_matrix": skm.confusion_matrix(labels, preds, labels=list(range(k))).tolist(),
    }
  present = [c for c in range(k) if 0 < (labels == c).sum() < len(labels)]
  ref["macro_auc"] = float(np.mean([skm.roc_auc_score(labels == c, probs[:, c]) for c in present]))
  return ref


@pytest.mark.parametrize("seed,k,n,absent", [
  (0, 3, 40, None), (1, 5, 200, None), (2, 7, 300, None), (3, 7, 120, 4), (4, 4, 25, 0), (5, 2, 50, None),
  (6, 6, 9, 5),
])
def test_agrees_with_sklearn(seed, k, n, absent):
  rng = np.random.default_rng(seed)
  classes = [c for c in range(k) if c != absent]
  labels = rng.choice(classes, size=n)
  # Coarse probabilities (multiples of 1/10) make many tied scores and tied argmaxes.
  probs = rng.multinomial(10, rng.dirichlet(np.ones(k)), size=n) / 10.0
  got = classification_metrics(labels, probs, k)
  ref = _sklearn_reference(labels, probs, k)
  for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
    assert got[key] == pytest.approx(ref[key], abs=1e-12), key
  assert got["confusion_matrix"] == ref["confusion_matrix"]
  if absent is not None:
    assert got["per_class_recall"][absent] is None
  if absent is None and k > 2:
    # With every class present, equal to sklearn's own one-vs-rest macro AUC.
    assert got["macro_auc"] == pytest.approx(
      skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=list(range(k))), abs=1e-12)


def test_majority_baseline_hand_computed():
  train = np.array([0, 0, 1, 2, 0])
  evals = np.array([0, 1, 1, 2])
  mb = majority_baseline(train, evals, 3)
  assert mb["majority_class"] == 0
  assert mb["accuracy"] == pytest.approx(1 / 4)
  assert mb["balanced_accuracy"] == pytest.approx(1 / 3)  # recalls 1, 0, 0
  assert mb["macro_f1"] == pytest.approx((2 / 5) / 3)     # class 0: 2*1 / (2*1 + 3 + 0)
  assert mb["macro_auc"] == 0.5
  # A 4th class absent everywhere still counts in macro-F1 (as 0).
  mb4 = majority_baseline(train, evals, 4)
  assert mb4["macro_f1"] == pytest.approx((2 / 5) / 4)
  assert mb4["balanced_accuracy"] == pytest.approx(1 / 3)
  # Agrees with sklearn's DummyClassifier-style constant prediction.
  rng = np.random.default_rng(0)
  tr, ev = rng.integers(0, 5, 100), rng.integers(0, 5, 60)
  mb = majority_baseline(tr, ev, 5)
  pred = np.full_like(ev, np.bincount(tr, minlength=5).argmax())
  assert mb["accuracy"] == pytest.approx(skm.accuracy_score(ev, pred))
  assert mb["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(ev, pred))
  assert mb["macro_f1"] == pytest.approx(skm.f1_score(ev, pred, labels=list(range(5)), average="macro",
                                                      zero_division=0))


def test_overfitting_gap_signs():
  g = overfitting_gap({"accuracy": 0.9, "loss": 0.3}, {"accuracy": 0.7, "loss": 0.8})
  assert g["gap/accuracy"] == pytest.approx(0.2)
  assert g["gap/loss"] == pytest.approx(0.5)
  g = overfitting_gap({"accuracy": 0.6, "loss": 0.9}, {"accuracy": 0.65, "loss": 0.7})
  assert g["gap/accuracy"] < 0 and g["gap/loss"] < 0
  g = overfitting_gap({"accuracy": 0.6}, {"accuracy": 0.5, "loss": 0.7})
  assert g["gap/loss"] is None and g["gap/accuracy"] == pytest.approx(0.1)


def test_bad_inputs_are_refused():
  with pytest.raises(ValueError):
    classification_metrics(LABELS, PROBS[:, :2], 3)
  with pytest.raises(ValueError):
    classification_metrics(LABELS + 1, PROBS, 3)
