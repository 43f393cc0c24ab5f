"""A run stopped between an evaluation and its next checkpoint, then resumed, writes each
evaluation's row of metrics.jsonl once, the same rows as an uninterrupted run
(derm_jax/train/loop.py drops the rows after the checkpoint it resumes from)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, TINY_VAE, run_main


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


@pytest.mark.slow
def test_kill_between_an_evaluation_and_the_next_checkpoint(data_dir, tmp_path):
  """A run stopped after an evaluation's row is written and before the next checkpoint
  (its checkpoint removed; a real kill -9), then the same command: every evaluation is one
  row, the same rows as an uninterrupted run."""
  args = [f"--config={TINY_VAE}", f"--config.data.data_dir={data_dir}",
          "--config.total_steps=32", "--config.checkpoint_every_steps=16",
          f"--config.eval_every_epochs={4 / (1700 // 16)}"]  # every 4 steps
  full = str(tmp_path / "full")
  r = run_main([*args, f"--workdir={full}"])
  assert r.returncode == 0, r.stderr[-3000:]
  assert [row["step"] for row in _rows(full)] == [4, 8, 12, 16, 20, 24, 28, 32]

  # The state such a kill leaves, made exactly: the run without its step-32 checkpoint
  # (rows of steps 20-32 lie beyond its last checkpoint, 16).
  cut = str(tmp_path / "cut")
  shutil.copytree(full, cut)
  shutil.rmtree(os.path.join(cut, "checkpoints", "32"))
  r = run_main([*args, f"--workdir={cut}"])
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Resuming from checkpoint at step 16" in r.stderr
  assert _rows(cut) == _rows(full)

  killed = str(tmp_path / "killed")
  proc = subprocess.Popen([sys.executable, "-m", "derm_jax.main", *args, f"--workdir={killed}"],
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  metrics = os.path.join(killed, "metrics.jsonl")
  deadline = time.time() + 300
  ckpts = os.path.join(killed, "checkpoints")
  while time.time() < deadline and proc.poll() is None:  # kill -9 once step 20's row is in
    # (and step 16's checkpoint, saved asynchronously, is complete)
    if (os.path.exists(metrics) and '"step": 20,' in open(metrics).read()
        and os.path.isdir(ckpts) and _steps(killed) == [16]):
      break
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert _steps(killed) == [16], _steps(killed)  # killed before the step-32 checkpoint
  assert max(row["step"] for row in _rows(killed)) >= 20  # with rows after the checkpoint
  r = run_main([*args, f"--workdir={killed}"])
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Resuming from checkpoint at step 16" in r.stderr
  assert _rows(killed) == _rows(full)
