"""A quiet, useful console: the libraries' INFO chatter (Orbax, TFDS, Grain, absl internals)
is dropped from the log unless asked for; derm_jax's own progress, metrics and warnings,
and every library's warnings and errors, stay."""

from __future__ import annotations

import logging as py_logging
import os

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
