"""The Python API: load a trained classifier run and predict on images, or evaluate it.

  import derm_jax
  model = derm_jax.load("runs/study/arms/imagenet/seed_0")   # latest checkpoint
  probs = model.predict(["lesion1.jpg", "lesion2.png"])      # or uint8 arrays of any size
  print(dict(zip(model.class_names, probs[0].round(3))))
Images are prepared exactly as outside ISIC images are by `derm_jax.evaluate` (centred
square crop, resized to the run's stored training resolution, then to its model size).
A run folder is self-contained: it keeps its class names, stored image size and training
class counts (`dataset.json`) beside its config and checkpoints, so it predicts where its
training data are absent (runs of older versions rebuild their dataset).

  derm_jax.api.evaluate(workdir, split="test")     # what `python -m derm_jax.evaluate` does
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np


class Model:
  """A restored classifier run: `class_names`, `step`, `predict(images)`."""

  def __init__(self, workdir: str, step: int | None = None):
    from derm_jax import fileio, layout
    from derm_jax.data import run_data
    from derm_jax.tasks import classifier as classifier_task
    from derm_jax.train import compile_cache
    self.workdir = fileio.normalize(workdir)
    self.config = layout.read_config(self.workdir, task="classify")
    # What the run keeps of its data is all predicting needs; a run of an older version
    # rebuilds its dataset from config.json.
    with compile_cache.default():
      self._run = classifier_task.restore(self.config, self.workdir, step,
                                          run_data.load(self.workdir))
    self._stored_size = int(self._run.task.dataset.describe()["image_size"])

  @property
  def class_names(self) -> tuple[str, ...]:
    return tuple(self._run.task.meta.class_names)

  @property
  def step(self) -> int:
    return self._run.step

  def predict(self, images: Sequence[Any]) -> np.ndarray:
    """Class probabilities (N, K) for file paths or uint8 arrays (H, W[, 3|4]) of any size."""
    from derm_jax.data import images as images_lib
    if isinstance(images, (str, os.PathLike, np.ndarray)) and not (
        isinstance(images, np.ndarray) and images.ndim == 4):
      images = [images]
    source = images_lib.ImageSource(list(images), self._stored_size)
    from derm_jax.train import compile_cache
    ev = self._run.task.make_evaluator(source, has_labels=False)
    with compile_cache.default():  # the prediction program compiles once per shape
      ev.run(self._run.predict)
    return ev.predictions[0].probs

  def __repr__(self) -> str:
    return (f"derm_jax.Model({self.workdir!r}, step={self.step}, "
            f"backbone={self.config.model.backbone!r}, classes={self.class_names})")


def load(workdir: str, step: int | None = None) -> Model:
  """The classifier of `workdir` (a classify run, or an arm of a study; a local folder or a
  gs:// URL) at its latest checkpoint, or at `step`."""
  return Model(workdir, step)


def evaluate(workdir: str, step: int | None = None, split: str = "test",
             isic_images: str | None = None, isic_csv: str | None = None,
             out: str | None = None, leak_free_ids: str | None = None) -> dict:
  """One classifier run's checkpoint on a project split, on outside ISIC-layout data, or
  (no CSV) predictions on a folder of images; the CLI `python -m derm_jax.evaluate`."""
  from derm_jax import fileio, layout
  from derm_jax.data import run_data
  from derm_jax.errors import ConfigError
  from derm_jax.evaluation.scoring import checked_outside, score
  from derm_jax.tasks import classifier as classifier_task
  from derm_jax.train import restore
  from derm_jax.train.population import Member
  config = layout.read_config(workdir, task="classify")
  if isic_csv and not isic_images:
    raise ConfigError("--isic_csv needs --isic_images (the folder of the images it lists).")
  if isic_images and leak_free_ids:
    raise ConfigError("--leak_free_ids goes with --split (the project's own splits).")
  # Outside images need only what the run keeps of its data (data/run_data.py); a project
  # split needs the data themselves, where config.json says.
  task = classifier_task.build(config, run_data.load(workdir) if isic_images else None)
  check = None
  if isic_images:
    source, name, image_ids, check = checked_outside(task, workdir, isic_images, isic_csv)
  else:
    source, name, image_ids = task.dataset.source(split), split, None
  run = restore.restore(task, [Member("classifier", workdir, config)], step)
  out = out or fileio.join(workdir, "eval", f"{name}_step{run.step}")
  return score(run, source, [out], name=name, split=None if isic_images else split,
               image_ids=image_ids, isic_images=isic_images, isic_csv=isic_csv,
               leak_free_ids=leak_free_ids, outside_check=check)[0]
