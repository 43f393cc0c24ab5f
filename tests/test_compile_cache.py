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


def test_a_run_from_cached_programs_equals_one_compiled_afresh(data_dir, tmp_path):
  """A classifier run with the persistent cache, cold (compiles and stores its programs)
  then warm (loads them), and a run without any cache: the same test metrics and the same
  parameters, bit for bit; the warm run really loaded."""
  import sys

  from conftest import REPO

  from derm_jax.tasks import classifier as classifier_task
  from derm_jax.train import checkpoint
  sys.path.insert(0, os.path.join(REPO, "tests", "configs"))
  import tiny_classify
  c = tiny_classify.get_config()
  c.data.data_dir = data_dir
  c.init.source = "scratch"
  c.total_steps = 3
  path = str(tmp_path / "cache")
  out = {}
  for name in ("none", "cold", "warm"):
    n = len(_HITS)
    if name == "none":
      out[name] = classifier_task.train_and_evaluate(c, str(tmp_path / name))
    else:
      with compile_cache.persistent(path):
        out[name] = classifier_task.train_and_evaluate(c, str(tmp_path / name))
    hits = len(_HITS) - n
  assert hits >= 1  # the warm run loaded its programs
  trees = {k: checkpoint.restore_state_tree(str(tmp_path / k / "checkpoints"))[1]["params"]
           for k in out}
  for k in ("cold", "warm"):
    assert out[k] == out["none"], k
    for a, b in zip(jax.tree.leaves(trees[k]), jax.tree.leaves(trees["none"]), strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
