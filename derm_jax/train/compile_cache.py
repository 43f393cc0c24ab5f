"""JAX's persistent compilation cache, switched on for one block of work.

  with compile_cache.persistent(fileio.join(workdir, "compilation_cache")):
    ...  # every jit compiled in here is stored there, and read back when met again
  with compile_cache.default():
    ...  # the user-level cache of plain runs, --mode=eval, derm_jax.evaluate and load()

A study keeps its programs in its own workdir (`persistent`); every other entry point uses
the user-level cache `default_dir()` (~/.cache/derm_jax/jax_compilation_cache, or
$DERM_JAX_COMPILATION_CACHE; `0`/`off` turns it off), so that a second `derm_jax.evaluate`
or `derm_jax.load` of a run of the same shapes loads its programs instead of compiling
them (a warm evaluation is start-up plus reading the data and the checkpoint).

A study's arms differ only in where the backbone starts, so they compile the same train,
eval and init programs: with the cache the first arm compiles them and every later arm
and seed (and a resumed or repeated study) loads them in a fraction of the time. On a
GPU the cache also holds XLA's per-fusion autotuning results. The cache is process-wide
JAX state: `persistent` restores the previous setting on exit, and leaves a cache the
user already chose (JAX_COMPILATION_CACHE_DIR or jax.config) in place.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import jax
from absl import logging
from jax.experimental.compilation_cache import compilation_cache

ENV = "DERM_JAX_COMPILATION_CACHE"
SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")


def current_dir() -> str | None:
  """The persistent cache directory JAX uses now (None: no persistent cache)."""
  return jax.config.jax_compilation_cache_dir or None


@contextlib.contextmanager
def persistent(path: str, min_compile_time_secs: float | None = None) -> Iterator[str]:
  """Within the block, compiled programs are stored in and read from `path`; yields the
  directory in use (the user's own, if one was already set). Programs that compiled in
  less than `min_compile_time_secs` (JAX's default: 1 s) are not stored."""
  own = current_dir()
  if own:
    logging.info("Compilation cache: using the one already set, %s.", own)
    yield own
    return
  saved = {k: getattr(jax.config, k) for k in SETTINGS}
  jax.config.update("jax_compilation_cache_dir", path)
  if min_compile_time_secs is not None:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_secs)
  compilation_cache.reset_cache()  # JAX reads the directory once, at its next compile
  logging.info("Compilation cache: %s (compiled programs are reused from here).", path)
  try:
    yield path
  finally:
    for k, v in saved.items():  # JAX sets the entry size itself when the cache starts
      jax.config.update(k, v)
    compilation_cache.reset_cache()


def default_dir() -> str | None:
  """The user-level cache directory ($DERM_JAX_COMPILATION_CACHE, else
  $XDG_CACHE_HOME or ~/.cache, + derm_jax/jax_compilation_cache); None when turned off."""
  value = os.environ.get(ENV)
  if value is not None:
    return None if value.strip().lower() in ("", "0", "off", "false", "no") else value
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "derm_jax", "jax_compilation_cache")


@contextlib.contextmanager
def default() -> Iterator[str | None]:
  """`persistent(default_dir())`, or nothing when the user turned the cache off."""
  path = default_dir()
  if path is None:
    yield None
    return
  with persistent(path) as used:
    yield used
