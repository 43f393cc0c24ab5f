"""Command-line entry point: `python -m derm_jax.main --config=configs/X.py --workdir=DIR`.

The config file decides what runs (`config.task`: 'vae', 'simclr', 'classify' or 'compare');
`--mode=eval` restores a checkpoint (`--step`, default the latest) instead of training.
Override any config field with `--config.some.field=value`; an unknown field is an error.
--workdir may be a local folder or a cloud-storage URL such as `gs://bucket/run` (see
`derm_jax.fileio`; a URL is never turned into a local path).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from derm_jax import console, fileio
from derm_jax.errors import ConfigError, NotARunError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (resumes) or evaluate.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step for --mode=eval (default latest).")
_VERBOSE_LIBS = flags.DEFINE_bool(
    "log_libraries", False, "Keep the INFO messages of Orbax, TFDS, Grain and JAX in the log "
    "(off: only derm_jax's own progress and every warning).")
_DISTRIBUTED = flags.DEFINE_bool(
    "jax_distributed", False, "Call jax.distributed.initialize() first (multi-host GPU/TPU "
    "jobs; on Cloud TPU pods the coordinator is found automatically).")
_COORDINATOR = flags.DEFINE_string(
    "jax_coordinator", None, "With --jax_distributed: coordinator host:port (process 0 serves "
    "it), e.g. localhost:12345 for a local multi-process run; default: detected.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "jax_num_processes", None, "With --jax_distributed: number of processes; default: detected.")
_PROCESS_ID = flags.DEFINE_integer(
    "jax_process_id", None, "With --jax_distributed: this process's id (0..N-1); default: "
    "detected.")
flags.mark_flags_as_required(["config", "workdir"])


def eval_config(cli_config, workdir: str):
  """For --mode=eval: the run's own config.json (so the model is rebuilt exactly as it was
  trained), with the data location taken from the command line when one is given there."""
  import json

  from ml_collections import ConfigDict
  path = fileio.join(workdir, "config.json")
  if not fileio.exists(path):
    raise NotARunError(f"{path} not found: {workdir!r} is not a derm_jax run directory.")
  with fileio.open(path) as f:
    config = ConfigDict(json.load(f))
  if config.get("task") != cli_config.get("task"):
    raise ConfigError(f"{workdir!r} holds a {config.get('task')!r} run, but --config is a "
                     f"{cli_config.get('task')!r} config.")
  for field in ("data_dir", "npz_path"):
    if cli_config.data[field]:
      config.data[field] = cli_config.data[field]
  return config


def run(config, workdir: str, mode: str = "train", step: int | None = None):
  """Validates the config and workdir, takes the workdir's lock (a second run into a live
  workdir is refused before anything heavy happens), runs the preflight, then trains or
  evaluates."""
  from derm_jax import preflight, validate
  task = config.get("task", "vae")
  if mode == "eval" and task in ("vae", "classify", "simclr"):
    config = eval_config(config, workdir)
  validate.validate_config(config)
  if mode != "train":
    return _dispatch(config, workdir, mode, step)
  if fileio.is_remote(workdir):
    _validate_remote_workdir(workdir)
  else:
    validate.validate_workdir(workdir)
  import jax

  from derm_jax.train.workdir_lock import WorkdirLock
  with WorkdirLock(workdir, is_main=jax.process_index() == 0):
    preflight.check(config, workdir)
    return _dispatch(config, workdir, mode, step)


def _dispatch(config, workdir: str, mode: str, step: int | None):
  task = config.get("task", "vae")
  if task == "compare":  # a study keeps its compiled programs in its own workdir
    return _run_task(config, workdir, mode, step)
  from derm_jax.train import compile_cache
  with compile_cache.default():
    return _run_task(config, workdir, mode, step)


def _run_task(config, workdir: str, mode: str, step: int | None):
  task = config.get("task", "vae")
  if task == "vae":
    from derm_jax.tasks import vae as vae_task
    return (vae_task.train_and_evaluate(config, workdir) if mode == "train"
            else vae_task.evaluate(config, workdir, step))
  if task == "classify":
    from derm_jax.tasks import classifier as classifier_task
    return (classifier_task.train_and_evaluate(config, workdir) if mode == "train"
            else classifier_task.evaluate(config, workdir, step))
  if task == "simclr":
    from derm_jax.tasks import simclr as simclr_task
    return (simclr_task.train_and_evaluate(config, workdir) if mode == "train"
            else simclr_task.evaluate(config, workdir, step))
  if task == "compare":
    from derm_jax.study import stages
    if mode != "train":
      raise ConfigError("--mode=eval is per arm: evaluate DIR/arms/<arm>/seed_<s> with "
                        "python -m derm_jax.evaluate.")
    return stages.run(config, workdir)
  raise ConfigError(f"Unknown config.task={task!r}; expected 'vae', 'classify', 'simclr' or "
                    "'compare'.")


def _validate_remote_workdir(workdir: str) -> None:
  """A cloud workdir: refused if it names an existing object (a file, not a folder). Write
  access is found out by the first write (there is no cheap portable probe)."""
  from derm_jax.errors import ConfigError
  if fileio.exists(workdir) and not fileio.isdir(workdir):
    raise ConfigError(f"--workdir {workdir} is an existing file, not a directory; choose "
                      "another workdir.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from derm_jax.errors import DermJaxError
  logging.get_absl_handler().use_absl_log_file = False
  console.quiet_libraries(not _VERBOSE_LIBS.value)
  if _DISTRIBUTED.value:
    import jax
    # Cross-process collectives on the CPU backend (no effect on GPU/TPU): gloo ships with
    # jaxlib; without an implementation a CPU multi-process run cannot all-reduce.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  workdir = fileio.normalize(_WORKDIR.value)  # a URL (gs://...) is kept as is
  try:
    run(console.config_or_exit(_CONFIG), workdir, _MODE.value, _STEP.value)
  except DermJaxError as e:  # bad input the project recognises: one line; anything else
    logging.error("%s: %s", type(e).__name__, e)  # is a bug and keeps its traceback
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=console.parse_flags)
