"""Checks a config and a workdir before anything is prepared, compiled or written.

`validate_config(config)` raises one `ConfigError` listing every bad field (each problem
names its field, e.g. ``config.vae.batch_size=0 must be a positive integer``) for the
'vae', 'classify' and 'compare' configs of configs/. A compare config is checked as its
stages will be built (the shared data/image_size/aug/backbone at the top level merged into
`config.vae` and `config.classifier` by derm_jax.study.arms); problems of shared fields are
reported once, under their top-level names.

`validate_workdir(workdir)` refuses a workdir that is an existing file or cannot be
written. (Whether a workdir already holds a run is `derm_jax.train.outputs.workdir_has_run`:
a workdir left without any checkpoint never blocks a rerun with a corrected config.)

Not checked here: batch size divisibility by the device count (derm_jax/train/mesh.py)
and the data files themselves (derm_jax/data raises DataError).
"""

from __future__ import annotations

import math
import numbers
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from derm_jax import arms as arm_table
from derm_jax.errors import ConfigError
from derm_jax.study import plan as plan_lib
from derm_jax.tasks import registry

TASKS = (*registry.TASKS, "compare")
DTYPES = ("float32", "bfloat16")
# Seeds seed numpy (which refuses negative ones) and JAX keys (which keep 32 bits: 2**32
# would silently be seed 0 again).
MAX_SEED = 2**32 - 1

# Stage field -> top-level field of a compare config (the shared settings).
_SHARED = {"data": "data", "image_size": "image_size", "aug": "aug",
           "model.backbone": "backbone", "model.backbone_kwargs": "backbone_kwargs"}


class _Checker:
  """Collects problems of one (stage) config; `name(path)` is how a field is reported."""

  def __init__(self, config, name: Callable[[str], str], problems: list[str]):
    self.c, self.name, self.problems = config, name, problems

  model_ok = False  # whether image_size and model.backbone(_kwargs) passed their checks

  @staticmethod
  def reason(e: Exception) -> str:
    """The message of a check_image_size ValueError without its leading 'config.x=v ' part."""
    return _strip_field(e)

  def add(self, path: str, message: str) -> None:
    text = f"{self.name(path)}{message}"
    if text not in self.problems:
      self.problems.append(text)

  def has(self, path: str) -> bool:
    node = self.c
    for part in path.split("."):
      try:
        if part not in node:
          return False
        node = node[part]
      except TypeError:
        return False
    return True

  def get(self, path: str, default: Any = None) -> Any:
    node = self.c
    for part in path.split("."):
      try:
        node = node[part]
      except (KeyError, TypeError, AttributeError):
        return default
    return node

  # -- typed checks; each returns whether the value is fine

  def integer(self, path: str, minimum: int, required: bool = True,
              maximum: int | None = None) -> bool:
    if not self.has(path):
      if required:
        self.add(path, " is missing")
      return False
    v = self.get(path)
    if (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum
        or (maximum is not None and v > maximum)):
      what = ("a positive integer" if minimum == 1 else
              "a non-negative integer" if minimum == 0 else f"an integer >= {minimum}")
      if maximum is not None:
        what = f"an integer from {minimum} to {maximum}"
      self.add(path, f"={v!r} must be {what}")
      return False
    return True

  def number(self, path: str, low: float | None = None, low_open: bool = False,
             high: float | None = None, high_open: bool = False,
             required: bool = True) -> bool:
    if not self.has(path):
      if required:
        self.add(path, " is missing")
      return False
    v = self.get(path)
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    if ok and low is not None:
      ok = v > low if low_open else v >= low
    if ok and high is not None:
      ok = v < high if high_open else v <= high
    if not ok:
      lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
      hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
      bound = " and ".join(b for b in (lo, hi) if b)
      self.add(path, f"={v!r} must be a finite number{' ' + bound if bound else ''}")
    return ok

  def choice(self, path: str, options: Sequence[str]) -> bool:
    v = self.get(path)
    if v not in options:
      self.add(path, f"={v!r} must be one of {list(options)}")
      return False
    return True

  def pair(self, path: str, low: float, high: float | None) -> None:
    """A (lo, hi) pair with low < lo <= hi (<= high)."""
    v = self.get(path)
    try:
      lo, hi = (float(x) for x in v)
      ok = (math.isfinite(lo) and math.isfinite(hi) and low < lo <= hi
            and (high is None or hi <= high))
    except (TypeError, ValueError):
      ok = False
    if not ok:
      rng = f"in ({low:g}, {high:g}]" if high is not None else f"> {low:g}"
      self.add(path, f"={v!r} must be two numbers (lo, hi) with lo <= hi, both {rng}")


def _check_common(k: _Checker, task: str) -> None:
  k.integer("batch_size", 1)
  k.integer("eval_batch_size", 1)
  steps_ok = k.integer("total_steps", 0, required=False)
  if not (steps_ok and k.get("total_steps", 0) > 0):
    k.number("num_epochs", 0, low_open=True)
  k.integer("log_every_steps", 1)
  k.integer("keep_checkpoints", 1)
  if k.has("dtype"):
    k.choice("dtype", DTYPES)
  if k.has("eval_every_epochs"):
    k.number("eval_every_epochs", 0, low_open=True)
  if k.has("checkpoint_every_steps"):
    k.integer("checkpoint_every_steps", 0)
  k.integer("stop_after_step", 0, required=False)
  k.integer("seed", 0, required=False, maximum=MAX_SEED)
  k.integer("steps_per_dispatch", 0, required=False)
  # optimiser
  k.number("optimizer.lr", 0, low_open=True)
  if k.has("optimizer.backbone_lr"):
    k.number("optimizer.backbone_lr", 0, low_open=True)
  k.number("optimizer.weight_decay", 0)
  k.number("optimizer.grad_clip", 0, required=False)
  k.integer("optimizer.warmup_steps", 0, required=False)
  k.number("optimizer.warmup_epochs", 0, required=False)
  k.number("optimizer.b1", 0, high=1, high_open=True, required=False)
  k.number("optimizer.b2", 0, high=1, high_open=True, required=False)
  k.number("optimizer.end_lr_factor", 0, required=False)
  # input pipeline
  k.integer("input.num_threads", 1, required=False)
  k.integer("input.prefetch", 0, required=False)
  k.integer("input.num_workers", 0, required=False)
  k.number("input.cache_mb", 0, required=False)
  k.number("input.device_data_mb", 0, required=False)
  # data
  from derm_jax.data import registry as data_registry
  name = k.get("data.name", "dermamnist") or "dermamnist"
  if name not in data_registry.available():
    k.add("data.name", f"={name!r} is not a registered dataset; registered: "
          f"{data_registry.available()}")
  for f in ("val_fraction", "test_fraction"):
    k.number(f"data.{f}", 0, high=1, high_open=True, required=False)
  if (isinstance(k.get("data.val_fraction"), numbers.Real)
      and isinstance(k.get("data.test_fraction"), numbers.Real)
      and k.get("data.val_fraction") + k.get("data.test_fraction") >= 1):
    k.add("data.val_fraction", " + test_fraction must be below 1 (nothing left to train on)")
  k.integer("data.stored_size", 1, required=False)
  _check_own_data(k, name)
  # augmentation
  k.number("aug.color_jitter", 0, required=False)
  if k.has("aug.crop_scale"):
    k.pair("aug.crop_scale", 0.0, 1.0)
  if k.has("aug.crop_ratio"):
    k.pair("aug.crop_ratio", 0.0, None)
  # model input size vs backbone
  from derm_jax.models import registry as model_registry
  size_ok = k.integer("image_size", 1)
  backbone = k.get("model.backbone")
  backbone_ok = backbone in model_registry.available()
  if not backbone_ok:
    k.add("model.backbone", f"={backbone!r} is not a registered backbone; registered: "
          f"{model_registry.available()}")
  kwargs = dict(k.get("model.backbone_kwargs") or {})
  if size_ok and backbone_ok:
    try:
      model_registry.check_image_size(backbone, kwargs, k.get("image_size"))
    except (ValueError, KeyError) as e:
      k.add("image_size", f"={k.get('image_size')!r}: {_strip_field(e)}")
    except TypeError as e:
      k.add("model.backbone_kwargs", f"={kwargs!r} not accepted by {backbone!r}: {e}")
  k.model_ok = size_ok and backbone_ok  # the task's checks may build the model's shapes
  registry.get(task).check_config(k)


def _strings(value: Any) -> bool:
  """A tuple/list of non-empty strings."""
  return (isinstance(value, Sequence) and not isinstance(value, str)
          and all(isinstance(v, str) and v.strip() for v in value))


def _check_own_data(k: _Checker, name: str) -> None:
  """data.path, data.classes (folder) and data.unlabeled (any dataset): types, and a path
  for name='folder'. Whether the folders exist and hold images is the dataset's check."""
  path = k.get("data.path", "")
  if not isinstance(path, str):
    k.add("data.path", f"={path!r} must be a folder path (a string)")
  elif name == "folder" and not path.strip():
    k.add("data.path", " is empty; data.name='folder' needs the folder of your images "
          "(DIR/labels.csv or DIR/<class>/*.jpg)")
  classes = k.get("data.classes", ())
  if not _strings(classes) or len(set(classes)) != len(classes):
    k.add("data.classes", f"={classes!r} must be a tuple of distinct class names")
  elif classes and name != "folder":
    k.add("data.classes", f"={tuple(classes)!r} is only used with data.name='folder' "
          f"({name!r} has fixed classes); leave it empty")
  unlabeled = k.get("data.unlabeled", ())
  if not _strings(unlabeled):
    k.add("data.unlabeled", f"={unlabeled!r} must be a tuple of folder paths, e.g. "
          "\"('/data/unlabeled',)\"")


def _repeated(values: Sequence[Any]) -> list[Any]:
  """The values that occur more than once, in order of first occurrence."""
  counts: dict[Any, int] = {}
  for v in values:
    counts[v] = counts.get(v, 0) + 1
  return [v for v, n in counts.items() if n > 1]


def _strip_field(e: Exception) -> str:
  """The message of a check_image_size ValueError without its leading 'config.x=v ' part."""
  text = str(e.args[0] if e.args else e)
  return re.sub(r"^config\.image_size=\S+\s*", "", text).rstrip(".")


def _plain_name(path: str) -> str:
  return f"config.{path}"


def _stage_name(stage: str, own: tuple[str, ...] = ()) -> Callable[[str], str]:
  """How a stage's field is reported: a shared one under its top-level name (unless the
  stage keeps its own, `own`), else under the stage."""
  def name(path: str) -> str:
    for stage_path, top in _SHARED.items():
      if stage_path in own:
        continue
      if path == stage_path or path.startswith(stage_path + "."):
        return f"config.{top}{path[len(stage_path):]}"
    return f"config.{stage}.{path}"
  return name


def _check_compare(config, problems: list[str]) -> None:
  top = _Checker(config, _plain_name, problems)
  seeds = top.get("seeds")
  if (not isinstance(seeds, Sequence) or isinstance(seeds, str) or not seeds
      or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool)
                 and 0 <= s <= MAX_SEED for s in seeds)):
    top.add("seeds", f"={seeds!r} must be a non-empty sequence of integers from 0 to "
            f"{MAX_SEED}")
  elif _repeated(seeds):
    top.add("seeds", f"={tuple(seeds)!r} repeats {_repeated(seeds)}: each seed is one member "
            "(one folder seed_<s>); give each once")
  arms = top.get("arms")
  if (not isinstance(arms, Sequence) or isinstance(arms, str) or not arms
      or any(a not in arm_table.ARMS for a in arms) or len(set(arms)) != len(arms)):
    top.add("arms", f"={arms!r} must be a non-empty list of distinct arms from "
            f"{list(arm_table.NAMES)}")
    arms = [a for a in (arms if isinstance(arms, Sequence) else ()) if a in arm_table.ARMS]
  top.integer("population_size", 0, required=False)
  top.integer("smoke_steps", 0, required=False)
  if top.has("linear_probe") and not isinstance(top.get("linear_probe"), bool):
    top.add("linear_probe", f"={top.get('linear_probe')!r} must be True or False")
  fractions = top.get("label_fractions", (1.0,))
  if (not isinstance(fractions, Sequence) or isinstance(fractions, str) or not fractions
      or not all(isinstance(f, numbers.Real) and not isinstance(f, bool) and math.isfinite(f)
                 and 0 < f <= 1 for f in fractions)):
    top.add("label_fractions", f"={fractions!r} must be a non-empty sequence of fractions in "
            "(0, 1], e.g. (0.01, 0.1, 1.0)")
  elif _repeated([float(f) for f in fractions]):
    top.add("label_fractions", f"={tuple(fractions)!r} repeats "
            f"{_repeated([float(f) for f in fractions])}; give each fraction once")
  elif 1.0 not in [float(f) for f in fractions]:
    top.add("label_fractions", f"={tuple(fractions)!r} lacks 1.0: the study's arms and its "
            "report are the runs on all the labels; add 1.0, e.g. "
            f"{(*tuple(fractions), 1.0)!r}")
  closed = top.get("closed_form_fractions", ())
  if (not isinstance(closed, Sequence) or isinstance(closed, str)
      or not all(isinstance(f, numbers.Real) and not isinstance(f, bool) and math.isfinite(f)
                 and 0 < f <= 1 for f in closed) or _repeated([float(f) for f in closed])):
    top.add("closed_form_fractions", f"={closed!r} must be distinct fractions in (0, 1], e.g. "
            "(0.01, 0.1, 1.0), or () for none")
  if top.has("vae_per_seed") and not isinstance(top.get("vae_per_seed"), bool):
    top.add("vae_per_seed", f"={top.get('vae_per_seed')!r} must be True or False")
  # One config per pretraining task (its arms differ in starting weights and options only),
  # then each arm's classifier, as the study's plan builds them.
  checked = set()
  for arm in arms:
    a = arm_table.get(arm)
    if a.pretraining is None or a.pretraining in checked or (
        arm == "vae" and top.get("vae_workdir")):
      continue
    checked.add(a.pretraining)
    if a.pretraining not in config:
      top.add(a.pretraining, f" is missing: arm {arm!r} is pretrained by the "
              f"{a.pretraining!r} task, configured in config.{a.pretraining}")
      continue
    stage = plan_lib.pretraining_config(config, arm, 0)
    own = ("aug",) if "aug" in config[a.pretraining] else ()
    _check_common(_Checker(stage, _stage_name(a.pretraining, own=own), problems),
                  a.pretraining)
  for arm in arms or ("imagenet",):
    stage = plan_lib.classifier_config(config, arm, 0, "<pretraining stage>")
    _check_common(_Checker(stage, _stage_name("classifier"), problems), "classify")


def config_problems(config) -> list[str]:
  """Every problem of `config`, one line each naming the field; [] if it is fine."""
  problems: list[str] = []
  task = config.get("task", "vae") if hasattr(config, "get") else None
  if task not in TASKS:
    problems.append(f"config.task={task!r} must be one of {list(TASKS)}")
    return problems
  if task == "compare":
    _check_compare(config, problems)
  else:
    k = _Checker(config, _plain_name, problems)
    k.integer("smoke_steps", 0, required=False)  # --config.smoke_steps (derm_jax.main)
    _check_common(k, task)
  return problems


def validate_config(config) -> None:
  """Raises ConfigError listing every bad field of `config` (see the module docstring)."""
  problems = config_problems(config)
  if problems:
    n = len(problems)
    raise ConfigError(f"{n} invalid config setting{'s' if n > 1 else ''}: "
                      + "; ".join(problems) + ".")


def validate_workdir(workdir: str) -> None:
  """Raises ConfigError naming the path if `workdir` is a file or cannot be written.

  A workdir that does not exist yet is checked through its nearest existing parent (which
  must be a writable directory); nothing is created."""
  path = os.path.abspath(os.path.expanduser(os.fspath(workdir)))
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"--workdir {path} is an existing file, not a directory; choose "
                      "another workdir.")
  probe = path
  while not os.path.exists(probe):
    parent = os.path.dirname(probe)
    if parent == probe:
      break
    probe = parent
  if not os.path.isdir(probe):
    raise ConfigError(f"--workdir {path} cannot be created: {probe} is a file, not a "
                      "directory.")
  what = "" if probe == path else f" (its nearest existing parent {probe})"
  if not os.access(probe, os.W_OK | os.X_OK):
    raise ConfigError(f"--workdir {path} cannot be written{what}: permission denied.")
  try:
    fd, name = tempfile.mkstemp(prefix=".derm_jax_write_test_", dir=probe)
    os.close(fd)
    os.remove(name)
  except OSError as e:
    raise ConfigError(f"--workdir {path} cannot be written{what}: {e.strerror or e}.") from e
