"""The error type raised for bad or missing input data (files, archives, CSVs, images)."""

from __future__ import annotations

from derm_jax.errors import DermJaxError


class DataError(DermJaxError, ValueError):
  """A data file is missing, unreadable or not in the expected layout.

  The message always names the offending file (and row or key where that applies) and
  says what is wrong with it. Also a ValueError, as it was before DermJaxError existed.
  """
