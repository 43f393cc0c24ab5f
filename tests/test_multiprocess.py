"""Multi-process training on the CPU: two processes on localhost (`--jax_distributed` with a
local coordinator, 2 virtual CPU devices each, gloo collectives) against one process with
one device (no sharding at all) on the same global batch, for the VAE and the classifier:
same metrics and parameters, only process 0 writes, and checkpoints move between 1- and 2-process runs in
both directions (`config.stop_after_step` ends the first run as a preempted job would)."""

import json
import os
import pathlib
import shutil
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


def _cache(args):
  """A compilation cache shared by the launches of one test (its workdirs' parent): runs
  with the same process count compile the same programs once."""
  workdir = next(a.split("=", 1)[1] for a in args if a.startswith("--workdir="))
  return {"JAX_COMPILATION_CACHE_DIR": os.path.join(os.path.dirname(workdir), "xla_cache")}


def _run_two(args, timeout=600):
  """Runs `python -m derm_jax.main args` as 2 processes x 2 CPU devices; returns both."""
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", **_cache(args))
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
  """One process, one device: the unsharded reference."""
  return run_main(args, env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=1",
                                   "JAX_PLATFORMS": "cpu", **_cache(args)})


def _rows(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def _params(workdir, step=None):
  from derm_jax.train import checkpoint
  return checkpoint.restore_state_tree(os.path.join(workdir, "checkpoints"), step)


def _assert_close_rows(a, b):
  assert len(a) == len(b), (a, b)
  for ra, rb in zip(a, b, strict=True):
    assert ra.keys() == rb.keys()
    for k in ra:
      if isinstance(ra[k], float):
        np.testing.assert_allclose(rb[k], ra[k], rtol=2e-4, atol=1e-6, err_msg=k)


def _assert_close_trees(t1, t2):
  import jax
  l1, l2 = jax.tree.leaves(t1), jax.tree.leaves(t2)
  assert len(l1) == len(l2) > 0
  for a, b in zip(l1, l2, strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-5)


def _assert_close_params(w1, w2):
  s1, t1 = _params(w1)
  s2, t2 = _params(w2)
  assert s1 == s2
  _assert_close_trees(t1["params"], t2["params"])


def _check_two(res):
  for rc, err in res:
    assert rc == 0, err[-4000:]


def _files(d):
  return sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d)
                for f in fs if "checkpoints" not in r and "tensorboard" not in r)


@pytest.mark.slow
def test_vae_two_processes_match_one_and_checkpoints_move_between_process_counts(data_dir,
                                                                                 tmp_path):
  """1 process x 1 device, uninterrupted, against runs stopped after step 2 and resumed
  with the other process count (2 -> 1 and 1 -> 2): same parameters at steps 2 and 4, same
  metrics (the resumed runs' train metrics too: the steps before the stop are kept with
  the checkpoint); only process 0 writes."""
  args = [f"--config={TINY_VAE}", f"--config.data.data_dir={data_dir}",
          "--config.total_steps=4", "--config.eval_every_epochs=1000",
          "--config.checkpoint_every_steps=2", "--config.keep_checkpoints=3"]
  stop = "--config.stop_after_step=2"
  one, a, b = (str(tmp_path / n) for n in ("one", "a", "b"))
  r = _run_one([*args, f"--workdir={one}"])
  assert r.returncode == 0, r.stderr[-4000:]

  res = _run_two([*args, stop, f"--workdir={a}"])  # 2 processes, stopped after step 2
  _check_two(res)  # cross-process gloo collectives work
  assert "Written" not in res[1][1] and "stop_after_step" in res[0][1], res[1][1][-2000:]
  s1, t1 = _params(one, 2)
  s2, t2 = _params(a, 2)
  assert s1 == s2 == 2
  _assert_close_trees(t1["params"], t2["params"])
  r = _run_one([*args, f"--workdir={a}"])  # ... resumed by 1 process
  assert r.returncode == 0, r.stderr[-4000:]
  assert "Resuming from checkpoint at step 2" in r.stderr

  # 1 process up to step 2 (the uninterrupted run's workdir as it was after step 2: its
  # step-4 checkpoint and the step-4 row left out) ...
  shutil.copytree(one, b, ignore=lambda d, names: [
      n for n in names if n == "4" and os.path.basename(d) == "checkpoints"])
  with open(os.path.join(b, "metrics.jsonl"), "w"):
    pass
  res = _run_two([*args, f"--workdir={b}"])  # ... resumed by 2 processes
  _check_two(res)
  assert "Resuming from checkpoint at step 2" in res[0][1]
  assert "Written" not in res[1][1], res[1][1][-2000:]
  assert _files(b) == _files(one)  # process 1 wrote nothing of its own

  for w in (a, b):
    _assert_close_rows(_rows(one), _rows(w))
    _assert_close_params(one, w)


@pytest.mark.slow
def test_classifier_two_processes_match_one(data_dir, tmp_path):
  """The classifier (ImageNet-free: scratch init) trained by 2 processes x 2 devices equals
  1 process x 1 device: validation rows, test metrics and parameters; process 0 writes."""
  args = [f"--config={TINY_CLASSIFY}", f"--config.data.data_dir={data_dir}",
          "--config.init.source=scratch", "--config.batch_size=48",
          "--config.eval_batch_size=96", "--config.total_steps=3"]
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  r = _run_one([*args, f"--workdir={one}"])
  assert r.returncode == 0, r.stderr[-4000:]
  res = _run_two([*args, f"--workdir={two}"])
  _check_two(res)
  assert _files(two) == _files(one)
  assert "Written" not in res[1][1], res[1][1][-2000:]
  _assert_close_rows(_rows(one), _rows(two))
  t1, t2 = (json.loads(pathlib.Path(w, "test_metrics.json").read_text()) for w in (one, two))
  for k in ("accuracy", "balanced_accuracy", "macro_auc", "loss"):
    np.testing.assert_allclose(t2[k], t1[k], rtol=2e-4, atol=1e-6, err_msg=k)
  assert t1["confusion_matrix"] == t2["confusion_matrix"]
  _assert_close_params(one, two)
