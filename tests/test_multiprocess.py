"""Multi-process training on the CPU: two processes on localhost (`--jax_distributed` with a
local coordinator, 2 virtual CPU devices each, gloo collectives) against one process with 4
devices on the same global batch: same losses and parameters, only process 0 writes, and
checkpoints move between 1- and 2-process runs in both directions."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, TINY_VAE, run_main

TINY_CLASSIFY = os.path.join(REPO, "tests", "configs", "tiny_classify.py")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_two(args, timeout=600):
  """Runs `python -m derm_jax.main args` as 2 processes x 2 CPU devices; returns both."""
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "derm_jax.main", *args, "--jax_distributed",
       f"--jax_coordinator=localhost:{port}", "--jax_num_processes=2", f"--jax_process_id={i}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  out = []
  try:
    for p in procs:
      _, err = p.communicate(timeout=timeout)
      out.append((p.returncode, err))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return out


def _run_one(args):
  return run_main(args, env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=4",
                                   "JAX_PLATFORMS": "cpu"})


def _rows(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]


def _params(workdir, step=None):
  from derm_jax.train import checkpoint
  return checkpoint.restore_state_tree(os.path.join(workdir, "checkpoints"), step)


def _assert_close_rows(a, b):
  assert len(a) == len(b), (a, b)
  for ra, rb in zip(a, b):
    assert ra.keys() == rb.keys()
    for k in ra:
      if isinstance(ra[k], float):
        np.testing.assert_allclose(rb[k], ra[k], rtol=2e-4, atol=1e-6, err_msg=k)


def _assert_close_params(w1, w2):
  import jax
  s1, t1 = _params(w1)
  s2, t2 = _params(w2)
  assert s1 == s2
  l1, l2 = jax.tree.leaves(t1["params"]), jax.tree.leaves(t2["params"])
  assert len(l1) == len(l2)
  for a, b in zip(l1, l2):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-5)


def _check_two(res):
  for rc, err in res:
    assert rc == 0, err[-4000:]


def _files(d):
  return sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d)
                for f in fs if "checkpoints" not in r and "tensorboard" not in r)


@pytest.mark.parametrize("config,extra", [
    (TINY_VAE, ["--config.total_steps=4", "--config.eval_every_epochs=1000"]),
])
def test_two_processes_match_one(data_dir, tmp_path, config, extra):
  args = [f"--config={config}", f"--config.data.data_dir={data_dir}", *extra]
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  r1 = _run_one([*args, f"--workdir={one}"])
  assert r1.returncode == 0, r1.stderr[-4000:]
  res = _run_two([*args, f"--workdir={two}"])
  _check_two(res)  # cross-process gloo collectives work
  # Only process 0 writes: the same files as the 1-process run, no duplicates.
  assert _files(two) == _files(one)
  assert "Written" not in res[1][1], res[1][1][-2000:]
  # Each process takes its slice of the same global batches: the training is the same.
  _assert_close_rows(_rows(one), _rows(two))
  _assert_close_params(one, two)
