"""Where a study's runs live and what a run folder holds: written by the study
(derm_jax/study/), read by the report (derm_jax/report/runs.py) and the probes.

  STUDY/config.json                           the study config
  STUDY/vae/seed_<s>/                         the VAE arm's pretraining (one per seed;
                                              vae/ alone with config.vae_per_seed=False)
  STUDY/pretrain/<arm>/seed_<s>/              every other pretraining (SimCLR, MICLe, DINO...)
  STUDY/arms/<arm>/seed_<s>/                  the identical classifier, all training labels
  STUDY/probes/<arm>/seed_<s>/                the linear probe (config.linear_probe)
  STUDY/fractions/<f>/{arms,probes}/<arm>/seed_<s>/   the same on a fraction f of the labels
  STUDY/closed_form_probes.json               closed-form probes (python -m derm_jax.probes)
  STUDY/report.md, STUDY/figures/             the comparison
  STUDY/compilation_cache/                    compiled programs shared by the stages

A run folder: config.json, metrics.jsonl, checkpoints/, tensorboard/, and for a classifier
test_metrics.json, test_predictions.csv, dataset.json, data_fingerprint.npz and
external/<set>/{metrics.json, predictions.csv}. Free of JAX imports.
"""

from __future__ import annotations

from derm_jax import fileio

# Evaluation protocols of a study's classifiers and the folder each lives in.
CLASSIFIER, PROBE = "classifier", "probe"
PROTOCOLS = (CLASSIFIER, PROBE)
PROTOCOL_DIRS = {CLASSIFIER: "arms", PROBE: "probes"}
FULL = 1.0  # the label fraction of arms/ and probes/

# Files of a run folder.
CONFIG = "config.json"
METRICS = "metrics.jsonl"
TEST_METRICS = "test_metrics.json"
TEST_PREDICTIONS = "test_predictions.csv"
EXTERNAL = "external"  # external/<set>/
EXTERNAL_METRICS = "metrics.json"
EXTERNAL_PREDICTIONS = "predictions.csv"
LATENT_MAP = "latent_pca.png"  # a VAE run's latent map

# Files and folders of a study.
VAE = "vae"
PRETRAIN = "pretrain"
FRACTIONS = "fractions"
REPORT = "report.md"
FIGURES = "figures"
CACHE_DIR = "compilation_cache"
CLOSED_FORM = "closed_form_probes.json"


def fraction_name(fraction: float) -> str:
  """A label fraction as its folder name: 0.1 -> '0.1'."""
  return format(float(fraction), "g")


def condition_dir(protocol: str, fraction: float = FULL) -> str:
  """The folder of one protocol and label fraction, relative to the study: 'arms',
  'probes', 'fractions/0.1/arms', ..."""
  base = PROTOCOL_DIRS[protocol]
  return base if fraction >= FULL else f"{FRACTIONS}/{fraction_name(fraction)}/{base}"


def run_dir(study: str, arm: str, seed: int, protocol: str = CLASSIFIER,
            fraction: float = FULL) -> str:
  """Where one classifier run (or linear probe) lives."""
  return fileio.join(study, *condition_dir(protocol, fraction).split("/"), arm,
                     f"seed_{int(seed)}")


def vae_dir(study: str, seed: int | None) -> str:
  """The VAE arm's pretraining of one seed (None: the one VAE of every seed)."""
  return fileio.join(study, VAE) if seed is None else fileio.join(study, VAE,
                                                                 f"seed_{int(seed)}")


def pretrain_dir(study: str, arm: str, seed: int) -> str:
  """Where an arm's pretraining of one seed lives (other than the VAE's: `vae_dir`)."""
  return fileio.join(study, PRETRAIN, arm, f"seed_{int(seed)}")


def external_dir(run: str, name: str) -> str:
  """A run's evaluation on the outside set `name`."""
  return fileio.join(run, EXTERNAL, name)


def read_config(workdir: str, task: str | None = None):
  """The ConfigDict of a run's config.json (NotARunError if there is none; ConfigError if
  `task` is given and the run is of another task)."""
  import json

  from ml_collections import ConfigDict

  from derm_jax.errors import ConfigError, NotARunError
  path = fileio.join(workdir, CONFIG)
  if not fileio.exists(path):
    raise NotARunError(f"{path} not found: {workdir!r} is not a derm_jax run directory.")
  with fileio.open(path) as f:
    config = ConfigDict(json.load(f))
  if task is not None and config.get("task") != task:
    kind = {"classify": "a classifier"}.get(task, f"a {task!r} run")
    raise ConfigError(f"{workdir!r} holds a {config.get('task')!r} run, not {kind}.")
  return config
