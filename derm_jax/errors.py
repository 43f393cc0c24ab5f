"""The project's own error type, and the CLI wrapper that prints it as one line.

Every failure that the user can fix (a bad setting, a missing or damaged file, a busy
workdir) is raised as a `DermJaxError` subclass whose message says what is wrong and what
to do. A command-line entry point wrapped by `run_cli` or `cli_main` prints such an error
as a single line ``error: <message>`` on stderr and exits with status 1; any other
exception is a bug and keeps its full traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any


class DermJaxError(Exception):
  """A problem the user can fix; its message is complete on its own (no traceback needed)."""


class ConfigError(DermJaxError, ValueError):
  """A config value (or the workdir) cannot be used; the message names every bad field."""


class CheckpointError(DermJaxError):
  """A checkpoint is missing, damaged or cannot be restored; the message says what to do."""


class WorkdirBusyError(DermJaxError):
  """Another live run holds the workdir's lock; the message names the holder."""


class NotARunError(DermJaxError, FileNotFoundError):
  """A folder given as a run (or a VAE to start from) is not one: no config.json or no
  checkpoint; the message says what to run first."""


class TrainingDivergedError(DermJaxError, FloatingPointError):
  """A training loss or gradient was not finite; the message names the step and what to
  change. No checkpoint after the last finite step is written."""


EXIT_ERROR = 1


def run_cli(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
  """Calls `fn(*args, **kwargs)`; a DermJaxError becomes `error: <message>` and status 1.

  Returns `fn`'s result if it is an int (an exit status), else 0. Other exceptions
  (including KeyboardInterrupt and SystemExit) propagate unchanged.
  """
  try:
    result = fn(*args, **kwargs)
  except DermJaxError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return EXIT_ERROR
  return result if isinstance(result, int) and not isinstance(result, bool) else 0


def cli_main(fn: Callable[..., Any]) -> Callable[..., Any]:
  """Decorator form of `run_cli` for an absl `main(argv)`: exits 1 on a DermJaxError.

    @errors.cli_main
    def main(argv): ...

  Returns normally otherwise, so absl's `app.run` exits with status 0.
  """

  @functools.wraps(fn)
  def wrapper(*args: Any, **kwargs: Any) -> Any:
    try:
      return fn(*args, **kwargs)
    except DermJaxError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(EXIT_ERROR)

  return wrapper
