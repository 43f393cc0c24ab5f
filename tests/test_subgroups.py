"""Tests for per-subgroup metrics (derm_jax/evaluation/subgroups.py) on a tiny hand-made case."""

from __future__ import annotations

import json

import numpy as np
import pytest

from derm_jax.evaluation import subgroups


def test_age_bands():
  got = subgroups.age_bands([0, 29.9, 30, 49, 50, 69.5, 70, 95, np.nan, -1])
  assert got.tolist() == ["<30", "<30", "30-49", "30-49", "50-69", "50-69", ">=70", ">=70",
                          "unknown", "unknown"]


def test_hand_made_case():
  # 6 examples, 2 classes. Predictions: right for the first 4, wrong for the last 2.
  labels = np.array([0, 1, 0, 1, 0, 1])
  probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]])
  meta = {"sex": np.array(["male", "male", "female", "female", "female", ""]),
          "age": np.array([25, 35, 55, 75, 80, np.nan], dtype=np.float32),
          "localization": np.array(["back"] * 4 + ["face", "unknown"])}
  out = subgroups.subgroup_metrics(labels, probs, 2, meta, min_count=2)
  json.dumps(out)  # JSON-safe
  assert out["overall"]["accuracy"] == pytest.approx(4 / 6)
  sex = out["by"]["sex"]
  assert list(sex) == ["female", "male", "unknown"]
  assert sex["male"]["count"] == 2 and sex["male"]["metrics"]["accuracy"] == 1.0
  assert sex["female"]["metrics"]["accuracy"] == pytest.approx(2 / 3)
  assert sex["female"]["class_counts"] == [2, 1]
  assert sex["unknown"] == {"count": 1, "class_counts": [0, 1], "metrics": None,
                            "intervals": None}
  lo, hi = sex["female"]["intervals"]["accuracy"]  # a 95% bootstrap interval around it
  assert 0 <= lo <= 2 / 3 <= hi <= 1
  age = out["by"]["age_band"]
  assert list(age) == ["<30", "30-49", "50-69", ">=70", "unknown"]
  assert age[">=70"]["count"] == 2 and age[">=70"]["metrics"]["accuracy"] == 0.5
  assert age["<30"]["metrics"] is None  # 1 < min_count
  site = out["by"]["localization"]
  assert site["back"]["metrics"]["accuracy"] == 1.0 and site["face"]["metrics"] is None
  # The default minimum (30) leaves every group of this tiny case without metrics.
  default = subgroups.subgroup_metrics(labels, probs, 2, meta)
  assert default["min_count"] == 30
  assert all(g["metrics"] is None for a in default["by"].values() for g in a.values())


def test_bad_metadata():
  with pytest.raises(KeyError, match="age"):
    subgroups.subgroup_metrics([0], np.ones((1, 2)) / 2, 2, {"sex": ["m"]})
  with pytest.raises(ValueError, match="2 values for 1 labels"):
    subgroups.subgroup_metrics([0], np.ones((1, 2)) / 2, 2, {"sex": ["m", "f"]},
                               attributes=("sex",))
