"""Command-line entry point: `python -m derm_jax.main --config=configs/X.py --workdir=DIR`.

The config file decides what runs (`config.task`: a task of derm_jax/tasks/registry.py, e.g.
'vae', 'simclr', 'dino' or 'classify', or 'compare', the study);
`--mode=eval` restores a checkpoint (`--step`, default the latest) instead of training.
Override any config field with `--config.some.field=value`; an unknown field is an error
that names the nearest fields. `--print_config` prints every field of the resolved config
(path = value, with the config file's comments) and exits without training; --workdir is
not needed with it. `--config.smoke_steps=N` (N > 0) stops any run after N steps (each
stage of a study): a first look in minutes. `--verbosity=1` shows debug details.
--workdir may be a local folder or a cloud-storage URL such as `gs://bucket/run` (see
`derm_jax.fileio`; a URL is never turned into a local path).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from derm_jax import console, fileio
from derm_jax.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (resumes) or evaluate.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step for --mode=eval (default latest).")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Print the resolved config (every field as path = value, with "
    "the config file's comments) and exit without training or touching --workdir.")
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
flags.mark_flags_as_required(["config"])
flags.register_multi_flags_validator(
    ["workdir", "print_config"], lambda v: bool(v["workdir"]) or v["print_config"],
    message="--workdir is required (the folder for the run's checkpoints, logs and outputs; "
    "not with --print_config)")

# `--config.smoke_steps=N`: taken off the command line before the config flags are parsed
# (configs/vae.py, classify.py and simclr.py have no such field), put into the config after.
_SMOKE_FLAG = "--config.smoke_steps"
_smoke_steps: int | None = None


def eval_config(cli_config, workdir: str):
  """For --mode=eval: the run's own config.json (so the model is rebuilt exactly as it was
  trained), with the data location taken from the command line when one is given there."""
  from derm_jax import layout
  config = layout.read_config(workdir)
  if config.get("task") != cli_config.get("task"):
    raise ConfigError(f"{workdir!r} holds a {config.get('task')!r} run, but --config is a "
                     f"{cli_config.get('task')!r} config.")
  for field in ("data_dir", "npz_path"):
    if cli_config.data[field]:
      config.data[field] = cli_config.data[field]
  return config


def parse_flags(argv: list[str]) -> list[str]:
  """`console.parse_flags`, with `--config.smoke_steps=N` accepted for every config."""
  global _smoke_steps
  rest, i = [argv[0]], 1
  while i < len(argv):
    a = argv[i]
    if a == "--":
      rest.extend(argv[i:])
      break
    if a == _SMOKE_FLAG or a.startswith(_SMOKE_FLAG + "="):
      if "=" in a:
        value = a.split("=", 1)[1]
      elif i + 1 < len(argv):
        value, i = argv[i + 1], i + 1
      else:
        value = ""
      try:
        _smoke_steps = int(value)
      except ValueError:
        print(f"error: {_SMOKE_FLAG}={value}: takes an integer (steps; 0 = the whole run).",
              file=sys.stderr)
        sys.exit(2)
    else:
      rest.append(a)
    i += 1
  if _smoke_steps is not None and sys.argv == argv:
    sys.argv[:] = rest  # ml_collections reads the overrides from sys.argv itself
  return console.parse_flags(rest)


def with_smoke_steps(config, smoke_steps: int | None):
  """`config` with `smoke_steps` set (added where the config file lacks it)."""
  if smoke_steps is None:
    return config
  with config.unlocked():
    config.smoke_steps = int(smoke_steps)
  return config


def run(config, workdir: str, mode: str = "train", step: int | None = None):
  """Validates the config and workdir, takes the workdir's lock (a second run into a live
  workdir is refused before anything heavy happens), runs the preflight, then trains or
  evaluates."""
  from derm_jax import config_lib, preflight, validate
  task = config.get("task", "vae")
  if mode == "eval" and task != "compare":
    config = eval_config(config, workdir)
  validate.validate_config(config)
  config = config_lib.apply_smoke_steps(config)
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
  if task == "compare":
    from derm_jax.study import stages
    if mode != "train":
      raise ConfigError("--mode=eval is per arm: evaluate DIR/arms/<arm>/seed_<s> with "
                        "python -m derm_jax.evaluate.")
    return stages.run(config, workdir)
  from derm_jax.tasks import registry
  module = registry.get(task)
  return (module.train_and_evaluate(config, workdir) if mode == "train"
          else module.evaluate(config, workdir, step))


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
  config = with_smoke_steps(console.config_or_exit(_CONFIG), _smoke_steps)
  if _PRINT_CONFIG.value:
    from derm_jax import config_text
    sys.stdout.write(config_text.render(
        config, config_flags.get_config_filename(flags.FLAGS["config"])))
    return
  workdir = fileio.normalize(_WORKDIR.value)  # a URL (gs://...) is kept as is
  logging.debug("Config (--print_config shows it with its comments):\n%s", config)
  try:
    result = run(config, workdir, _MODE.value, _STEP.value)
  except DermJaxError as e:  # bad input the project recognises: one line (printed once);
    print(f"error: {e}", file=sys.stderr)  # anything else is a bug and keeps its traceback
    sys.exit(1)
  import jax
  if _MODE.value == "train" and jax.process_index() == 0:
    print(closing_line(config, workdir, result), flush=True)


def _num(v) -> str:
  if not isinstance(v, (int, float)):
    return "n/a"
  return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3f}"


def closing_line(config, workdir: str, result) -> str:
  """The line after a training run: its headline numbers, where its outputs are, and the
  command to run next."""
  task = config.get("task", "vae")
  result = result if isinstance(result, dict) else {}
  out = f"Outputs in {workdir}"
  if task == "classify":
    return (f"Done: test balanced accuracy {_num(result.get('balanced_accuracy'))}, accuracy "
            f"{_num(result.get('accuracy'))}, macro AUC {_num(result.get('macro_auc'))} (step "
            f"{result.get('step', '?')}). {out} (test_metrics.json, test_predictions.csv, "
            "confusion_test.png, tensorboard/). Evaluate on other images: python -m "
            f"derm_jax.evaluate --workdir={workdir} --isic_images=FOLDER "
            "[--isic_csv=GROUND_TRUTH.csv]")
  if task == "vae":
    return (f"Done: validation ELBO {_num(result.get('val/elbo'))} (reconstruction "
            f"{_num(result.get('val/recon'))}, KL {_num(result.get('val/kl'))}). {out} "
            "(checkpoints/, metrics.jsonl, tensorboard/). Use it as a classifier's backbone: "
            "python -m derm_jax.main --config=configs/classify.py --workdir=NEW_DIR "
            f"--config.init.source=pretrained --config.init.pretrained_workdir={workdir}")
  if task != "compare":  # a self-supervised pretraining (SimCLR, DINO, ...): its k-NN monitor
    knn = {k: v for k, v in result.items() if "knn" in k and isinstance(v, (int, float))}
    shown = ", ".join(f"{k} {_num(v)}" for k, v in sorted(knn.items())) or "no k-NN metrics"
    return (f"Done: {shown}. {out} (checkpoints/, metrics.jsonl, tensorboard/). Use it as a "
            "classifier's backbone: python -m derm_jax.main --config=configs/classify.py "
            f"--workdir=NEW_DIR --config.init.source=pretrained "
            f"--config.init.pretrained_workdir={workdir}")
  report = fileio.join(workdir, "report.md")
  return (f"Done: the study's report is {report}. {out} (each arm's runs in "
          f"{fileio.join(workdir, 'arms')}/<arm>/seed_<s>). Evaluate an arm on other images: "
          f"python -m derm_jax.evaluate --workdir={fileio.join(workdir, 'arms')}/<arm>/seed_0 "
          "--isic_images=FOLDER")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
