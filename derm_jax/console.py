"""A quiet, useful console: the libraries' INFO chatter (Orbax, TFDS, Grain, absl internals)
is dropped from the log unless asked for; derm_jax's own progress, metrics and warnings,
and every library's warnings and errors, stay. And a command line whose flags cannot be
parsed (an unknown `--config.field`, a missing config file, a bad preset, a tuple field
given twice or not as a tuple) is one line.

  app.run(main, flags_parser=console.parse_flags)
"""

from __future__ import annotations

import ast
import logging as py_logging
import os
import sys
from collections.abc import Sequence

_CHATTY = tuple(os.sep + name + os.sep for name in
                ("orbax", "tensorflow_datasets", "grain", "etils", "jax", "absl", "array_record"))


class _LibraryInfoFilter(py_logging.Filter):
  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno >= py_logging.WARNING:
      return True
    return not any(part in record.pathname for part in _CHATTY)


_FILTER = _LibraryInfoFilter()


def quiet_libraries(quiet: bool = True) -> None:
  """Drops (or, with quiet=False, restores) INFO records of the listed libraries."""
  from absl import logging as absl_logging
  # On the handler (not a logger): records of the libraries' own loggers propagate to it.
  handler = absl_logging.get_absl_handler()
  if quiet:
    handler.addFilter(_FILTER)
  else:
    handler.removeFilter(_FILTER)
  # TFDS progress bars are noise in a log file.
  os.environ.setdefault("TFDS_DISABLE_PROGRESS_BAR", "1")
  try:
    import tensorflow_datasets as tfds
    if quiet:
      tfds.disable_progress_bar()
  except ImportError:
    pass


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
  except flags.Error as e:
    print(f"error: {_flag_error_line(str(e))} (--help lists the flags)", file=sys.stderr)
    sys.exit(2)
  except (KeyError, AttributeError) as e:
    name = " ".join(str(e.args[0] if e.args else e).replace("\\n", "\n").split())
    name = name.strip("\"' ").replace("\\'", "'")
    field = name.split("'")[1] if name.count("'") >= 2 else name.split()[0]
    bad = [a for a in argv[1:] if a.startswith("--config.")]
    culprit = next((a for a in bad if a.split("=", 1)[0].rsplit(".", 1)[-1] == field),
                   ", ".join(bad) or "--config")
    hint = name.split("Did you mean", 1)
    hint = f" Did you mean{hint[1]}" if len(hint) == 2 else ""
    print(f"error: {culprit}: the config has no field {field!r}.{hint}", file=sys.stderr)
    sys.exit(2)
  problem = _tuple_override_problem(argv, flags.FLAGS)
  if problem:
    print(f"error: {problem}.", file=sys.stderr)
    sys.exit(2)
  return rest


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
