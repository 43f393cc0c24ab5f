"""A prepared TFDS ArrayRecord split as a random-access, picklable source for Grain.

`TfdsSource(version_dir, split)`: len() and [i] -> {'image': uint8 (S, S, 3), 'label': int,
'id': int}; `split` is the builder's own split name. Every dataset builder of
derm_jax/data/ (DermaMNIST, HAM10000, ISIC 2019) is read through it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds

from derm_jax.data.errors import DataError


def resolve_split(split: str, aliases: dict[str, str]) -> str:
  """The builder's name for `split` ('train', 'val' / 'validation', 'test'), or DataError."""
  s = aliases.get(str(split).lower())
  if s is None:
    raise DataError(f"unknown split {split!r}; valid splits: 'train', 'val' (or "
                    "'validation'), 'test'.")
  return s


class TfdsSource:
  """Random-access split of a prepared builder directory (reopened after pickling)."""

  def __init__(self, version_dir: str | os.PathLike, split: str):
    self._version_dir = os.fspath(version_dir)
    self._split = split
    self._open()

  def _open(self) -> None:
    builder = tfds.builder_from_directory(self._version_dir)
    self._ds = builder.as_data_source(split=self._split)
    self.image_size = int(builder.info.features["image"].shape[0])

  def __getstate__(self):
    return {"version_dir": self._version_dir, "split": self._split}

  def __setstate__(self, state):
    self._version_dir, self._split = state["version_dir"], state["split"]
    self._open()

  @property
  def split(self) -> str:
    return self._split

  @property
  def version_dir(self) -> str:
    return self._version_dir

  def __len__(self) -> int:
    return len(self._ds)

  @staticmethod
  def _convert(ex: dict[str, Any]) -> dict[str, Any]:
    return {"image": ex["image"], "label": int(ex["label"]), "id": int(ex["id"])}

  def __getitem__(self, i: int) -> dict[str, Any]:
    return self._convert(self._ds[int(i)])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return [self._convert(ex) for ex in self._ds.__getitems__([int(i) for i in indices])]

  def __repr__(self) -> str:
    return f"TfdsSource({self._version_dir!r}, split={self._split!r}, n={len(self)})"
