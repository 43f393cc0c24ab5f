"""Closed-form probes of a study's representations in seconds: for every arm and seed, the
starting backbone's features (cached, derm_jax/tasks/features.py), then a ridge
linear probe and a cosine k-NN at several fractions of the training labels
(derm_jax/evaluation/closed_form.py), without any SGD run.

  python -m derm_jax.probes --workdir=STUDY [--fractions=0.01,0.1,0.25,1]
      [--subset_seeds=0,1,2] [--arms=vae,imagenet] [--out=FILE] [--features_dir=DIR]
      [--class_balanced=true|false|auto] [--batch_size=N]

Reads every STUDY/arms/<arm>/seed_<s> (its config.json says where the backbone started),
caches the features in each run's features/ folder (or --features_dir/<arm>/seed_<s>, to
leave a study untouched), and writes STUDY/closed_form_probes.json (or --out):

  {'version': 1, 'study': STUDY, 'settings': {...},
   'arms': {arm: {'seeds': {'<s>': {
       'run_dir', 'init', 'feature_dim', 'split_sizes', 'class_balanced',
       'features': {'status': {split: 'reused' | 'computed' | 'recomputed (...)'},
                    'seconds', 'cache_dir'},
       'probe_seconds',
       'records': [closed_form.label_efficiency records: one per fraction x subset seed],
       'sgd': {'probe' | 'classifier': {'<f>': {accuracy, balanced_accuracy, macro_f1,
               macro_auc, step, n_train, subset_seed}}}}}}},
   'seconds'}

'sgd' holds the study's own SGD runs of the same arm and seed, where it has them: the
linear probe (probes/<arm>/seed_<s>, fractions/<f>/probes/...) and the identical classifier
(arms/..., fractions/<f>/arms/...), so that a report can show where the closed-form probe
agrees with the SGD probe (closed_form.table_rows). The SGD run of seed s trained on the
subset of subset seed s. The study's own label fractions are always added to --fractions.
Prints one table (arm x fraction: balanced accuracy, mean over seeds and subset seeds) and
the seconds per arm. A problem the user can fix is one line `error: ...`, exit status 1.
(The work is derm_jax/study/probes.py; this module is its command line.)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags

from derm_jax import console, fileio
from derm_jax.errors import ConfigError, DermJaxError

_WORKDIR = flags.DEFINE_string("workdir", None, "Study workdir (has config.json and arms/).")
_FRACTIONS = flags.DEFINE_list("fractions", ["0.01", "0.1", "0.25", "1"],
                               "Fractions of the training labels, in (0, 1].")
_SUBSET_SEEDS = flags.DEFINE_list("subset_seeds", ["0", "1", "2"],
                                  "Seeds of the class-stratified label subsets.")
_ARMS = flags.DEFINE_list("arms", None, "Only these arms (default: every arm of arms/).")
_OUT = flags.DEFINE_string("out", None, "JSON file to write (default "
                           "STUDY/closed_form_probes.json).")
_FEATURES_DIR = flags.DEFINE_string(
    "features_dir", None, "Cache the features in DIR/<arm>/seed_<s> instead of each run's "
    "features/ folder (leaves the study untouched).")
_CLASS_BALANCED = flags.DEFINE_enum(
    "class_balanced", "true", ["auto", "true", "false"], "Ridge sample weights inverse to "
    "class frequency (closed_form.py says why this is the default); auto: as each run's "
    "class_weighted_loss.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Images per forward pass (default: "
                                   "the run's eval_batch_size).")

# ----------------------------------------------------------------------------- command line


def _parse(values: Sequence[str], kind: Callable[[str], Any], flag: str) -> list[Any]:
  out = []
  for v in values:
    try:
      out.append(kind(v.strip()))
    except ValueError:
      raise ConfigError(f"--{flag}: {v!r} is not a {kind.__name__} "
                        f"(give e.g. --{flag}={'0.01,0.1,1' if kind is float else '0,1,2'})."
                        ) from None
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required.")
  console.quiet_libraries()
  from derm_jax.study import probes
  from derm_jax.train import compile_cache
  try:
    fractions = _parse(_FRACTIONS.value, float, "fractions")
    seeds = _parse(_SUBSET_SEEDS.value, int, "subset_seeds")
    balanced = {"auto": None, "true": True, "false": False}[_CLASS_BALANCED.value]
    probes.study_config(fileio.abspath(_WORKDIR.value))  # not a study: said before any work
    with compile_cache.default():
      probes.probe_study(_WORKDIR.value, fractions, seeds, _ARMS.value, _OUT.value,
                  _FEATURES_DIR.value, balanced, _BATCH_SIZE.value)
  except DermJaxError as e:  # bad input: one line; anything else is a bug (traceback)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=console.parse_flags)
