"""What a trained run keeps of its dataset, so that it predicts without it.

A classifier run writes `RUN_DATA` (JSON) into its folder at training time: the dataset's
`describe()` (name, split sizes, the stored image size outside images are brought to), the
class names in label order and the training split's class counts (the majority baseline and
class weights). With it (and `data_fingerprint.npz`, data/outside.py), `derm_jax.load(run)`
and `derm_jax.evaluate` on outside images need neither the training data nor the dataset
code's preparation: a run copied to another machine predicts and evaluates there.

  run_data.write_into(run_dir, dataset)       # at training time
  ds = run_data.load(run_dir)                 # a StoredDataset, or None (older runs)
  ds.meta.class_names, ds.describe()["image_size"], ds.labels("train")

A StoredDataset has no images: asking for a split's images raises a DataError that says
the run's data are not here (score project splits where the data are).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from derm_jax import fileio
from derm_jax.data.errors import DataError
from derm_jax.data.registry import DatasetMeta

RUN_DATA = "dataset.json"
_VERSION = 1


def summary_of(dataset: Any) -> dict[str, Any]:
  """The JSON-safe summary of `dataset` a run keeps."""
  counts = np.bincount(np.asarray(dataset.labels("train"), np.int64),
                       minlength=dataset.meta.num_classes)
  return {"version": _VERSION, "name": dataset.meta.name,
          "class_names": list(dataset.meta.class_names),
          "train_class_counts": counts.astype(int).tolist(),
          "describe": json.loads(json.dumps(dataset.describe(), default=str))}


def write_into(run_dir: str, dataset: Any) -> None:
  fileio.atomic_write_text(fileio.join(run_dir, RUN_DATA),
                           json.dumps(summary_of(dataset), indent=2))


class StoredDataset:
  """The dataset interface as far as a trained run needs it, from its `RUN_DATA` file."""

  metadata = None

  def __init__(self, summary: dict[str, Any], where: str):
    self._summary, self._where = summary, where
    self.meta = DatasetMeta(name=str(summary["name"]),
                            class_names=tuple(str(c) for c in summary["class_names"]))

  def labels(self, split: str) -> np.ndarray:
    if split != "train":
      raise DataError(f"{self._where} keeps the training labels' counts only; the {split} "
                      "split needs the run's data.")
    counts = self._summary["train_class_counts"]
    return np.repeat(np.arange(len(counts), dtype=np.int64), counts)

  def describe(self) -> dict[str, Any]:
    return dict(self._summary["describe"])

  def source(self, split: str) -> Any:
    raise DataError(f"the {split} split of {self.meta.name!r} is not available: {self._where} "
                    "was loaded without its training data (outside images can be scored; "
                    "project splits need the data where config.json says).")

  def unlabeled_source(self) -> None:
    return None


def load(run_dir: str) -> StoredDataset | None:
  """The run's stored dataset summary, or None (a run of an older version: rebuild the
  dataset from its config.json)."""
  path = fileio.join(run_dir, RUN_DATA)
  if not fileio.exists(path):
    return None
  try:
    summary = json.loads(fileio.read_text(path))
    if summary.get("version") != _VERSION:
      raise ValueError(f"version {summary.get('version')!r}, expected {_VERSION}")
    if len(summary["class_names"]) != len(summary["train_class_counts"]):
      raise ValueError("class names and class counts differ in length")
    int(summary["describe"]["image_size"])
  except (ValueError, KeyError, TypeError) as e:
    raise DataError(f"{path}: not a readable derm_jax run data file ({e}).") from e
  return StoredDataset(summary, run_dir)
