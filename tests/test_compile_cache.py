"""The study's persistent compilation cache: a program compiled in one block is loaded, not
compiled, in the next; the result is the same; JAX's settings are restored afterwards; a
cache the user set is left alone."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from derm_jax.train import compile_cache

_HITS = []


def _count_hit(event, **kw):
  if event.endswith("/cache_hits"):
    _HITS.append(event)


@pytest.fixture(autouse=True)
def _listen():
  jax.monitoring.register_event_listener(_count_hit)
  yield
  jax.monitoring.unregister_event_listener(_count_hit)


def _step(w, x):  # a small train-step-like program
  def loss(w):
    return jnp.mean(jnp.tanh(x @ w) ** 2)
  return w - 0.1 * jax.grad(loss)(w)


def test_second_block_loads_the_program_and_settings_are_restored(tmp_path):
  w, x = jnp.ones((8, 4)), jnp.arange(32.0).reshape(4, 8) / 32
  before = {k: getattr(jax.config, k) for k in compile_cache.SETTINGS}
  path = str(tmp_path / "cache")
  results = []
  for _ in range(2):
    n = len(_HITS)
    with compile_cache.persistent(path, min_compile_time_secs=0) as used:
      assert used == path and compile_cache.current_dir() == path
      def step(w, x):  # a new function each time: no in-memory hit
        return _step(w, x)
      results.append(np.asarray(jax.jit(step)(w, x)))
    hits = len(_HITS) - n
  assert os.listdir(path)           # the first block stored the program...
  assert hits >= 1                  # ...and the second loaded it
  np.testing.assert_array_equal(results[0], results[1])
  assert {k: getattr(jax.config, k) for k in compile_cache.SETTINGS} == before
  assert compile_cache.current_dir() is None
  files = set(os.listdir(path))
  jax.jit(lambda v: v * 3 + 1)(w).block_until_ready()  # after the block: nothing stored
  assert set(os.listdir(path)) == files


def test_a_cache_the_user_chose_is_kept(tmp_path):
  mine, other = str(tmp_path / "mine"), str(tmp_path / "other")
  jax.config.update("jax_compilation_cache_dir", mine)
  compilation_cache.reset_cache()
  try:
    with compile_cache.persistent(other) as used:
      assert used == mine and compile_cache.current_dir() == mine
    assert compile_cache.current_dir() == mine and not os.path.exists(other)
  finally:
    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()


def test_settings_are_restored_when_the_block_fails(tmp_path):
  before = {k: getattr(jax.config, k) for k in compile_cache.SETTINGS}
  with (pytest.raises(RuntimeError, match="arm failed"),
        compile_cache.persistent(str(tmp_path / "c"), min_compile_time_secs=0)):
    raise RuntimeError("arm failed")
  assert {k: getattr(jax.config, k) for k in compile_cache.SETTINGS} == before
