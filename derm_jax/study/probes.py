"""Closed-form probes of a study's representations in seconds (the library behind
`python -m derm_jax.probes`, also run at the end of a study with
`config.closed_form_fractions`): for every arm and seed, the starting backbone's features
(cached, derm_jax/tasks/features.py), then a ridge linear probe and a cosine k-NN at
several fractions of the training labels (derm_jax/evaluation/closed_form.py), without any
SGD run; written to STUDY/closed_form_probes.json (its format: derm_jax/probes.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from derm_jax import fileio, layout
from derm_jax.errors import ConfigError, NotARunError

OUT_NAME = layout.CLOSED_FORM
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- the study


def study_config(workdir: str) -> dict[str, Any]:
  if not fileio.isdir(workdir):
    raise NotARunError(f"--workdir={workdir!r} does not exist.")
  path = fileio.join(workdir, "config.json")
  if not fileio.exists(path):
    raise NotARunError(f"{workdir!r} is not a study: it has no config.json (train one with "
                       "`python -m derm_jax.main --config=configs/compare.py "
                       "--workdir=...`).")
  try:
    config = json.loads(fileio.read_text(path))
  except ValueError as e:
    raise ConfigError(f"{path} is not valid JSON ({e}).") from e
  if config.get("task") != "compare":
    raise NotARunError(f"{workdir!r} is not a study: its config.json is of a "
                       f"{config.get('task')!r} run, not 'compare' (give the study's "
                       "workdir, the folder holding arms/).")
  return config


def study_runs(workdir: str, config: dict[str, Any],
               arms: Sequence[str] | None = None) -> list[tuple[str, int, str]]:
  """(arm, seed, run dir) of every STUDY/arms/<arm>/seed_<s> with a config.json, in the
  study's arm order (then any other arm, by name), seeds ascending."""
  base = fileio.join(workdir, "arms")
  found = fileio.listdir(base) if fileio.isdir(base) else []
  order = [a for a in config.get("arms", []) if a in found]
  order += sorted(a for a in found if a not in order)
  if arms:
    unknown = [a for a in arms if a not in order]
    if unknown:
      raise ConfigError(f"--arms: {unknown} not in {workdir}/arms (it has {order}).")
    order = [a for a in order if a in arms]
  runs = []
  for arm in order:
    seeds = []
    for name in fileio.listdir(fileio.join(base, arm)):
      if name.startswith("seed_") and name[5:].isdigit():
        run = fileio.join(base, arm, name)
        if fileio.exists(fileio.join(run, "config.json")):
          seeds.append((int(name[5:]), run))
    runs += [(arm, s, run) for s, run in sorted(seeds)]
  if not runs:
    raise NotARunError(f"{workdir!r} has no classifier runs (arms/<arm>/seed_<s>/config.json)"
                       ": run the study first.")
  return runs


def study_fractions(workdir: str, config: dict[str, Any]) -> list[float]:
  """The label fractions the study trained SGD runs for (its config, and fractions/<f>)."""
  out = {float(f) for f in config.get("label_fractions", (1.0,)) or (1.0,)}
  base = fileio.join(workdir, "fractions")
  for name in fileio.listdir(base) if fileio.isdir(base) else []:
    try:
      out.add(float(name))
    except ValueError:
      continue
  return sorted(f for f in out if 0.0 < f <= 1.0)


def sgd_results(workdir: str, arm: str, seed: int, fractions: Sequence[float],
                train_labels) -> dict[str, dict[str, Any]]:
  """{'probe': {f: ...}, 'classifier': {f: ...}} of the study's own SGD runs of this arm
  and seed (test_metrics.json), for each fraction that has one."""
  from derm_jax.data import label_fractions
  from derm_jax.evaluation import closed_form
  out: dict[str, dict[str, Any]] = {"probe": {}, "classifier": {}}
  for kind, protocol in (("probe", layout.PROBE), ("classifier", layout.CLASSIFIER)):
    for f in fractions:
      path = fileio.join(layout.run_dir(workdir, arm, seed, protocol, f), layout.TEST_METRICS)
      if not fileio.exists(path):
        continue
      try:
        m = json.loads(fileio.read_text(path))
      except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}).") from e
      entry = {k: m.get(k) for k in (*closed_form.HEADLINE, "step")}
      entry["n_train"] = int(label_fractions.fraction_indices(train_labels, f, seed).size)
      entry["subset_seed"] = int(seed)
      out[kind][closed_form.fraction_key(f)] = entry
  return out


# ----------------------------------------------------------------------------- probing


def probe_study(workdir: str, fractions: Sequence[float] = (0.01, 0.1, 0.25, 1.0),
                subset_seeds: Sequence[int] = (0, 1, 2), arms: Sequence[str] | None = None,
                out: str | None = None, features_dir: str | None = None,
                class_balanced: bool | None = True, batch_size: int | None = None,
                log: Callable[[str], None] = print) -> dict[str, Any]:
  """Caches every run's features, probes them, writes and returns the JSON dict (module
  docstring). `class_balanced` None: as each run's class_weighted_loss."""
  from derm_jax import metrics
  from derm_jax.data import label_fractions, registry
  from derm_jax.evaluation import closed_form
  from derm_jax.tasks import features
  start = time.perf_counter()
  workdir = fileio.abspath(workdir)
  config = study_config(workdir)
  runs = study_runs(workdir, config, arms)
  sgd_fractions = study_fractions(workdir, config)
  fractions = sorted({float(f) for f in fractions} | set(sgd_fractions))
  for f in fractions:
    try:
      label_fractions.fraction_indices([0], f, 0)
    except ValueError as e:
      raise ConfigError(f"--fractions: {e}") from e
  subset_seeds = [int(s) for s in subset_seeds]
  if not subset_seeds:
    raise ConfigError("--subset_seeds: give at least one seed.")
  out = out or fileio.join(workdir, OUT_NAME)
  doc: dict[str, Any] = {
      "version": FORMAT_VERSION, "study": workdir,
      "settings": {"fractions": fractions, "subset_seeds": subset_seeds,
                   "lambdas": list(closed_form.DEFAULT_LAMBDAS),
                   "ks": list(closed_form.DEFAULT_KS),
                   "temperature": closed_form.DEFAULT_TEMPERATURE,
                   "targets": "one-hot, unregularised intercept (centring)",
                   "standardisation": "mean/std of the training subset",
                   "selection": "balanced accuracy on the full validation split",
                   "class_balanced": ("as each run's class_weighted_loss"
                                      if class_balanced is None else bool(class_balanced))},
      "arms": {}}
  datasets: dict[str, Any] = {}
  arm_seconds: dict[str, float] = {}
  for arm, seed, run_dir in runs:
    t = time.perf_counter()
    run_config = layout.read_config(run_dir, task="classify")
    data_key = json.dumps(run_config.data.to_dict(), sort_keys=True, default=str)
    if data_key not in datasets:
      datasets[data_key] = registry.get(run_config.data)
    cache = fileio.join(features_dir, arm, f"seed_{seed}") if features_dir else None
    fs = features.run_features(run_dir, cache_dir=cache, batch_size=batch_size,
                               dataset=datasets[data_key])
    balanced = (bool(run_config.get("class_weighted_loss", False)) if class_balanced is None
                else bool(class_balanced))
    t_probe = time.perf_counter()
    records = closed_form.label_efficiency(fs.splits, fractions, subset_seeds,
                                           num_classes=fs.num_classes,
                                           class_balanced=balanced)
    probe_seconds = time.perf_counter() - t_probe
    doc["arms"].setdefault(arm, {"seeds": {}})["seeds"][str(seed)] = metrics.to_jsonable({
        "run_dir": run_dir, "init": fs.fingerprint["init"], "feature_dim": fs.dim,
        "split_sizes": {s: int(x.shape[0]) for s, (x, _) in fs.splits.items()},
        "class_balanced": balanced,
        "features": {"status": fs.status, "seconds": fs.seconds, "cache_dir": fs.cache_dir},
        "probe_seconds": probe_seconds, "records": records,
        "sgd": sgd_results(workdir, arm, seed, sgd_fractions, fs.splits["train"][1])})
    arm_seconds[arm] = arm_seconds.get(arm, 0.0) + time.perf_counter() - t
    reused = all(v == "reused" for v in fs.status.values())
    log(f"{arm} seed {seed}: features {fs.splits['train'][0].shape[1]}-d "
        f"({'reused' if reused else 'computed'}, {fs.seconds:.1f} s), probes "
        f"{probe_seconds:.1f} s")
  doc["seconds"] = time.perf_counter() - start
  fileio.atomic_write_text(out, json.dumps(doc, indent=1, sort_keys=False) + "\n")
  log("")
  log("Balanced accuracy (%) on test, mean over seeds and label subsets; λ / k chosen on "
      "the validation split:")
  log(closed_form.format_table(closed_form.table_rows(doc)))
  log("")
  log("Seconds per arm (features + probes): " + ", ".join(
      f"{a} {s:.1f}" for a, s in arm_seconds.items()))
  log(f"Wrote {out}")
  return doc
