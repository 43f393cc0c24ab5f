"""A quiet, useful console: the libraries' INFO chatter (Orbax, TFDS, Grain, absl internals)
is dropped from the log unless asked for; derm_jax's own progress, metrics and warnings,
and every library's warnings and errors, stay, each warning once per process. TFDS's own
"Downloading and preparing dataset ..." prints and progress bars become one log line, and
its dumps of a dataset's config object ("Using custom data configuration: ...") are dropped
(`install_noise_filter`, at the import of derm_jax). `--verbosity=1` (absl's flag) adds
derm_jax's debug details (and those dropped messages); `--log_libraries` keeps the
libraries' own INFO and debug messages. And a command line whose flags
cannot be parsed (an unknown `--config.field`, with the nearest field paths as hints, a
missing config file, a bad preset, a tuple field given twice or not as a tuple) is one
line; `--help` exits 0.

  app.run(main, flags_parser=console.parse_flags)
"""

from __future__ import annotations

import ast
import logging as py_logging
import os
import sys
from collections.abc import Sequence

_CHATTY = tuple(os.sep + name + os.sep for name in
                ("orbax", "tensorflow_datasets", "grain", "etils", "jax", "absl", "array_record",
                 "matplotlib", "PIL", "tensorboardX", "jaxlib", "flax", "optax", "asyncio"))


# Library messages that say nothing a derm_jax user can act on: dropped at any level
# unless --verbosity >= 1. TFDS logs the whole config object of a dataset built from one
# ("Using custom data configuration: DermaMNISTConfig(name=..., ...)"), and recommends
# OpenCV for a decoding derm_jax does not use.
_NOISE = ("Using custom data configuration",
          "OpenCV is not installed")


def _debugging() -> bool:
  """Whether absl's verbosity asks for debug details (`--verbosity=1` or more)."""
  try:
    from absl import logging as absl_logging
    return absl_logging.get_verbosity() >= absl_logging.DEBUG
  except Exception:  # absl not usable: keep everything quiet as by default
    return False


class _NoiseFilter(py_logging.Filter):
  """Drops the `_NOISE` messages (unless debugging)."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if not isinstance(record.msg, str) or not record.msg.startswith(_NOISE):
      return True
    return _debugging()


_NOISE_FILTER = _NoiseFilter()


def install_noise_filter() -> None:
  """Puts the noise filter on the `absl` logger (which TFDS logs through), so that it acts
  wherever derm_jax runs (its entry points, the Python API, Grain worker processes, tests),
  whatever handler prints the records. Idempotent."""
  # absl's own logger (made by absl.logging, which sets its logger class first: a plain
  # `logging.getLogger("absl")` before that import would break absl's verbosity).
  from absl import logging as absl_logging
  logger = absl_logging.get_absl_logger()
  if _NOISE_FILTER not in logger.filters:
    logger.addFilter(_NOISE_FILTER)


class _LibraryInfoFilter(py_logging.Filter):
  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno >= py_logging.WARNING:
      return True
    return not any(part in record.pathname for part in _CHATTY)


class _OnceFilter(py_logging.Filter):
  """Lets each warning (identical level and text) through once per process."""

  def __init__(self):
    super().__init__()
    self.seen: set[tuple[int, str]] = set()

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno != py_logging.WARNING:
      return True
    try:
      key = (record.levelno, record.getMessage())
    except Exception:  # a record whose arguments do not format: leave it to the handler
      return True
    if key in self.seen:
      return False
    self.seen.add(key)
    return True


_FILTER = _LibraryInfoFilter()
_ONCE = _OnceFilter()


def quiet_libraries(quiet: bool = True) -> None:
  """Drops (or, with quiet=False, restores) INFO records of the listed libraries; in any
  case drops the noise (`install_noise_filter`), repeats of a warning, and TFDS's prints
  and progress bars."""
  from absl import logging as absl_logging
  install_noise_filter()
  # On the handler (not a logger): records of the libraries' own loggers propagate to it.
  handler = absl_logging.get_absl_handler()
  if quiet:
    handler.addFilter(_FILTER)
  else:
    handler.removeFilter(_FILTER)
  handler.addFilter(_ONCE)
  # TFDS progress bars are noise in a log file.
  os.environ.setdefault("TFDS_DISABLE_PROGRESS_BAR", "1")
  try:
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
    _quiet_tfds_prints()
  except ImportError:
    pass


def _quiet_tfds_prints() -> None:
  """TFDS prints (not logs) "Downloading and preparing dataset Unknown size (download: ...)"
  and "Dataset ... downloaded and prepared to ..." to stdout, also for data that derm_jax
  prepares from local files: one log line instead, saying what happens."""
  try:
    from tensorflow_datasets.core import dataset_builder
  except ImportError:
    return
  cls = dataset_builder.DatasetBuilder
  if getattr(cls, "_derm_jax_quiet", False):
    return

  def log_download_bytes(self) -> None:
    from absl import logging as absl_logging
    absl_logging.info("Preparing the dataset %s in %s (once: later runs read it from there).",
                      self.name, self.data_dir)

  def log_download_done(self) -> None:
    from absl import logging as absl_logging
    absl_logging.debug("Dataset %s prepared in %s.", self.name, self.data_dir)

  cls._log_download_bytes = log_download_bytes
  cls._log_download_done = log_download_done
  cls._derm_jax_quiet = True


def _flag_error_line(text: str) -> str:
  """One line of a flag error; ml_collections embeds the config file's traceback in it."""
  lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
  if any(ln.startswith("Traceback") for ln in lines):
    return f"{lines[0]} {lines[-1]}"
  return " ".join(lines)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad command line as one line on stderr and exit status 2
  (absl prints its own usage errors alike). ml_collections reports an unknown config field
  (`--config.foo=1`) as a KeyError/AttributeError deep in its override code, and a preset
  the config file does not have inside a flag error with that file's traceback."""
  from absl import flags
  try:
    rest = flags.FLAGS(argv)
  except SystemExit as e:  # absl's --help prints the usage, then exits 1: asking for help
    sys.exit(0 if e.code == 1 else e.code)  # is no error
  except flags.UnrecognizedFlagError as e:
    name = getattr(e, "flagname", "") or ""
    if name.startswith("config."):
      _unknown_field(argv, name[len("config."):], name.rsplit(".", 1)[-1], "")
    print(f"error: {_flag_error_line(str(e))} (--help lists the flags)", file=sys.stderr)
    sys.exit(2)
  except flags.Error as e:
    text = _flag_error_line(str(e))
    if isinstance(e, flags.IllegalFlagValueError) and text.startswith("flags "):
      text = text.split(": ", 1)[-1]  # a validator of several flags: its message only
    print(f"error: {text} (--help lists the flags)", file=sys.stderr)
    sys.exit(2)
  except (KeyError, AttributeError) as e:
    name = " ".join(str(e.args[0] if e.args else e).replace("\\n", "\n").split())
    name = name.strip("\"' ").replace("\\'", "'")
    field = name.split("'")[1] if name.count("'") >= 2 else name.split()[0]
    hint = name.split("Did you mean", 1)
    hint = f" Did you mean{hint[1]}" if len(hint) == 2 else ""
    _unknown_field(argv, None, field, hint)
  problem = _tuple_override_problem(argv, flags.FLAGS)
  if problem:
    print(f"error: {problem}.", file=sys.stderr)
    sys.exit(2)
  return rest


# Fields that were renamed: older command lines get the new name. (Older configs and runs
# with the old names are still read: derm_jax/tasks/backbone_init.py.)
RENAMED = {
    "init.vae_workdir": "init.source=pretrained with init.pretrained_workdir=DIR",
    "init.simclr_workdir": "init.source=pretrained with init.pretrained_workdir=DIR",
}


def _unknown_field(argv: Sequence[str], path: str | None, field: str, hint: str) -> None:
  """Prints the error of an unknown `--config.<path>` (`path` None: found from `field`, its
  last name) with the nearest existing field paths, and exits 2."""
  from absl import flags
  bad = [a for a in argv[1:] if a.startswith("--config.")]
  if path is None:
    path = next((a[len("--config."):].split("=", 1)[0] for a in bad
                 if a.split("=", 1)[0].rsplit(".", 1)[-1] == field), field)
  culprit = next((a for a in bad if a[len("--config."):].split("=", 1)[0] == path),
                 ", ".join(bad) or "--config")
  renamed = next((new for old, new in RENAMED.items() if path.endswith(old)), None)
  if not hint and renamed:
    hint = f" It is now {renamed}."
  if not hint:
    try:
      from derm_jax import config_text
      near = config_text.nearest_fields(_config_of(argv), path)
    except Exception:  # no config to compare with: no hint
      near = []
    hint = f" Did you mean {', '.join(near)}?" if near else ""
  more = " (--print_config lists every field)" if "print_config" in flags.FLAGS else ""
  print(f"error: {culprit}: the config has no field {field!r}.{hint}{more}", file=sys.stderr)
  sys.exit(2)


def _config_of(argv: Sequence[str]):
  """The config of the command line's `--config=FILE[:preset]`, without its overrides (the
  flag holds none once an override failed)."""
  from absl import flags
  value = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
  if value is not None:
    return value
  arg = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
  if arg is None:
    i = list(argv).index("--config") if "--config" in argv else -1
    arg = argv[i + 1] if 0 <= i < len(argv) - 1 else None
  if not arg:
    return None
  from ml_collections.config_flags import config_flags
  return config_flags._ConfigFileParser(name="config").parse(arg)


def _config_overrides(argv: Sequence[str]) -> list[tuple[str, str, str]]:
  """(flag name, value, as typed) of each `--config.<field>=value` (or `--config.<field>
  value`) of a command line, in order."""
  out = []
  args = list(argv[1:])
  for i, a in enumerate(args):
    if a == "--":
      break
    if not a.startswith("--config."):
      continue
    if "=" in a:
      name, value = a[2:].split("=", 1)
      out.append((name, value, a))
    elif i + 1 < len(args) and not args[i + 1].startswith("--"):
      out.append((a[2:], args[i + 1], f"{a} {args[i + 1]}"))
  return out


def _tuple_override_problem(argv: Sequence[str], flag_values) -> str | None:
  """What is wrong with the command line's overrides of tuple fields, or None.

  ml_collections concatenates a tuple field given twice (`--config.arms="('vae',)"
  --config.arms="()"` is one arm, not none) and turns text that is not a tuple literal into
  a 1-tuple of that text (`--config.arms=vae` becomes ('vae',), `"(nan,)"` becomes
  ('(nan,)',)). Here a tuple field is given once, as a tuple or list literal, e.g.
  `--config.seeds="(0,1)"`."""
  from absl import flags
  typed: dict[str, list[str]] = {}
  for name, value, shown in _config_overrides(argv):
    try:
      flag = flag_values[name]
    except KeyError:
      continue
    if not isinstance(flag, flags.MultiFlag):
      continue  # any other field: absl keeps the last value given
    typed.setdefault(name, []).append(shown)
    if len(typed[name]) > 1:
      return (f"--{name} is given {len(typed[name])} times ({'; '.join(typed[name])}); give "
              "it once, with the whole tuple")
    try:
      literal = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
      literal = None
    if not isinstance(literal, (tuple, list)):
      return (f"{shown}: --{name} takes a tuple of Python literals (quoted strings, "
              f"numbers), e.g. --{name}=\"{_example(flag.default)}\"")
  return None


def _example(value) -> str:
  """A tuple literal like `value` (the field's current value) for an error message."""
  value = tuple(value or ())
  return repr(value) if value else "('a', 'b')"


def config_or_exit(config_flag):
  """The value of a `config_flags.DEFINE_config_file` flag; a config file that cannot be
  loaded (ml_collections defers that error to the first access) is one line, exit 2."""
  try:
    value = config_flag.value
    value.keys()  # a config that failed to load is a stand-in that raises on any access
    return value
  except OSError as e:
    detail = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    print(f"error: --config: {detail[-1] if detail else e}", file=sys.stderr)
    sys.exit(2)
