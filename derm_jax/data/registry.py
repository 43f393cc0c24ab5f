"""Dataset registry: `config.data.name` -> the dataset's split sources and its meta.

Trainers, evaluators and readers of outside data never import a dataset module: they
call `get(config.data)` and use what it returns.

  ds = registry.get(config.data)
  ds.meta.class_names            # ('akiec', 'bcc', ...), the label order
  ds.source('train')             # random access: [i] -> {'image': uint8 (S,S,3), 'label', 'id'}
  ds.labels('val')               # int64 labels, index i = label of source('val')[i]
  ds.describe()                  # {'name', 'source', 'splits': {split: n}, 'image_size', ...}
  ds.unlabeled_source()          # config.data.unlabeled images ('label' -1), or None

Class names and their order always come from the dataset (`meta.class_names`): the
HAM10000 seven (`HAM10000_CLASSES`) for dermamnist and ham10000, those plus 'scc' for
isic2019, and the data's own classes for folder (derm_jax/data/folder.py).

Adding a dataset: one module defining a class with that interface (`Dataset` below), and
one line in `_DATASETS`.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Protocol

import numpy as np

from derm_jax.data.errors import DataError

SPLITS = ("train", "val", "test")

# name -> "module:factory"; the factory takes the data config and returns a Dataset.
_DATASETS = {
    "dermamnist": "derm_jax.data.dermamnist:Dataset",
    "ham10000": "derm_jax.data.ham10000:Dataset",
    "isic2019": "derm_jax.data.isic2019:Dataset",
    "folder": "derm_jax.data.folder:Dataset",
}

# The seven HAM10000 diagnosis codes, in the MedMNIST/DermaMNIST label order. The one place
# this list is written down: dermamnist, ham10000, isic2019 and the ISIC outside-data reader
# import it from here.
HAM10000_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

# Plain-language names of the seven HAM10000 / DermaMNIST diagnoses.
CLASS_DESCRIPTIONS = {
    "akiec": "actinic keratoses / intraepithelial carcinoma",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesions",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevi",
    "vasc": "vascular lesions",
    "scc": "squamous cell carcinoma",
}


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
  """What a model and its metrics need to know about a dataset's labels."""

  name: str
  class_names: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


class Dataset(Protocol):
  """The interface every registered dataset implements."""

  meta: DatasetMeta

  def source(self, split: str) -> Any:
    """Random-access source of `split` ('train', 'val', 'test'); len() and [i] ->
    {'image': uint8 (S, S, 3) at the stored resolution, 'label': int, 'id': int}."""

  def labels(self, split: str) -> np.ndarray:
    """All int64 labels of `split`, without decoding images."""

  def describe(self) -> dict[str, Any]:
    """JSON-safe summary: name, source, split sizes, stored image size (and, when
    `config.data.unlabeled` is set, 'unlabeled': the pool's counts)."""

  def unlabeled_source(self) -> Any | None:
    """The `config.data.unlabeled` images for self-supervised pretraining, or None when
    none are configured: len() and [i] -> {'image': uint8 (S, S, 3) at the stored
    resolution, 'label': -1, 'id': int}; near-duplicates of val/test images are left out
    (derm_jax/data/unlabeled.py)."""


def available() -> list[str]:
  return sorted(_DATASETS)


def get(data_config: Any) -> Dataset:
  """The dataset named by `data_config.name` (default 'dermamnist'), prepared if needed."""
  name = str(getattr(data_config, "name", None) or "dermamnist")
  if name not in _DATASETS:
    raise DataError(f"unknown config.data.name={name!r}; registered datasets: {available()}.")
  module, factory = _DATASETS[name].split(":")
  return getattr(importlib.import_module(module), factory)(data_config)
