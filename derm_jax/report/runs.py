"""Reading a study workdir: its arms under each evaluation protocol and label fraction, their
seed runs and each run's evaluations.

Layout (every run folder holds config.json, metrics.jsonl, test_metrics.json, optionally
test_predictions.csv and external/<set>/{metrics.json,predictions.csv}):

  arms/<arm>/seed_<s>/                    the identical classifier, all training labels
  probes/<arm>/seed_<s>/                  linear probe (frozen backbone, linear head), all labels
  fractions/<f>/arms/<arm>/seed_<s>/      the identical classifier on a fraction f of the labels
  fractions/<f>/probes/<arm>/seed_<s>/    linear probe on a fraction f of the labels
  vae/seed_<s>/latent_pca.png             the VAE's latent map (older studies: vae/latent_pca.png)

`load_study` reads all of it into a `Study` (one `Condition` per protocol and fraction).
Raises ReportError naming any missing or unreadable file; predictions files are optional.
The folder and file names are derm_jax/layout.py's; the arms' order, descriptions and kind
are the arm table's (derm_jax/arms.py). Does not import jax.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from derm_jax import arms as arm_table
from derm_jax import fileio, layout
from derm_jax.errors import DermJaxError
from derm_jax.evaluation.predictions import Predictions, PredictionsError, read_predictions_csv
from derm_jax.metrics import overfitting_gap

TEST_SET = "test"

# Evaluation protocols, the study folder each lives in (derm_jax/layout.py), their names
# in the report.
CLASSIFIER, PROBE, PROTOCOLS = layout.CLASSIFIER, layout.PROBE, layout.PROTOCOLS
PROTOCOL_DIRS = layout.PROTOCOL_DIRS
PROTOCOL_LABELS = {CLASSIFIER: "identical classifier", PROBE: "linear probe"}
FULL = layout.FULL


class ReportError(DermJaxError, RuntimeError):
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
  """One arm's seed runs under one evaluation protocol and label fraction."""

  name: str
  runs: list[SeedRun]
  protocol: str = CLASSIFIER
  fraction: float = FULL


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


class Condition(NamedTuple):
  """An evaluation protocol (CLASSIFIER or PROBE) at a fraction of the training labels."""

  protocol: str
  fraction: float

  @property
  def folder(self) -> str:
    """The condition's folder inside the study workdir: 'arms', 'fractions/0.1/probes', ..."""
    return layout.condition_dir(self.protocol, self.fraction)

  @property
  def label(self) -> str:
    """'identical classifier, all training labels', 'linear probe, 10% of the training labels'."""
    return f"{PROTOCOL_LABELS[self.protocol]}, {fraction_label(self.fraction)}"


@dataclasses.dataclass
class Study:
  """Everything a study workdir holds for the report.

  groups: Condition -> arm -> ArmRuns, in report order (the identical classifier on all
  labels first, then the linear probe on all labels, then each fraction ascending, the
  classifier before the probe); arms in `arm_sort_key` order. latent_map: the VAE's latent
  map relative to the workdir, or None. warnings: runs whose config.json contradicts the
  folder they are in (a probe that is not frozen or not linear, another label fraction).
  """

  workdir: str
  groups: dict[Condition, dict[str, ArmRuns]]
  latent_map: str | None = None
  warnings: list[str] = dataclasses.field(default_factory=list)

  def arms(self, protocol: str = CLASSIFIER, fraction: float = FULL) -> dict[str, ArmRuns]:
    """The arms of one condition ({} when the study has none)."""
    return self.groups.get(Condition(protocol, fraction), {})

  @property
  def protocols(self) -> list[str]:
    return [p for p in PROTOCOLS if any(c.protocol == p for c in self.groups)]

  @property
  def fractions(self) -> list[float]:
    """The label fractions below 1 present under fractions/, ascending."""
    return sorted({c.fraction for c in self.groups if c.fraction != FULL})


fraction_name = layout.fraction_name


def fraction_label(fraction: float) -> str:
  """'all training labels' or '10% of the training labels'."""
  if fraction == FULL:
    return "all training labels"
  return f"{format(100 * fraction, '.3g')}% of the training labels"


arm_sort_key = arm_table.order_key  # the arm table's order, then any other name by name


def paper_arm(name: str) -> str | None:
  """The paper's arm an arm stands for: 'self_supervised' (exactly `vae`), 'imagenet' (exactly
  `imagenet`) or None. The contrastive arms (simclr, imagenet_simclr, micle) are
  self-supervised but not the paper's VAE; scratch is neither."""
  return {"vae": "self_supervised", "imagenet": "imagenet"}.get(name)


is_self_supervised = arm_table.is_self_supervised


def _reference_rank(name: str) -> int:
  return {"imagenet": 0, "scratch": 1}.get(name, 2)


def arm_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
  """Every pair of arms, oriented A − B with the reference arm second (ImageNet, then scratch),
  else in arm order; pairs against ImageNet first, then against scratch, then the others."""
  names = list(names)
  pairs = []
  for i, a in enumerate(names):
    for b in names[i + 1 :]:
      pairs.append((b, a) if _reference_rank(a) < _reference_rank(b) else (a, b))
  return sorted(pairs, key=lambda p: (_reference_rank(p[1]), names.index(p[1]), names.index(p[0])))


def _seed_dirs(parent: str) -> list[tuple[int, str]]:
  out = []
  for d in fileio.listdir(parent):
    m = re.fullmatch(r"seed_(\d+)", d)
    if m and fileio.isdir(fileio.join(parent, d)):
      out.append((int(m.group(1)), fileio.join(parent, d)))
  return sorted(out)


def _load_run(seed: int, seed_dir: str) -> SeedRun:
  config = read_json(fileio.join(seed_dir, layout.CONFIG))
  history = _normalize_history(_read_jsonl(fileio.join(seed_dir, layout.METRICS)))
  test = read_json(fileio.join(seed_dir, layout.TEST_METRICS))
  if not isinstance(config, dict) or not isinstance(test, dict):
    raise ReportError(f"expected JSON objects in {seed_dir}/config.json and test_metrics.json")
  evals = {TEST_SET: _load_eval(test, fileio.join(seed_dir, layout.TEST_PREDICTIONS))}
  ext_dir = fileio.join(seed_dir, layout.EXTERNAL)
  if fileio.isdir(ext_dir):
    for name in sorted(fileio.listdir(ext_dir)):
      set_dir = fileio.join(ext_dir, name)
      if not fileio.isdir(set_dir):
        continue
      m = read_json(fileio.join(set_dir, layout.EXTERNAL_METRICS))
      if not isinstance(m, dict):
        raise ReportError(f"expected a JSON object in {set_dir}/metrics.json")
      key = name if name != TEST_SET else f"{name} (external)"
      evals[key] = _load_eval(m, fileio.join(set_dir, layout.EXTERNAL_PREDICTIONS))
  return SeedRun(seed=seed, path=seed_dir, config=config, history=history, test=test, evals=evals)


def _config_warnings(run: SeedRun, cond: Condition, where: str) -> list[str]:
  """What in a run's config.json contradicts the folder it is in."""
  out = []
  frac = num(run.config.get("label_fraction"))
  if frac is not None and abs(frac - cond.fraction) > 1e-9:
    out.append(
      f"`{where}`: config.json says `label_fraction` = {format(frac, 'g')}, but the run is in "
      f"the folder for {fraction_name(cond.fraction)} ({cond.label})"
    )
  if cond.protocol == PROBE:
    frozen = run.config.get("freeze_backbone")
    head = run.config.get("head")
    hidden = num(head.get("hidden")) if isinstance(head, dict) else None
    if frozen is not True:
      out.append(
        f"`{where}`: a linear-probe run whose config.json has `freeze_backbone` = "
        f"{json.dumps(frozen)}, not true: its backbone was not (recorded as) frozen"
      )
    if hidden is not None and hidden != 0:
      out.append(
        f"`{where}`: a linear-probe run whose config.json has `head.hidden` = {hidden:g}, not 0: "
        "its head is not linear"
      )
  return out


def _load_group(
  workdir: str, cond: Condition, warnings: list[str], folder: str | None = None
) -> dict[str, ArmRuns]:
  """Reads every <arm>/seed_<s>/ of one condition's folder (`folder`, relative to the workdir;
  default `cond.folder`)."""
  folder = folder or cond.folder
  base = fileio.join(workdir, *folder.split("/"))
  layout = f"{folder}/<arm>/seed_<s>/"
  arm_names = sorted(
    (d for d in fileio.listdir(base) if fileio.isdir(fileio.join(base, d))), key=arm_sort_key
  )
  if not arm_names:
    raise ReportError(f"no arm directories in {base} (expected DIR/{layout})")
  arms: dict[str, ArmRuns] = {}
  for arm in arm_names:
    arm_dir = fileio.join(base, arm)
    seeds = _seed_dirs(arm_dir)
    if not seeds:
      raise ReportError(f"no seed_<s> directories in {arm_dir}")
    runs = []
    for seed, seed_dir in seeds:
      run = _load_run(seed, seed_dir)
      warnings += _config_warnings(run, cond, f"{folder}/{arm}/seed_{seed}")
      runs.append(run)
    arms[arm] = ArmRuns(name=arm, runs=runs, protocol=cond.protocol, fraction=cond.fraction)
  return arms


def _fraction_dirs(workdir: str) -> list[tuple[float, str]]:
  """(fraction, folder name) of each DIR/fractions/<f>/, ascending; ReportError on a bad name."""
  root = fileio.join(workdir, layout.FRACTIONS)
  if not fileio.isdir(root):
    return []
  out = []
  for d in fileio.listdir(root):
    if not fileio.isdir(fileio.join(root, d)):
      continue
    try:
      f = float(d)
    except ValueError:
      f = math.nan
    if not 0 < f < 1:
      raise ReportError(
        f"{fileio.join(root, d)}: expected a label fraction strictly between 0 and 1 as the "
        "folder name (format(f, 'g'), e.g. 0.1; all labels are arms/ and probes/)"
      )
    same = [name for g, name in out if g == f]
    if same:
      raise ReportError(f"{root}: the folders {same[0]} and {d} are the same label fraction")
    out.append((f, d))
  return sorted(out)


def _latent_map(workdir: str) -> str | None:
  """vae/seed_<s>/latent_pca.png of the first seed that has one, else vae/latent_pca.png."""
  vae_dir = fileio.join(workdir, "vae")
  if not fileio.isdir(vae_dir):
    return None
  for seed, d in _seed_dirs(vae_dir):
    if fileio.isfile(fileio.join(d, "latent_pca.png")):
      return f"vae/seed_{seed}/latent_pca.png"
  if fileio.isfile(fileio.join(vae_dir, "latent_pca.png")):
    return "vae/latent_pca.png"
  return None


def load_study(workdir: str) -> Study:
  """Reads arms/, probes/ and fractions/ of a study workdir; arms/ is required.

  Raises ReportError naming any missing path (arms/ itself, an arm without seed folders, a
  run without its config.json, metrics.jsonl or test_metrics.json) or a fractions/<f>/
  folder whose name is not a fraction in (0, 1) or that holds neither arms/ nor probes/.
  Predictions files are optional: a missing or malformed one leaves that run without
  intervals (EvalSet.note says why) rather than failing the report.
  """
  arms_dir = fileio.join(workdir, PROTOCOL_DIRS[CLASSIFIER])
  if not fileio.isdir(arms_dir):
    raise ReportError(f"missing directory: {arms_dir} (expected DIR/arms/<arm>/seed_<s>/)")
  warnings: list[str] = []
  conds = {Condition(CLASSIFIER, FULL): PROTOCOL_DIRS[CLASSIFIER]}  # condition -> its folder
  if fileio.isdir(fileio.join(workdir, PROTOCOL_DIRS[PROBE])):
    conds[Condition(PROBE, FULL)] = PROTOCOL_DIRS[PROBE]
  for f, name in _fraction_dirs(workdir):
    found = {
      Condition(p, f): layout.condition_dir(p, f)
      for p in PROTOCOLS
      if fileio.isdir(fileio.join(workdir, *layout.condition_dir(p, f).split("/")))
    }
    if not found:
      raise ReportError(
        f"{fileio.join(workdir, 'fractions', name)} holds neither arms/ nor probes/"
      )
    conds.update(found)
  groups = {c: _load_group(workdir, c, warnings, folder) for c, folder in conds.items()}
  return Study(workdir=workdir, groups=groups, latent_map=_latent_map(workdir), warnings=warnings)


def _steps_per_epoch(history: Sequence[dict[str, Any]]) -> float | None:
  """Training steps per epoch from a run's recorded (step, epoch) rows, or None."""
  for row in reversed(history):
    step, epoch = num(row.get("step")), num(row.get("epoch"))
    if step and epoch and epoch > 0:
      return step / epoch
  return None


def cut_short(run: SeedRun) -> str | None:
  """Why a run is a smoke run rather than a training run, or None: it recorded less than one
  epoch, or its `total_steps` cap is below one epoch's steps."""
  last = num(run.history[-1].get("epoch"))
  step = num(run.history[-1].get("step"))
  total = num(run.config.get("total_steps"))
  spe = _steps_per_epoch(run.history)
  if last is not None and last < 1:
    steps = f"{int(step)} steps, " if step is not None else ""
    return f"stopped after {steps}{format(last, '.3g')} of an epoch"
  if total and total > 0 and spe and total < spe:
    return f"`total_steps` = {int(total)}, below one epoch ({spe:.0f} steps)"
  return None


def smoke_reasons(study: Study, top: dict[str, Any]) -> list[str]:
  """Why the study is a smoke run (empty when it is not): the study config's `smoke_steps`
  > 0, or runs cut below one epoch (`cut_short`)."""
  out = []
  smoke = num(top.get("smoke_steps")) if isinstance(top, dict) else None
  if smoke and smoke > 0:
    out.append(f"the study config sets `smoke_steps` = {int(smoke)}: every stage stops there")
  short = [
    f"`{cond.folder}/{a}/seed_{r.seed}` {why}"
    for cond, arms in study.groups.items()
    for a, arm in arms.items()
    for r in arm.runs
    if (why := cut_short(r))
  ]
  n = sum(len(arm.runs) for arms in study.groups.values() for arm in arms.values())
  if short:
    example = "e.g. " if len(short) > 1 else ""
    out.append(f"{len(short)} of {n} runs trained for less than one epoch ({example}{short[0]})")
  return out
