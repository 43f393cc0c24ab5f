"""End-to-end tests of VAE pretraining: learning on real data, outputs, resume after kill -9,
1 vs 8 devices, eval mode, bad inputs, and the paper preset compiling and stepping."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, TINY_VAE, run_main, tiny_vae_config


def _final_params(workdir, step=None):
  from derm_jax.train import checkpoint
  s, tree = checkpoint.restore_state_tree(os.path.join(workdir, "checkpoints"), step)
  return s, tree["params"]


def _assert_trees_equal(a, b):
  import jax
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb, strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_vae_learns_on_real_data_and_writes_outputs(data_dir, tmp_path):
  from derm_jax.tasks import vae as vae_task
  c = tiny_vae_config(data_dir)
  c.num_epochs = 4
  workdir = str(tmp_path / "run")
  from derm_jax.train.population import Member
  run = vae_task.train_members([Member("vae", workdir, c)])
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert len(rows) == 4
  # The validation ELBO (higher is better) improves substantially over training.
  assert rows[-1]["val/elbo"] > rows[0]["val/elbo"] + 100, rows
  assert rows[-1]["val/mse"] < rows[0]["val/mse"]
  for name in ("recon.png", "samples.png", "config.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  from PIL import Image
  recon = Image.open(os.path.join(workdir, "recon.png"))
  # Two rows (inputs above reconstructions) of 4 images of 32 px with 2 px padding, plus
  # the row labels and the title (step, ELBO) around them.
  assert recon.size[0] > 4 * 32 + 5 * 2 and recon.size[1] > 2 * 32 + 3 * 2
  assert os.path.exists(os.path.join(workdir, "latent_pca.png"))
  # The latent map is drawn from the last validation pass's posterior means (no second
  # pass); they equal an encoder pass over the split (the same encoder in another program:
  # float rounding only).
  means, labels = vae_task.latents(run)
  assert run.val_step == run.step and means is run.val_evaluator.latents
  assert means.shape[:2] == (len(labels), 1)
  run.val_evaluator = None
  encoded, encoded_labels = vae_task.latents(run)
  np.testing.assert_allclose(means, encoded, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(labels, encoded_labels)
  assert any(f.startswith("events.out.tfevents")
             for f in os.listdir(os.path.join(workdir, "tensorboard")))
  steps = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
  assert max(steps) == 4 * (1700 // 16)


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted_run(data_dir, tmp_path):
  args = [f"--config={TINY_VAE}", f"--config.data.data_dir={data_dir}",
          "--config.total_steps=24", "--config.checkpoint_every_steps=4",
          "--config.eval_every_epochs=1000"]
  full = str(tmp_path / "full")
  r = run_main([*args, f"--workdir={full}"])
  assert r.returncode == 0, r.stderr[-3000:]

  killed = str(tmp_path / "killed")
  cmd = [sys.executable, "-m", "derm_jax.main", *args, f"--workdir={killed}"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpts = os.path.join(killed, "checkpoints")
  deadline = time.time() + 300
  while time.time() < deadline:  # kill -9 as soon as the step-8 checkpoint is complete
    if os.path.isdir(os.path.join(ckpts, "8")):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps = [int(d) for d in os.listdir(ckpts) if d.isdigit()]
  assert steps and max(steps) < 24, steps  # really interrupted
  r = run_main([*args, f"--workdir={killed}"])
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Resuming from checkpoint" in r.stderr
  s1, p1 = _final_params(full)
  s2, p2 = _final_params(killed)
  assert s1 == s2 == 24
  # The last keep_checkpoints (3) steps are kept, each with its manifest.
  for w in (full, killed):
    kept = sorted(int(d) for d in os.listdir(os.path.join(w, "checkpoints")) if d.isdigit())
    assert kept == [16, 20, 24], kept
    assert all(os.path.isfile(os.path.join(w, "checkpoints", str(k), "derm_jax_manifest.json"))
               for k in kept)
  _assert_trees_equal(p1, p2)
  # The one evaluation (step 24) summarises the train steps since the start, 8+ of them
  # before the kill: restored with the checkpoint, so its train metrics are the same too.
  rows = [[json.loads(line) for line in open(os.path.join(w, "metrics.jsonl"))]
          for w in (full, killed)]
  assert rows[0] == rows[1] and len(rows[0]) == 1 and "train/loss" in rows[0][0]


def test_eval_mode_reports_val_and_test(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  base = [f"--config={TINY_VAE}", f"--config.data.data_dir={data_dir}",
          "--config.total_steps=4", f"--workdir={workdir}"]
  assert run_main(base).returncode == 0
  r = run_main([*base, "--mode=eval", "--step=4"])
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.load(open(os.path.join(workdir, "eval_step4.json")))
  for split in ("val", "test"):
    for k in ("elbo", "recon", "kl"):
      assert np.isfinite(result[f"{split}/{k}"])
  r = run_main([*base, "--mode=eval", "--step=3"])
  assert r.returncode != 0 and "No checkpoint for step 3" in r.stderr
  # Resuming under other settings would mix two experiments in one workdir: refused.
  r = run_main([*base, "--config.optimizer.lr=0.5"])
  assert r.returncode != 0 and "optimizer.lr: 0.002 -> 0.5" in r.stderr


@pytest.mark.parametrize("override,message", [
    ("--config.model.no_such_field=1", "no_such_field"),
    ("--config.image_size=48", "config.image_size=48"),
    ("--config.data.source=npz", "npz"),
])
def test_bad_config_is_a_clear_error_and_writes_nothing(data_dir, tmp_path, override, message):
  workdir = tmp_path / "run"
  r = run_main([f"--config={TINY_VAE}", f"--config.data.data_dir={data_dir}", override,
                f"--workdir={workdir}"])
  assert r.returncode != 0
  assert message in r.stderr
  assert not (workdir / "checkpoints").exists()


@pytest.mark.parametrize("content", [None, b"this is not an npz file"])
def test_missing_or_corrupt_npz_is_a_clear_error(data_dir, tmp_path, content):
  npz = tmp_path / "dermamnist.npz"
  if content is not None:
    npz.write_bytes(content)
  workdir = tmp_path / "run"
  r = run_main([f"--config={TINY_VAE}", f"--config.data.data_dir={tmp_path / 'tfds'}",
                "--config.data.source=npz", f"--config.data.npz_path={npz}",
                f"--workdir={workdir}"])
  assert r.returncode != 0
  assert str(npz) in r.stderr and "Traceback" not in r.stderr
  assert not (workdir / "checkpoints").exists()


def test_non_finite_loss_stops_naming_the_step_and_keeps_last_checkpoint(data_dir, tmp_path):
  from derm_jax.tasks import vae as vae_task
  c = tiny_vae_config(data_dir)
  c.total_steps = 40
  c.checkpoint_every_steps = 1
  c.eval_every_epochs = 1000
  c.optimizer.grad_clip = 0.0
  c.optimizer.warmup_steps = 10  # step 1 trains at lr 0, then the lr explodes
  c.optimizer.lr = 1e12
  workdir = str(tmp_path / "run")
  with pytest.raises(FloatingPointError, match=r"at step (\d+)") as e:
    vae_task.train_and_evaluate(c, workdir)
  bad_step = int(e.value.args[0].split("at step ")[1].split(";")[0])
  from derm_jax.train import checkpoint
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  assert ckpt.latest_step() is not None and ckpt.latest_step() < bad_step
  _, tree = checkpoint.restore_state_tree(os.path.join(workdir, "checkpoints"))
  import jax
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree["params"]))


@pytest.mark.slow
def test_paper_preset_builds_compiles_and_steps(data_dir, tmp_path):
  r = run_main(["--config=configs/vae.py:paper", f"--workdir={tmp_path / 'paper'}",
                "--config.data.source=embedded", f"--config.data.data_dir={data_dir}",
                "--config.batch_size=2", "--config.eval_batch_size=2", "--config.total_steps=3",
                "--config.log_every_steps=1", "--config.eval_every_epochs=1000",
                "--config.num_image_samples=2", "--config.stop_after_step=2"])
  # Two train steps and a checkpoint of the 224 px ConvNeXt-Tiny VAE; stopping after step 2
  # skips the end-of-run evaluation of the whole validation split at 224 px (the eval step
  # is the default VAE's, tested above).
  assert r.returncode == 0, r.stderr[-3000:]
  assert "convnext_tiny" in (tmp_path / "paper" / "config.json").read_text()
  assert "step 2/3" in r.stderr and "stop_after_step" in r.stderr
  assert (tmp_path / "paper" / "checkpoints" / "2").is_dir()


def test_vae_elbo_does_not_depend_on_the_eval_batch_size(data_dir):
  """Each validation image's posterior sample has its own key (from its index), and padded
  rows are masked: the ELBO, reconstruction, KL and MSE of a split are the same for any
  eval batch size, including one that does not divide the split (250 images)."""
  from derm_jax.evaluation.vae import VaeEvaluator
  from derm_jax.tasks import vae as vae_task
  from derm_jax.train import population
  c = tiny_vae_config(data_dir)
  task = vae_task.build(c)
  state, key = task.init_member(c, "unused")
  states = population.replicate(population.stack([state]), task.mesh)
  keys = population.replicate(np.stack([key]), task.mesh)
  results = []
  for batch_size in (64, 48, 250):
    programs = population.Programs(task, 1, 1)
    evaluator = VaeEvaluator(task.dataset.source("val"), batch_size=batch_size, mesh=task.mesh)
    results.append(evaluator.run(lambda batch, p=programs: p.predict(states, keys, batch))[0])
  assert results[0]["elbo"] < 0  # an untrained VAE: a real, finite evaluation
  for other in results[1:]:
    assert other.keys() == results[0].keys()
    for k in results[0]:
      np.testing.assert_allclose(other[k], results[0][k], rtol=1e-5, err_msg=k)
