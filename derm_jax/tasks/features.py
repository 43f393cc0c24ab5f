"""Cached frozen features of a classifier run's STARTING backbone, for probes that cost
seconds (derm_jax/evaluation/closed_form.py, `python -m derm_jax.probes`).

  fs = run_features(STUDY/arms/<arm>/seed_<s>)
  x, y = fs.splits["train"]        # (N, C) float32 pooled features, (N,) int64 labels

A study's classifier run records in its config.json where its backbone started
(`init.source` and `init.pretrained_workdir`, the packaged ImageNet weights
converted into the run's folder, or the seed's random init for 'scratch'). This module
rebuilds that backbone (models.registry), loads those starting weights
(tasks/backbone_init.init_backbone_variables: the frozen pretrained representation, not the
fine-tuned classifier), and runs it in eval mode over the dataset's splits exactly as the
classifier's eval step sees them (`device_augment.model_images` on the stored uint8 images,
then the global average pool `contrastive.pool_features`), jit-compiled and batched
(evaluation/common.collect).

Cache: <cache_dir>/{train,val,test}.npz (default cache_dir RUN/features) with 'features'
(float32), 'labels' (int64), 'ids' (int64) and 'fingerprint' (JSON text), each written
atomically (fileio.atomic_write_bytes: a hidden temporary file, then a rename). A split's
file is reused when its fingerprint equals the run's current one (`fingerprint`: backbone,
its kwargs and dtype, image size, init source + the workdir or weights folder it loads +
the newest checkpoint step there (+ the seed for 'scratch'), the dataset's description and
a hash of each split's labels, and FEATURES_VERSION). A file that is missing, has another
fingerprint, or cannot be read (damaged, truncated, wrong arrays) is recomputed and
rewritten; a damaged one is logged as a warning naming the file and what is wrong with it
(the cache is derived data, so it is never an error).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from derm_jax import fileio, layout
from derm_jax.data import registry
from derm_jax.errors import DermJaxError

SPLITS = ("train", "val", "test")
# Bump when the extraction itself changes (preprocessing, pooling): every cache recomputes.
FEATURES_VERSION = 1


@dataclasses.dataclass
class RunFeatures:
  """A run's features: splits {split: (features (N, C) float32, labels (N,) int64)}, the
  dataset's class names, the fingerprint they were made under, per split how they were
  obtained ('reused', 'computed', or 'recomputed (<why>)'), and the seconds it took."""

  splits: dict[str, tuple[np.ndarray, np.ndarray]]
  class_names: tuple[str, ...]
  fingerprint: dict[str, Any]
  status: dict[str, str]
  seconds: float
  cache_dir: str

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def dim(self) -> int:
    return int(next(iter(self.splits.values()))[0].shape[1])


def _latest_step(workdir: str) -> int | None:
  ckpts = fileio.join(workdir, "checkpoints")
  if not fileio.isdir(ckpts):
    return None
  steps = [int(d) for d in fileio.listdir(ckpts) if d.isdigit()]
  return max(steps) if steps else None


def init_record(config, run_dir: str) -> dict[str, Any]:
  """Where the run's backbone starts: {'source', 'workdir' (the run, weights folder or ''),
  'step' (newest checkpoint step there, or None), 'seed' (for 'scratch', else None)}."""
  from derm_jax.tasks import backbone_init
  source = str(config.init.source)
  where, step, seed = "", None, None
  if source not in ("imagenet", "scratch"):  # a pretraining run (older configs: vae, simclr)
    source = backbone_init.PRETRAINED
    where = backbone_init.pretrained_workdir(config)
    step = _latest_step(where) if where else None
  elif source == "imagenet":
    where = backbone_init.imagenet_dir(config, run_dir)[0]  # the weights the run loads
  elif source == "scratch":
    seed = int(config.seed)
  return {"source": source, "workdir": fileio.abspath(where) if where else "", "step": step,
          "seed": seed}


def _labels_hash(labels: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(labels, np.int64).tobytes()).hexdigest()[:16]


def fingerprint(config, run_dir: str, dataset) -> dict[str, Any]:
  """What the cached features depend on (JSON-safe; equal fingerprints: reusable)."""
  return json.loads(json.dumps({
      "version": FEATURES_VERSION,
      "backbone": str(config.model.backbone),
      "backbone_kwargs": dict(config.model.backbone_kwargs),
      "dtype": str(config.get("dtype", "float32")),
      "image_size": int(config.image_size),
      "init": init_record(config, run_dir),
      "data": dataset.describe(),
      "labels": {s: _labels_hash(np.asarray(dataset.labels(s))) for s in SPLITS},
  }, sort_keys=True))


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
  keys = sorted(set(a) | set(b))
  out = []
  for k in keys:
    if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
      out += _differences(a[k], b[k], f"{prefix}{k}.")
    elif a.get(k) != b.get(k):
      out.append(f"{prefix}{k}")
  return out


def _read(path: str, want: dict[str, Any], num_labels: int
          ) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:
  """((features, labels), 'reused') from a valid cache file, else (None, why not)."""
  if not fileio.exists(path):
    return None, "computed"
  try:
    with np.load(io.BytesIO(fileio.read_bytes(path)), allow_pickle=False) as data:
      stored = json.loads(str(data["fingerprint"]))
      feats = np.asarray(data["features"])
      labels = np.asarray(data["labels"])
    if feats.ndim != 2 or feats.dtype != np.float32 or labels.shape != (feats.shape[0],):
      raise ValueError(f"features {feats.shape} {feats.dtype} and labels {labels.shape} do "
                       "not fit together")
    if labels.shape[0] != num_labels:
      raise ValueError(f"{labels.shape[0]} rows, the split has {num_labels} examples")
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    why = f"unreadable cache file {path}: {type(e).__name__}: {e}"
    logging.warning("Recomputing features: %s", why)
    return None, f"recomputed ({why})"
  if stored != want:
    return None, f"recomputed (fingerprint changed: {', '.join(_differences(stored, want))})"
  return (feats, labels.astype(np.int64)), "reused"


def _write(path: str, feats: np.ndarray, labels: np.ndarray, ids: np.ndarray,
           fp: dict[str, Any]) -> None:
  buf = io.BytesIO()
  np.savez(buf, features=np.asarray(feats, np.float32), labels=np.asarray(labels, np.int64),
           ids=np.asarray(ids, np.int64), fingerprint=np.asarray(json.dumps(fp, sort_keys=True)))
  fileio.atomic_write_bytes(path, buf.getvalue())


def _extractor(config, run_dir: str, batch_size: int | None):
  """source -> (features, labels, ids) of the run's starting backbone (weights loaded and
  the program compiled once, for every split)."""
  import jax
  import jax.numpy as jnp

  from derm_jax.data import device_augment
  from derm_jax.evaluation import common
  from derm_jax.models import registry as model_registry
  from derm_jax.tasks import backbone_init, classifier
  from derm_jax.tasks.contrastive import pool_features
  from derm_jax.train import mesh as mesh_lib

  model_registry.check_image_size(config.model.backbone, dict(config.model.backbone_kwargs),
                                  config.image_size)
  backbone = model_registry.get_backbone(config.model.backbone,
                                         dtype=jnp.dtype(config.get("dtype", "float32")),
                                         **dict(config.model.backbone_kwargs))
  bb_rng = classifier.member_keys(config.seed)[0]  # the classifier's own backbone key
  variables = backbone_init.init_backbone_variables(config, backbone, run_dir, bb_rng)
  mesh = mesh_lib.make_mesh()
  variables = jax.device_put(variables, mesh_lib.replicated(mesh))
  image_size = int(config.image_size)

  @jax.jit
  def apply(v, images):
    x = device_augment.model_images(images, image_size=image_size)
    return pool_features(backbone.apply(v, x, train=False)).astype(jnp.float32)

  n = jax.device_count()
  size = int(batch_size or config.get("eval_batch_size", 128))
  size = max(n, size // n * n)

  def extract(source) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    out = common.collect(lambda batch: {"features": apply(variables, batch["image"])},
                         source, batch_size=size, mesh=mesh)
    return out["features"].astype(np.float32), out["label"].astype(np.int64), out["id"]

  return extract


def run_features(run_dir: str, *, cache_dir: str | None = None,
                 splits: Sequence[str] = SPLITS, batch_size: int | None = None,
                 dataset: Any | None = None) -> RunFeatures:
  """The features of `splits` under the starting backbone of the classifier run in
  `run_dir`, from the cache when it is valid, else computed and cached.

  Args:
    run_dir: a classifier run (its config.json; e.g. STUDY/arms/<arm>/seed_<s>).
    cache_dir: where the .npz files live (default run_dir/features).
    batch_size: images per forward pass (default the run's eval_batch_size).
    dataset: the run's dataset if already opened (registry.get(config.data)).
  Raises:
    DermJaxError (NotARunError, ConfigError, CheckpointError, ...) naming what is missing:
    no config.json, a pretraining workdir without a checkpoint, unconvertible weights.
  """
  start = time.perf_counter()
  bad = [s for s in splits if s not in SPLITS]
  if bad:
    raise DermJaxError(f"unknown split(s) {bad}; use {list(SPLITS)}.")
  config = layout.read_config(run_dir, task="classify")
  dataset = dataset if dataset is not None else registry.get(config.data)
  fp = fingerprint(config, run_dir, dataset)
  cache_dir = cache_dir or fileio.join(run_dir, "features")
  out, status = {}, {}
  for split in splits:
    expected = np.asarray(dataset.labels(split), np.int64)
    loaded, status[split] = _read(fileio.join(cache_dir, f"{split}.npz"), fp, len(expected))
    if loaded is not None:
      out[split] = loaded
  todo = [s for s in splits if s not in out]
  if todo:
    extract = _extractor(config, run_dir, batch_size)
    for split in todo:
      t = time.perf_counter()
      feats, labels, ids = extract(dataset.source(split))
      expected = np.asarray(dataset.labels(split), np.int64)
      if not np.array_equal(labels, expected):
        raise DermJaxError(f"the {split} split's labels read with its images differ from "
                           f"dataset.labels({split!r}) ({run_dir}): the data changed while "
                           "reading; run again.")
      _write(fileio.join(cache_dir, f"{split}.npz"), feats, labels, ids, fp)
      out[split] = (feats, labels)
      logging.info("Features of %s, %s split: %s in %.1f s (%s).", run_dir, split,
                   feats.shape, time.perf_counter() - t, status[split])
  return RunFeatures(splits={s: out[s] for s in splits},
                     class_names=tuple(dataset.meta.class_names), fingerprint=fp,
                     status=status, seconds=time.perf_counter() - start, cache_dir=cache_dir)
