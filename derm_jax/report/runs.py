"""Reading a compare workdir: its arms, their seed runs and each run's evaluations.

Raises ReportError naming any missing or unreadable file; predictions files are optional.
Does not import jax.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

from derm_jax import fileio
from derm_jax.evaluation.metrics import overfitting_gap
from derm_jax.evaluation.predictions import Predictions, PredictionsError, read_predictions_csv

TEST_SET = "test"


class ReportError(RuntimeError):
  """A problem with the compare workdir (missing or unreadable file, no runs)."""


@dataclasses.dataclass
class EvalSet:
  """One run's evaluation on one set: its metrics file and (if present and valid) predictions."""

  metrics: dict[str, Any]
  predictions: Predictions | None = None
  note: str | None = None  # why predictions are unavailable


@dataclasses.dataclass
class SeedRun:
  seed: int
  path: str
  config: dict[str, Any]
  history: list[dict[str, Any]]
  test: dict[str, Any]
  evals: dict[str, EvalSet] = dataclasses.field(
    default_factory=dict
  )  # TEST_SET first, then outside sets


@dataclasses.dataclass
class ArmRuns:
  name: str
  runs: list[SeedRun]


def read_json(path: str) -> Any:
  if not fileio.isfile(path):
    raise ReportError(f"missing file: {path}")
  try:
    with fileio.open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ReportError(f"cannot read JSON file {path}: {e}") from e


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  if not fileio.isfile(path):
    raise ReportError(f"missing file: {path}")
  rows = []
  with fileio.open(path) as f:
    for i, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      try:
        row = json.loads(line)
      except ValueError as e:
        raise ReportError(f"{path}:{i}: not valid JSON ({e})") from e
      if not isinstance(row, dict):
        raise ReportError(f"{path}:{i}: expected a JSON object per line")
      rows.append(row)
  if not rows:
    raise ReportError(f"no epochs recorded in {path}")
  return rows


def num(v: Any) -> float | None:
  if v is None or isinstance(v, bool):
    return None
  try:
    x = float(v)
  except (TypeError, ValueError):
    return None
  return x if math.isfinite(x) else None


def _normalize_history(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Sorts by epoch (list position if absent) and fills missing gap keys from train/val."""
  out = []
  for i, row in enumerate(rows):
    row = dict(row)
    row.setdefault("epoch", i + 1)
    gaps = overfitting_gap(
      {"accuracy": num(row.get("train/accuracy")), "loss": num(row.get("train/loss"))},
      {"accuracy": num(row.get("val/accuracy")), "loss": num(row.get("val/loss"))},
    )
    for k, v in gaps.items():
      if num(row.get(k)) is None:
        row[k] = v
    out.append(row)
  out.sort(key=lambda r: int(r["epoch"]))
  return out


def _load_eval(metrics: dict[str, Any], pred_path: str) -> EvalSet:
  """An EvalSet with the predictions at `pred_path` when they exist, are valid and match "
  "`metrics`."""
  if not fileio.isfile(pred_path):
    return EvalSet(metrics, None, f"no {fileio.basename(pred_path)}")
  try:
    p = read_predictions_csv(pred_path)
  except PredictionsError as e:
    return EvalSet(metrics, None, f"unreadable predictions file ({e})")
  if p.labels is None:
    return EvalSet(metrics, None, f"{pred_path} has no ground-truth labels")
  names = metrics.get("class_names")
  if names and tuple(names) != p.class_names:
    return EvalSet(
      metrics,
      None,
      f"{pred_path}: classes {list(p.class_names)} differ from the metrics file's {list(names)}",
    )
  if len(p) == 0:
    return EvalSet(metrics, None, f"{pred_path} has no rows")
  return EvalSet(metrics, p, None)


def load_compare_dir(workdir: str) -> dict[str, ArmRuns]:
  """Reads every DIR/arms/<arm>/seed_<s>/ run; raises ReportError naming any missing path.

  Predictions files are optional: a missing or malformed one leaves that run without
  intervals (EvalSet.note says why) rather than failing the report.
  """
  arms_dir = fileio.join(workdir, "arms")
  if not fileio.isdir(arms_dir):
    raise ReportError(f"missing directory: {arms_dir} (expected DIR/arms/<arm>/seed_<s>/)")
  arm_names = sorted(d for d in fileio.listdir(arms_dir)
                     if fileio.isdir(fileio.join(arms_dir, d)))
  if not arm_names:
    raise ReportError(f"no arm directories in {arms_dir}")
  # Conventional order: self-supervised arm first, then ImageNet, then the rest.
  arm_names.sort(key=lambda a: ({"self_supervised": 0, "imagenet": 1}.get(paper_arm(a), 2), a))
  arms: dict[str, ArmRuns] = {}
  for arm in arm_names:
    arm_dir = fileio.join(arms_dir, arm)
    seeds = []
    for d in fileio.listdir(arm_dir):
      m = re.fullmatch(r"seed_(\d+)", d)
      if m and fileio.isdir(fileio.join(arm_dir, d)):
        seeds.append((int(m.group(1)), fileio.join(arm_dir, d)))
    if not seeds:
      raise ReportError(f"no seed_<s> directories in {arm_dir}")
    runs = []
    for seed, seed_dir in sorted(seeds):
      config = read_json(fileio.join(seed_dir, "config.json"))
      history = _normalize_history(_read_jsonl(fileio.join(seed_dir, "metrics.jsonl")))
      test = read_json(fileio.join(seed_dir, "test_metrics.json"))
      if not isinstance(config, dict) or not isinstance(test, dict):
        raise ReportError(f"expected JSON objects in {seed_dir}/config.json and test_metrics.json")
      evals = {TEST_SET: _load_eval(test, fileio.join(seed_dir, "test_predictions.csv"))}
      ext_dir = fileio.join(seed_dir, "external")
      if fileio.isdir(ext_dir):
        for name in sorted(fileio.listdir(ext_dir)):
          set_dir = fileio.join(ext_dir, name)
          if not fileio.isdir(set_dir):
            continue
          m = read_json(fileio.join(set_dir, "metrics.json"))
          if not isinstance(m, dict):
            raise ReportError(f"expected a JSON object in {set_dir}/metrics.json")
          key = name if name != TEST_SET else f"{name} (external)"
          evals[key] = _load_eval(m, fileio.join(set_dir, "predictions.csv"))
      runs.append(
        SeedRun(seed=seed, path=seed_dir, config=config, history=history, test=test, evals=evals)
      )
    arms[arm] = ArmRuns(name=arm, runs=runs)
  return arms


def paper_arm(name: str) -> str | None:
  n = name.lower()
  if "imagenet" in n or "in1k" in n:
    return "imagenet"
  if any(t in n for t in ("vae", "ssl", "self")):  # not 'scratch': compare.py's random-init arm
    return "self_supervised"
  return None
